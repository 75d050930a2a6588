// One value per window, shared by everything that shows it: one request (or one live
// subscription) per window however many components read it, kept while any of them is mounted and
// cached a while after. The model is TanStack Query's QueryClient, for one kind of query; the
// React hook (react.ts) reads it with useSyncExternalStore. Framework-free, so that it can be
// tested, and used, without React.
import {
  asKpiError,
  windowQuery,
  type KpiApi,
  type KpiApiError,
  type KpiComparison,
  type KpiFallback,
  type KpiMetrics,
  type KpiParams,
  type KpiResponse,
  type KpiTargets,
  type KpiUpdate,
} from "./api.js";

/**
 * idle: not asked for (`enabled: false`) and nothing cached; loading: asked for, nothing yet;
 * ready: figures of this window (the service's, or the fallback's: see `source`); stale: the
 * service's figures of this window, but not current (its cache while its database is down, or the
 * last ones after an outage without a fallback); error: the last attempt failed and nothing
 * stands in for it (a refusal, an auth failure, an outage without fallback or earlier figures).
 */
export type KpiStatus = "idle" | "loading" | "ready" | "stale" | "error";

/** How the shown service figures came: a live transport, or a plain request ("http"). */
export type KpiTransport = "websocket" | "sse" | "poll" | "http";

export interface KpiState {
  /** Always this window's figures, never another window's. */
  metrics: KpiMetrics | null;
  /** With `compare`: the compared window and each KPI's change (null without). */
  comparison: KpiComparison | null;
  /** The owner's targets of the window (the service's; null from the fallback). */
  targets: KpiTargets | null;
  meta: KpiUpdate["meta"] | null;
  /** "service": the service's figures; "local": the fallback's, while the service fails. */
  source: "service" | "local" | null;
  status: KpiStatus;
  /** The last failure, also while local or stale figures are shown; null once the service answers. */
  error: KpiApiError | null;
  /** Live: the transport in use. Fetched: "http" once the service answered. */
  transport: KpiTransport | null;
  /** A request is in flight (fetched), or no value has come yet (live). */
  isFetching: boolean;
  /** When the figures were received (Date.now()), 0 for none. */
  updatedAt: number;
}

export interface KpiStoreOptions {
  /** Figures younger than this are not fetched again when another component mounts. Default 0. */
  staleTime?: number;
  /** How long a window nothing shows is kept. Default 5 minutes. */
  gcTime?: number;
  /** Retries of a failed fetch (outages and auth failures; a 400 is never retried). Default: while shown. */
  retry?: number;
  /** The delay before retry `attempt` (0-based). Default: 1 s doubling up to 30 s. */
  retryDelay?: (attempt: number) => number;
}

/** What one mounted component brings: getters, so that new objects each render change nothing. */
export interface KpiObserver {
  api(): KpiApi;
  fallback(): KpiFallback | undefined;
}

export const IDLE: KpiState = Object.freeze({
  metrics: null,
  comparison: null,
  targets: null,
  meta: null,
  source: null,
  status: "idle",
  error: null,
  transport: null,
  isFetching: false,
  updatedAt: 0,
});
export const LOADING: KpiState = Object.freeze({ ...IDLE, status: "loading" });

/** The identity of a value: the service, live or fetched, and the window's canonical query. */
export function kpiKey(api: Pick<KpiApi, "baseUrl">, params: KpiParams, live: boolean): string {
  return `${api.baseUrl} ${live ? "live" : "fetch"} ${windowQuery(params)}`;
}

/** A body of GET /api/kpi (for example one rendered on the server) as a state. */
export function stateOf(
  body: Pick<KpiResponse, "metrics" | "meta"> & Partial<Pick<KpiResponse, "comparison" | "targets">>,
  updatedAt = Date.now(),
): KpiState {
  return {
    ...IDLE,
    metrics: body.metrics,
    comparison: body.comparison ?? null,
    targets: body.targets ?? null,
    meta: body.meta,
    source: "service",
    status: body.meta.stale ? "stale" : "ready",
    transport: "http",
    updatedAt,
  };
}

interface Entry {
  key: string;
  params: KpiParams;
  live: boolean;
  state: KpiState;
  observers: Set<KpiObserver>;
  controller: AbortController | null;
  subscription: { close(): void } | null;
  attempt: number;
  retryTimer: ReturnType<typeof setTimeout> | null;
  releaseTimer: ReturnType<typeof setTimeout> | null;
  gcTimer: ReturnType<typeof setTimeout> | null;
}

