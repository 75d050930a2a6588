// The KPI service's HTTP API: GET /api/kpi and /api/kpi/history with ETags, and live figures over
// a WebSocket, else server-sent events, else polling, with the application's own computation as a
// last resort while the service fails. The browser's /static/kpi-client.js is built from this file.
import { comparedDays, kpiChanges } from "./compare.js";
import type { components, paths } from "./openapi.js";

export type KpiMetrics = components["schemas"]["KpiValues"];
export type KpiMeta = components["schemas"]["Meta"];
export type KpiResponse = components["schemas"]["KpiResponse"];
export type KpiHistoryResponse = components["schemas"]["HistoryResponse"];
export type KpiErrorEnvelope = components["schemas"]["Error"];
export type WebSocketFrame = components["schemas"]["WebSocketFrame"];
/** The window compared with (`compare`): its days, its KPIs and each KPI's change. */
export type KpiComparison = components["schemas"]["Comparison"];
export type KpiChange = components["schemas"]["Change"];
/** The owner's targets of the window, per KPI that has one. */
export type KpiTargets = KpiResponse["targets"];

/** A window as GET /api/kpi takes it: `from`/`to` are ISO dates in `tz`, both included. */
export type KpiParams = NonNullable<paths["/api/kpi"]["get"]["parameters"]["query"]>;
/** A window and its interval, as GET /api/kpi/history takes them. */
export type KpiHistoryParams = paths["/api/kpi/history"]["get"]["parameters"]["query"];

/** What the service answers for a window, or the application's own figures ("local"). */
export interface KpiUpdate {
  metrics: KpiMetrics;
  /** With `compare`: the compared window (the fallback's second window while the service fails). */
  comparison?: KpiComparison;
  /** The service's only: the application cannot know them. */
  targets?: KpiTargets;
  meta: KpiMeta | LocalMeta;
  source: "websocket" | "sse" | "poll" | "http" | "local";
}

export interface LocalMeta {
  computed_at: string;
  cached: false;
  stale: false;
  local: true;
  duration_ms: number;
  window: Record<string, string>;
}

/** The application's own computation, used while the service fails. */
export type KpiFallback = (params: KpiParams, error: KpiApiError) => KpiMetrics | Promise<KpiMetrics>;

/**
 * auth: no token (getToken threw, status 0) or a refused one (401); http: any other answer
 * that is not a success; unreachable, timeout, aborted: no answer (status 0).
 */
export type KpiErrorKind = "auth" | "unreachable" | "timeout" | "aborted" | "http";

/**
 * A failed request. `status` is the HTTP status, 0 when there was none (`kind` says why);
 * `message` and `errors` are the error envelope's, when the service sent one.
 */
export class KpiApiError extends Error {
  override readonly name = "KpiApiError";
  constructor(
    readonly kind: KpiErrorKind,
    readonly status: number,
    message: string,
    readonly body: KpiErrorEnvelope | null = null,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }

  /** Per-parameter problems of a 400 ({from: ["Not a valid date."]}), else {}. */
  get errors(): Record<string, string[]> {
    return this.body?.errors ?? {};
  }

  /** The service failed (unreachable, timed out, 5xx), as opposed to refusing the request. */
  get isOutage(): boolean {
    return this.kind === "unreachable" || this.kind === "timeout" || this.status >= 500;
  }
}

export interface KpiApiOptions {
  /** The service's root URL ("https://kpi.example.com/"). */
  baseUrl: string | URL;
  /** The bearer token, asked for before each request (it may renew it). */
  getToken?: () => string | null | undefined | Promise<string | null | undefined>;
  /** A request answered later than this counts as a failure of the service. */
  timeoutMs?: number;
  /** Polling interval when no stream can be opened. */
  pollMs?: number;
  /** Reconnection back-off: the first delay, doubling up to maxDelayMs, each with jitter. */
  minDelayMs?: number;
  maxDelayMs?: number;
  /** ETags and bodies kept for If-None-Match (by default, one store per API object). */
  etags?: Map<string, { etag: string; body: unknown }>;
}

export interface RequestOptions {
  signal?: AbortSignal;
}

