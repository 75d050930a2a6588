// useKpiMetrics: the service's figures for a window, live or fetched, from one shared store
// (store.ts), with the application's own computation (for example computeKpis) while the service
// fails. KpiProvider gives a subtree its own store, as QueryClientProvider does; without one, a
// store of the module's is used.
import {
  createContext,
  createElement,
  useCallback,
  useContext,
  useEffect,
  useMemo,
  useRef,
  useSyncExternalStore,
  type ReactNode,
} from "react";
import type { KpiApi, KpiFallback, KpiParams, KpiResponse } from "./api.js";
import { IDLE, KpiStore, kpiKey, LOADING, stateOf, type KpiObserver, type KpiState } from "./store.js";

export type { KpiState, KpiStatus, KpiTransport } from "./store.js";
export { createKpiStore, KpiStore, type KpiStoreOptions } from "./store.js";

const defaultStore = new KpiStore();
const StoreContext = createContext<KpiStore | null>(null);

/** Gives the components below their own store (tests, server rendering per request, settings). */
export function KpiProvider({ store, children }: { store: KpiStore; children?: ReactNode }) {
  return createElement(StoreContext.Provider, { value: store }, children);
}

/** The store of the nearest KpiProvider, else the module's. */
export function useKpiStore(): KpiStore {
  return useContext(StoreContext) ?? defaultStore;
}

export interface UseKpiMetricsOptions {
  /** Which service; only its baseUrl counts, so an api made anew each render is harmless. */
  api: KpiApi;
  /** Follow the window live (WebSocket, else SSE, else polling) rather than fetch it. */
  live?: boolean;
  /** The application's figures while the service fails (unreachable, timed out, 5xx). */
  fallback?: KpiFallback;
  /** false: neither request nor subscribe (cached figures are still shown). Default true. */
  enabled?: boolean;
  /** Figures cached younger than this are not fetched again on mount. Default: the store's (0). */
  staleTime?: number;
  /** The window's figures known already, for example rendered on the server: no loading state. */
  initialData?: Pick<KpiResponse, "metrics" | "meta">;
  /**
   * true: while a new window loads, show the previous window's figures flagged as
   * `isPlaceholderData` (status stays "loading"), as TanStack's `placeholderData:
   * keepPreviousData` does. Default false: a new window starts with no figures.
   */
  keepPrevious?: boolean;
}

export interface KpiMetricsState extends KpiState {
  /** true while `metrics` are another window's, kept by `keepPrevious` until this one's come. */
  isPlaceholderData: boolean;
  /** Ask again now (a new request, or a new subscription). */
  refetch: () => void;
}

export function useKpiMetrics(params: KpiParams, options: UseKpiMetricsOptions): KpiMetricsState {
  const { api, live = false, fallback, enabled = true, staleTime, initialData, keepPrevious = false } = options;
  const store = useKpiStore();
  // Compared by value: a params object or api made anew each render is the same key.
  const key = kpiKey(api, params, live);

  // The latest render's api and fallback, read when the store needs them (never a dependency).
  const latest = useRef({ api, fallback });
  latest.current = { api, fallback };
  const observer = useMemo<KpiObserver>(
    () => ({ api: () => latest.current.api, fallback: () => latest.current.fallback }),
    [],
  );

  // Before the store has the key (the first render, the server's): initialData, else loading.
  const initial = useMemo(
    () => (initialData ? stateOf(initialData) : enabled ? LOADING : IDLE),
    // initialData is read for a new key only, as useState reads its initial value once.
    // eslint-disable-next-line react-hooks/exhaustive-deps
    [key, enabled],
  );
  const listen = useCallback((notify: () => void) => store.listen(key, notify), [store, key]);
  const snapshot = () => store.peek(key) ?? initial;
  const state = useSyncExternalStore(listen, snapshot, snapshot);

  // The key in canonical form, for the store (the params object of this render may change).
  const paramsRef = useRef(params);
  paramsRef.current = params;
  const initialRef = useRef(initialData);
  initialRef.current = initialData;
  useEffect(() => {
    if (!enabled) return;
    if (initialRef.current) store.seed(key, paramsRef.current, live, initialRef.current);
    return store.observe(key, paramsRef.current, live, observer, staleTime);
  }, [store, key, live, enabled, staleTime, observer]);

  // The last figures this component showed: the placeholder of keepPrevious.
  const lastShown = useRef<KpiState | null>(null);
  const placeholder = keepPrevious && state.metrics === null && state.status === "loading" ? lastShown.current : null;
  useEffect(() => {
    if (state.metrics !== null) lastShown.current = state;
  }, [state]);

  const refetch = useCallback(() => store.refetch(key), [store, key]);
  return useMemo(
    () =>
      placeholder
        ? { ...state, metrics: placeholder.metrics, meta: placeholder.meta, source: placeholder.source, isPlaceholderData: true, refetch }
        : { ...state, isPlaceholderData: false, refetch },
    [state, placeholder, refetch],
  );
}