export class KpiStore {
  private readonly entries = new Map<string, Entry>();
  private readonly listeners = new Map<string, Set<() => void>>();
  readonly staleTime: number;
  private readonly gcTime: number;
  private readonly retry: number;
  private readonly retryDelay: (attempt: number) => number;

  constructor(options: KpiStoreOptions = {}) {
    this.staleTime = options.staleTime ?? 0;
    this.gcTime = options.gcTime ?? 5 * 60_000;
    this.retry = options.retry ?? Infinity;
    this.retryDelay = options.retryDelay ?? ((attempt) => Math.min(1000 * 2 ** attempt, 30_000));
  }

  /** The state of a key, or undefined if nothing asked for it (or it was collected). */
  peek(key: string): KpiState | undefined {
    return this.entries.get(key)?.state;
  }

  /** Hears every change of the key's state. */
  listen(key: string, listener: () => void): () => void {
    let set = this.listeners.get(key);
    if (!set) this.listeners.set(key, (set = new Set()));
    set.add(listener);
    return () => {
      set.delete(listener);
      if (set.size === 0 && this.listeners.get(key) === set) this.listeners.delete(key);
    };
  }

  /** Figures known without asking (rendered on the server): kept unless the key has some already. */
  seed(key: string, params: KpiParams, live: boolean, body: Pick<KpiResponse, "metrics" | "meta">): void {
    const entry = this.entry(key, params, live);
    if (entry.state.metrics === null) this.set(entry, stateOf(body));
  }

  /**
   * A component shows the key: the first one starts its request or subscription (or none, if
   * figures younger than staleTime are cached); the last one to leave stops it. Leaving is
   * deferred by a task, so that StrictMode's unmount and mount again keep the same request.
   */
  observe(key: string, params: KpiParams, live: boolean, observer: KpiObserver, staleTime = this.staleTime): () => void {
    const entry = this.entry(key, params, live);
    entry.observers.add(observer);
    if (entry.releaseTimer !== null) clearTimeout(entry.releaseTimer);
    entry.releaseTimer = null;
    if (entry.gcTimer !== null) clearTimeout(entry.gcTimer);
    entry.gcTimer = null;
    if (live) {
      if (!entry.subscription) this.subscribe(entry);
    } else if (!entry.controller && entry.retryTimer === null && Date.now() - entry.state.updatedAt >= staleTime) {
      void this.fetch(entry);
    }
    return () => {
      if (!entry.observers.delete(observer) || entry.observers.size > 0) return;
      entry.releaseTimer = setTimeout(() => this.release(entry), 0);
    };
  }

  /** Asks again now: a new request (unless one is in flight), or a new subscription. */
  refetch(key: string): void {
    const entry = this.entries.get(key);
    if (!entry || entry.observers.size === 0) return;
    if (entry.retryTimer !== null) clearTimeout(entry.retryTimer);
    entry.retryTimer = null;
    entry.attempt = 0;
    if (entry.live) {
      entry.subscription?.close();
      this.subscribe(entry);
    } else if (!entry.controller) {
      void this.fetch(entry);
    }
  }

  /** The number of windows held (for tests and debugging). */
  get size(): number {
    return this.entries.size;
  }

  // --- internals -------------------------------------------------------------------------------

  private entry(key: string, params: KpiParams, live: boolean): Entry {
    let entry = this.entries.get(key);
    if (!entry) {
      entry = {
        key,
        params: { ...params },
        live,
        state: LOADING,
        observers: new Set(),
        controller: null,
        subscription: null,
        attempt: 0,
        retryTimer: null,
        releaseTimer: null,
        gcTimer: null,
      };
      this.entries.set(key, entry);
    }
    return entry;
  }

  private set(entry: Entry, patch: Partial<KpiState>): void {
    entry.state = { ...entry.state, ...patch };
    for (const listener of [...(this.listeners.get(entry.key) ?? [])]) listener();
  }

  /** The api and fallback of a component still showing the entry (any: they share the key). */
  private current(entry: Entry): KpiObserver | undefined {
    let last: KpiObserver | undefined;
    for (const observer of entry.observers) last = observer;
    return last;
  }

  private fallback(entry: Entry): KpiFallback {
    // A wrapper that asks the component of the moment: a fallback passed anew each render is used
    // without resubscribing. Without one it throws, which the client takes as "no figures".
    return (params, error) => {
      const fallback = this.current(entry)?.fallback();
      if (!fallback) throw error;
      return fallback(params, error);
    };
  }