export interface SubscribeOptions {
  fallback?: KpiFallback;
  /** Hears "websocket", "sse" or "poll" when the way in use changes. */
  onStatus?: (transport: "websocket" | "sse" | "poll") => void;
  /**
   * Hears failures nothing else handles. A refusal (a 400: the window is bad) also ends the
   * subscription; an auth failure does not: it tries again after the back-off, with the token
   * getToken gives then, so a renewed token resumes it.
   */
  onError?: (error: KpiApiError) => void;
}

export interface KpiApi {
  /** The service's root URL, resolved: with the window, what identifies a value (caches key on it). */
  readonly baseUrl: string;
  getKpiMetrics(params?: KpiParams, options?: RequestOptions): Promise<KpiResponse>;
  getKpiHistory(params: KpiHistoryParams, options?: RequestOptions): Promise<KpiHistoryResponse>;
  subscribe(params: KpiParams, onUpdate: (update: KpiUpdate) => void, options?: SubscribeOptions): { close(): void };
  /** The application's figures shaped like the service's, or null without a fallback. */
  local(params: KpiParams, error: KpiApiError, fallback?: KpiFallback): Promise<KpiUpdate | null>;
}

const WINDOW_PARAMS = ["from", "to", "tz", "aged_days", "compare"] as const;
const KEPT_WINDOWS = 32;

/** The window's parameters as the API takes them, in a fixed order (one ETag per window). */
export function windowQuery(
  params: KpiParams | Record<string, string | number | null | undefined> = {},
  extra: Record<string, string | null | undefined> = {},
) {
  const query = new URLSearchParams();
  for (const name of WINDOW_PARAMS) {
    const value: string | number | null | undefined = params[name as keyof typeof params];
    if (value !== undefined && value !== null && value !== "") query.set(name, String(value));
  }
  for (const [name, value] of Object.entries(extra)) if (value) query.set(name, value);
  return query;
}

function describe(status: number, body: KpiErrorEnvelope | null): string {
  let message = body?.message || `The KPI service answered ${status}.`;
  if (body?.errors) {
    const problems = Object.entries(body.errors).map(([field, p]) => `${field}: ${([] as string[]).concat(p).join(" ")}`);
    message += " " + problems.join("; ");
  }
  return message;
}

