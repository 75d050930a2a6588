// For a team that has a TanStack Query QueryClient already: the KPI window as query options and a
// live subscription that writes into that client's cache, so that there is no second cache. No
// import of @tanstack/* (an optional peer): the shapes below are what useQuery and QueryClient take.
import { asKpiError, windowQuery, type KpiApi, type KpiFallback, type KpiParams, type KpiUpdate } from "./api.js";

/** The service and the window's canonical query: equal windows share one cache entry. */
export type KpiQueryKey = readonly ["kpi-service", string, string];

export function kpiQueryKey(api: Pick<KpiApi, "baseUrl">, params: KpiParams): KpiQueryKey {
  return ["kpi-service", api.baseUrl, windowQuery(params).toString()];
}

export interface KpiQueryOptions {
  queryKey: KpiQueryKey;
  queryFn: (context: { signal: AbortSignal }) => Promise<KpiUpdate>;
  retry: (failureCount: number, error: Error) => boolean;
}

/**
 * `useQuery(kpiQueryOptions(api, view, { fallback }))`: data is `{ metrics, meta, source }`,
 * source "http", or "local" when the service failed (unreachable, timed out, 5xx) and the fallback
 * computed them. A refusal (400) or an auth failure rejects, and is not retried by default.
 */
export function kpiQueryOptions(
  api: KpiApi,
  params: KpiParams,
  { fallback }: { fallback?: KpiFallback } = {},
): KpiQueryOptions {
  return {
    queryKey: kpiQueryKey(api, params),
    queryFn: async ({ signal }) => {
      try {
        const body = await api.getKpiMetrics(params, { signal });
        const { comparison, targets } = body;
        return { metrics: body.metrics, ...(comparison ? { comparison } : {}), targets, meta: body.meta, source: "http" };
      } catch (caught) {
        const error = asKpiError(caught);
        const figures = error.isOutage ? await api.local(params, error, fallback).catch(() => null) : null;
        if (figures) return figures;
        throw error;
      }
    },
    // Outages may end; a bad window or a refused token does not by asking again at once.
    retry: (failureCount, error) => asKpiError(error).isOutage && failureCount < 3,
  };
}

/** What subscribeKpiQuery needs of a QueryClient. */
export interface KpiQueryCache {
  setQueryData(queryKey: KpiQueryKey, data: KpiUpdate): unknown;
}

/**
 * Follows the window live (WebSocket, else SSE, else polling) and writes each value into the
 * QueryClient under kpiQueryKey, where useQuery(kpiQueryOptions(...)) reads it. Returns
 * `{ close() }`; call it when no component shows the window any longer.
 */
export function subscribeKpiQuery(
  queryClient: KpiQueryCache,
  api: KpiApi,
  params: KpiParams,
  options: Parameters<KpiApi["subscribe"]>[2] = {},
): { close(): void } {
  const key = kpiQueryKey(api, params);
  return api.subscribe(params, (update) => queryClient.setQueryData(key, update), options);
}