  private async fetch(entry: Entry): Promise<void> {
    const observer = this.current(entry);
    if (!observer) return;
    const api = observer.api();
    const controller = new AbortController();
    entry.controller = controller;
    this.set(entry, { isFetching: true, status: entry.state.status === "idle" ? "loading" : entry.state.status });
    try {
      const body = await api.getKpiMetrics(entry.params, { signal: controller.signal });
      if (entry.controller !== controller) return;
      entry.attempt = 0;
      this.set(entry, stateOf(body));
    } catch (caught) {
      if (entry.controller !== controller) return;
      const error = asKpiError(caught);
      if (error.kind === "aborted") return this.set(entry, { isFetching: false });
      if (error.isOutage) {
        let figures: KpiUpdate | null = null;
        try {
          figures = await api.local(entry.params, error, this.fallback(entry));
        } catch {
          figures = null; // no fallback, or a failing one: the service's error is the one to show
        }
        if (entry.controller !== controller) return;
        if (figures) this.set(entry, { ...this.shown(figures, error), isFetching: false });
        else this.set(entry, this.failed(entry.state, error));
      } else {
        this.set(entry, this.failed(entry.state, error));
      }
      // A refusal (400) stays one; an outage may end and a token may be renewed.
      if (error.isOutage || error.kind === "auth") this.scheduleRetry(entry);
    } finally {
      if (entry.controller === controller) entry.controller = null;
    }
  }

  private scheduleRetry(entry: Entry): void {
    if (entry.observers.size === 0 || entry.attempt >= this.retry) return;
    const delay = this.retryDelay(entry.attempt++);
    entry.retryTimer = setTimeout(() => {
      entry.retryTimer = null;
      if (entry.observers.size > 0) void this.fetch(entry);
    }, delay);
  }

  private subscribe(entry: Entry): void {
    const observer = this.current(entry);
    if (!observer) return;
    let lastError: KpiApiError | null = null;
    const fallback = this.fallback(entry);
    const waiting = entry.state.metrics === null;
    this.set(entry, { isFetching: waiting, status: waiting && entry.state.status === "idle" ? "loading" : entry.state.status });
    const subscription = observer.api().subscribe(
      entry.params,
      (update) => {
        if (entry.subscription === subscription) this.set(entry, { ...this.shown(update, lastError), isFetching: false });
      },
      {
        fallback: (params, error) => {
          lastError = error;
          return fallback(params, error);
        },
        onStatus: (transport) => {
          if (entry.subscription === subscription) this.set(entry, { transport });
        },
        onError: (error) => {
          if (entry.subscription === subscription) this.set(entry, this.failed(entry.state, error));
        },
      },
    );
    entry.subscription = subscription;
  }

  private shown(update: KpiUpdate, error: KpiApiError | null): Partial<KpiState> {
    if (update.source === "local") {
      return {
        metrics: update.metrics,
        comparison: update.comparison ?? null,
        targets: null,
        meta: update.meta,
        source: "local",
        status: "ready",
        error,
        updatedAt: Date.now(),
      };
    }
    return {
      metrics: update.metrics,
      comparison: update.comparison ?? null,
      targets: update.targets ?? null,
      meta: update.meta,
      source: "service",
      status: update.meta.stale ? "stale" : "ready",
      error: null,
      transport: update.source,
      updatedAt: Date.now(),
    };
  }

  /** A failure with nothing to stand in: the window's own earlier figures (never another's). */
  private failed(previous: KpiState, error: KpiApiError): Partial<KpiState> {
    const keep = error.isOutage && previous.metrics !== null && previous.source === "service";
    return { status: keep ? "stale" : "error", error, isFetching: false };
  }

  private release(entry: Entry): void {
    entry.releaseTimer = null;
    if (entry.observers.size > 0) return;
    if (entry.retryTimer !== null) clearTimeout(entry.retryTimer);
    entry.retryTimer = null;
    entry.attempt = 0;
    const controller = entry.controller;
    entry.controller = null;
    controller?.abort();
    const subscription = entry.subscription;
    entry.subscription = null;
    subscription?.close();
    // Nothing is loading any more: a window left before its first figures is idle, not loading.
    if (entry.state.isFetching || entry.state.status === "loading") {
      this.set(entry, { isFetching: false, status: entry.state.status === "loading" ? "idle" : entry.state.status });
    }
    entry.gcTimer = setTimeout(() => {
      if (entry.observers.size === 0 && this.entries.get(entry.key) === entry) this.entries.delete(entry.key);
    }, this.gcTime);
  }
}

export function createKpiStore(options?: KpiStoreOptions): KpiStore {
  return new KpiStore(options);
}