export function createKpiApi(options: KpiApiOptions): KpiApi {
  const root = String(options.baseUrl);
  const base = new URL(root.endsWith("/") ? root : `${root}/`, globalThis.location?.href);
  const o = {
    getToken: options.getToken,
    timeoutMs: options.timeoutMs ?? 10000, // a request answered later counts as a failure of the service
    pollMs: options.pollMs ?? 10000, // the server's cache makes faster polling pointless
    minDelayMs: options.minDelayMs ?? 1000,
    maxDelayMs: options.maxDelayMs ?? 30000,
  };
  const kept = options.etags ?? new Map<string, { etag: string; body: unknown }>();
  const url = (path: string) => new URL(path, base).href;

  async function request(
    href: string,
    { method = "GET", headers = {}, signal }: { method?: string; headers?: Record<string, string>; signal?: AbortSignal } = {},
  ): Promise<{ response: Response; body: unknown }> {
    // An already-aborted signal fires no "abort" event: without this the request would go out.
    if (signal?.aborted) throw new KpiApiError("aborted", 0, "The request was cancelled.");
    const controller = new AbortController();
    let timedOut = false;
    const abort = () => controller.abort();
    signal?.addEventListener("abort", abort);
    const timer = setTimeout(() => {
      timedOut = true;
      controller.abort();
    }, o.timeoutMs);
    const gone = () =>
      signal?.aborted
        ? new KpiApiError("aborted", 0, "The request was cancelled.")
        : timedOut
          ? new KpiApiError("timeout", 0, "The KPI service did not answer in time.")
          : new KpiApiError("unreachable", 0, "The KPI service cannot be reached.");
    try {
      let token: string | null | undefined;
      try {
        token = await o.getToken?.();
      } catch (cause) {
        // Not the service's failure: no fallback, the application has to sign in again.
        throw new KpiApiError("auth", 0, `No token: ${cause instanceof Error ? cause.message : String(cause)}`, null, {
          cause,
        });
      }
      if (signal?.aborted) throw gone();
      let response: Response;
      try {
        response = await fetch(href, {
          method,
          headers: { Accept: "application/json", ...(token ? { Authorization: `Bearer ${token}` } : {}), ...headers },
          cache: "no-store", // the ETags are handled here, with the body they belong to
          signal: controller.signal,
        });
      } catch {
        throw gone();
      }
      if (response.status === 304) return { response, body: null };
      let body: unknown = null;
      try {
        body = await response.json();
      } catch {
        if (controller.signal.aborted) throw gone();
      }
      if (!response.ok) {
        const envelope = body as KpiErrorEnvelope | null;
        const kind = response.status === 401 ? "auth" : "http";
        throw new KpiApiError(kind, response.status, describe(response.status, envelope), envelope);
      }
      return { response, body };
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener("abort", abort);
    }
  }

  /** GET /api/kpi with If-None-Match: a 304 gives back the body kept with that ETag. */
  async function getKpiMetrics(params: KpiParams = {}, { signal }: RequestOptions = {}): Promise<KpiResponse> {
    const href = url(`api/kpi?${windowQuery(params)}`);
    const last = kept.get(href);
    const { response, body } = await request(href, { headers: last ? { "If-None-Match": last.etag } : {}, signal });
    if (response.status === 304 && last) return last.body as KpiResponse;
    if (!body) throw new KpiApiError("http", response.status, `The KPI service answered ${response.status} without a body.`);
    const etag = response.headers.get("ETag");
    kept.delete(href);
    if (etag) kept.set(href, { etag, body });
    if (kept.size > KEPT_WINDOWS) kept.delete(kept.keys().next().value!);
    return body as KpiResponse;
  }

  async function getKpiHistory(params: KpiHistoryParams, { signal }: RequestOptions = {}): Promise<KpiHistoryResponse> {
    const query = windowQuery(params, { interval: params.interval });
    return (await request(url(`api/kpi/history?${query}`), { signal })).body as KpiHistoryResponse;
  }

  async function local(params: KpiParams, error: KpiApiError, fallback?: KpiFallback): Promise<KpiUpdate | null> {
    if (typeof fallback !== "function") return null;
    const started = performance.now();
    const metrics = await fallback({ ...params }, error);
    // The comparison is a second window: the same fallback for the compared days.
    let comparison: KpiComparison | undefined;
    if (params.compare && params.from && params.to) {
      const [from, to] = comparedDays(params.from, params.to, params.compare);
      const { compare: _omitted, ...window } = params;
      const base = await fallback({ ...window, from, to }, error);
      comparison = { compare: params.compare, from, to, metrics: base, change: kpiChanges(metrics, base) };
    }
    return {
      metrics,
      ...(comparison ? { comparison } : {}),
      meta: {
        computed_at: new Date().toISOString(),
        cached: false,
        stale: false,
        local: true,
        duration_ms: Math.round((performance.now() - started) * 100) / 100,
        window: Object.fromEntries(windowQuery(params)),
      },
      source: "local",
    };
  }

  function subscribe(
    params: KpiParams,
    onUpdate: (update: KpiUpdate) => void,
    options: SubscribeOptions = {},
  ): { close(): void } {
    const given = { ...params };
    const stopped = new AbortController();
    let closed = false;
    let stream: { close(): void } | null = null; // the open (or opening) WebSocket or EventSource
    let transport: string | null = null; // what onStatus last heard
    let reconnectTimer: ReturnType<typeof setTimeout> | null = null;
    let pollTimer: ReturnType<typeof setTimeout> | null = null;
    let polls = 0; // bumped when polling starts or stops: a poll of an earlier round ends there
    let attempt = 0; // failed connections in a row: the back-off's exponent
    let noWebSocket = false; // the server refused WebSockets by policy: SSE from now on
    let lastEventId: string | null = null;
    type Shown = Omit<KpiUpdate, "source">;
    let shown: { body: Shown; source: KpiUpdate["source"] } | null = null;

    const report = (error: KpiApiError) => {
      if (!closed) options.onError?.(error);
    };

    function announce(next: "websocket" | "sse" | "poll") {
      if (closed || transport === next) return;
      transport = next;
      options.onStatus?.(next);
    }

    function emit(body: Shown, source: KpiUpdate["source"]) {
      if (closed) return;
      if (source !== "local" && shown && shown.source !== "local") {
        if (shown.body === body) return; // a poll's 304
        // Never back in time (a poll answered before a newer streamed value, a stream reopening);
        // the same instant again is a value turning stale.
        if (body.meta.computed_at < shown.body.meta.computed_at) return;
      }
      shown = { body, source };
      const { comparison, targets } = body;
      onUpdate({ metrics: body.metrics, ...(comparison ? { comparison } : {}), ...(targets ? { targets } : {}), meta: body.meta, source });
    }

    function fail(error: KpiApiError) {
      // A refusal cannot be cured by retrying: a bad window (400) stays bad.
      close();
      options.onError?.(error);
    }

    /** The service failed; `current()` says, once the fallback answered, whether the failure
     * still stands (no stream opened and no answer came meanwhile). */
    async function outage(error: KpiApiError, current: () => boolean) {
      let figures: KpiUpdate | null = null;
      try {
        figures = await local(given, error, options.fallback);
      } catch {
        figures = null; // a failing fallback is no reason to stop trying the service
      }
      if (!current()) return;
      if (figures) emit(figures, "local");
      else report(error);
    }

    function backoff() {
      const cap = Math.min(o.maxDelayMs, o.minDelayMs * 2 ** attempt);
      attempt += 1;
      return cap / 2 + (Math.random() * cap) / 2; // "equal jitter": never zero, never above the cap
    }

    function reconnect(delay: number) {
      if (reconnectTimer !== null) clearTimeout(reconnectTimer);
      reconnectTimer = closed ? null : setTimeout(connect, delay);
    }

    // --- polling: while no stream is open --------------------------------------------------------

    /** An auth failure: reported, and the stream tried again after the back-off with a new token. */
    function unauthorised(error: KpiApiError): boolean {
      if (error.kind !== "auth") return false;
      stopPolling(); // polls would be refused as well
      report(error);
      reconnect(backoff());
      return true;
    }

    /** A failure that no retry cures ends the subscription; an auth failure waits for a new token. */
    function refused(error: KpiApiError): boolean {
      if (unauthorised(error)) return true;
      if (error.status >= 400 && error.status < 500 && error.status !== 429) {
        fail(error);
        return true;
      }
      return false;
    }

    async function poll(round: number) {
      try {
        const body = await getKpiMetrics(given, { signal: stopped.signal });
        if (round === polls) emit(body, "poll");
      } catch (caught) {
        const error = asKpiError(caught);
        if (closed || round !== polls) return;
        if (refused(error)) return;
        await outage(error, () => round === polls);
      }
      if (round === polls && !closed) pollTimer = setTimeout(poll, o.pollMs, round);
    }

    function startPolling() {
      if (closed || pollTimer !== null) return;
      announce("poll");
      polls += 1;
      pollTimer = setTimeout(poll, 0, polls);
    }

    function stopPolling() {
      polls += 1;
      if (pollTimer !== null) clearTimeout(pollTimer);
      pollTimer = null;
    }

    // --- streams ---------------------------------------------------------------------------------

    async function ticket(): Promise<string> {
      const { body } = await request(url("api/kpi/stream-ticket"), { method: "POST", signal: stopped.signal });
      return (body as components["schemas"]["StreamTicket"]).ticket;
    }

    function streamUrl(path: string, value: string, websocket: boolean) {
      // Local figures shown: no last_event_id, so that the stream starts with the service's value.
      const resume = shown && shown.source !== "local" ? lastEventId : null;
      const href = new URL(`${path}?${windowQuery(given, { ticket: value, last_event_id: resume })}`, base);
      if (websocket) href.protocol = href.protocol === "https:" ? "wss:" : "ws:";
      return href.href;
    }

    function opened(kind: "websocket" | "sse") {
      attempt = 0;
      stopPolling();
      announce(kind);
    }

    function received(handle: object, kind: "websocket" | "sse", frame: WebSocketFrame) {
      if (frame.event === "kpi") {
        if (frame.id) lastEventId = frame.id;
        emit(frame.data, kind);
      } else if (frame.event === "unavailable") {
        // The database is down and nothing is cached; the stream stays open for the next value.
        const since = shown;
        const error = new KpiApiError("http", 503, describe(503, frame.data), frame.data);
        outage(error, () => stream === handle && shown === since);
      }
    }

    function dropped() {
      // Poll meanwhile (it also finds out whether the service is down), and try again later.
      stream = null;
      startPolling();
      reconnect(backoff());
    }

    /** Resolves true once the socket is open, false if it failed before. */
    function openWebSocket(value: string): Promise<boolean> {
      return new Promise((resolve) => {
        let socket: WebSocket;
        try {
          socket = new WebSocket(streamUrl("api/kpi/ws", value, true));
        } catch {
          resolve(false);
          return;
        }
        const handle = { close: () => socket.close(1000) };
        let openedAt: number | null = null;
        stream = handle;
        socket.addEventListener("open", () => {
          if (stream !== handle) return socket.close(1000);
          openedAt = performance.now();
          opened("websocket");
          resolve(true);
        });
        socket.addEventListener("message", (message) => {
          if (stream !== handle) return;
          let frame: WebSocketFrame;
          try {
            frame = JSON.parse(String(message.data));
          } catch {
            return;
          }
          received(handle, "websocket", frame);
        });
        socket.addEventListener("close", (event) => {
          if (stream !== handle) return;
          stream = null;
          if (openedAt === null) return resolve(false);
          if (event.code === 1008 || event.code === 1009) {
            noWebSocket = true; // the server will not have this socket: SSE, at once
            reconnect(0);
          } else if (event.code === 1000 && performance.now() - openedAt > o.minDelayMs) {
            reconnect(0); // the grant expired: a new ticket, and on from the last event
          } else {
            dropped(); // going away (1001), the network, or a 1000 at once: back off
          }
        });
      });
    }

    function openEventSource(value: string) {
      const source = new EventSource(streamUrl("api/kpi/stream", value, false));
      const handle = { close: () => source.close() };
      let isOpen = false;
      stream = handle;
      source.addEventListener("open", () => {
        if (stream !== handle) return;
        isOpen = true;
        opened("sse");
      });
      source.addEventListener("kpi", (message) => {
        if (stream === handle) received(handle, "sse", { event: "kpi", id: message.lastEventId, data: JSON.parse(message.data) });
      });
      source.addEventListener("unavailable", (message) => {
        if (stream === handle) received(handle, "sse", { event: "unavailable", data: JSON.parse(message.data) });
      });
      source.addEventListener("error", () => {
        if (stream !== handle) return;
        // The ticket is spent: the browser's own reconnection would be refused.
        source.close();
        if (isOpen) dropped();
        else {
          stream = null;
          startPolling();
          reconnect(backoff());
        }
      });
    }

    async function connect() {
      reconnectTimer = null;
      if (closed) return;
      try {
        // After each await: closed meanwhile (a fetch that ignored the abort) opens nothing.
        if (!noWebSocket && typeof WebSocket === "function") {
          const value = await ticket();
          if (closed) return;
          if (await openWebSocket(value)) return;
          if (closed) return;
        }
        if (typeof EventSource !== "function") throw new KpiApiError("unreachable", 0, "No EventSource here.");
        const value = await ticket(); // a new ticket: the failed socket may have spent the last
        if (closed) return;
        openEventSource(value);
      } catch (caught) {
        if (closed) return;
        if (unauthorised(asKpiError(caught))) return;
        // No ticket (the service is down, or Redis is and so no stream can open): poll.
        stream = null;
        startPolling();
        reconnect(backoff());
      }
    }

    function close() {
      if (closed) return;
      closed = true;
      stopped.abort();
      if (reconnectTimer !== null) clearTimeout(reconnectTimer);
      stopPolling();
      const open = stream;
      stream = null;
      open?.close();
    }

    connect();
    return { close };
  }

  return { baseUrl: base.href, getKpiMetrics, getKpiHistory, subscribe, local };
}

/** Anything thrown, as a KpiApiError (a bug in a fallback or a fetch polyfill counts as unreachable). */
export function asKpiError(caught: unknown): KpiApiError {
  if (caught instanceof KpiApiError) return caught;
  const message = caught instanceof Error ? caught.message : String(caught);
  return new KpiApiError("unreachable", 0, message, null, { cause: caught });
}
