// The entry of the service's /static/kpi-client.js (scripts/build-static.mjs bundles it): the
// package's client as free functions taking `options`, for pages without a bundler:
//
//   import { getKpiMetrics, subscribe } from "/static/kpi-client.js";
//
// options: token (a string, or a function returning one or a promise of one), baseUrl (the
// service's root; by default the one serving this file), timeoutMs, fallback; subscribe also
// takes onStatus, onError, pollMs, minDelayMs and maxDelayMs. README.md ("The browser client").
import {
  createKpiApi,
  KpiApiError,
  type KpiApiOptions,
  type KpiFallback,
  type KpiHistoryParams,
  type KpiHistoryResponse,
  type KpiParams,
  type KpiUpdate,
  type SubscribeOptions,
} from "./api.js";

export { KpiApiError, KpiApiError as KpiError };

type Token = string | null | undefined | (() => string | null | undefined | Promise<string | null | undefined>);

export interface BrowserOptions extends Omit<KpiApiOptions, "baseUrl" | "getToken" | "etags">, SubscribeOptions {
  baseUrl?: string | URL;
  token?: Token;
  signal?: AbortSignal;
}

type Params = KpiParams | URLSearchParams;

// This file is served at <root>/static/kpi-client.js.
const SERVICE_ROOT = new URL("..", import.meta.url);
// The last ETag and body of each window's URL, shared by every call of this page.
const etags = new Map<string, { etag: string; body: unknown }>();

function apiFor({ baseUrl, token, timeoutMs, pollMs, minDelayMs, maxDelayMs }: BrowserOptions) {
  const getToken = () => (typeof token === "function" ? token() : token);
  return createKpiApi({ baseUrl: baseUrl ?? SERVICE_ROOT, getToken, timeoutMs, pollMs, minDelayMs, maxDelayMs, etags });
}

const plain = (params: Params = {}): KpiParams =>
  params instanceof URLSearchParams ? Object.fromEntries(params) : { ...params };

/**
 * The ten KPIs of a window: `{metrics, meta, source}`, source "http", or "local" when the service
 * failed (unreachable, timed out, 5xx) and options.fallback computed them. Rejects with a
 * KpiApiError otherwise (a 400 for a bad window, a 401 for a bad token).
 */
export async function getKpiMetrics(params: Params = {}, options: BrowserOptions = {}): Promise<KpiUpdate> {
  const api = apiFor(options);
  const given = plain(params);
  try {
    const body = await api.getKpiMetrics(given, { signal: options.signal });
    return { metrics: body.metrics, meta: body.meta, source: "http" };
  } catch (error) {
    if (!(error instanceof KpiApiError) || !error.isOutage) throw error;
    const figures = await api.local(given, error, options.fallback as KpiFallback | undefined).catch(() => null);
    if (!figures) throw error;
    return figures;
  }
}

/** GET /api/kpi/history: `{series, meta}` (params: from, to, interval, tz, aged_days). */
export function getKpiHistory(params: KpiHistoryParams, options: BrowserOptions = {}): Promise<KpiHistoryResponse> {
  return apiFor(options).getKpiHistory(params, { signal: options.signal });
}

/**
 * Live figures of a window: onUpdate({metrics, meta, source}) with each new value, source
 * "websocket", "sse", "poll" or "local" (see createKpiApi's subscribe). Returns `{close()}`.
 */
export function subscribe(params: Params, onUpdate: (update: KpiUpdate) => void, options: BrowserOptions = {}) {
  const { fallback, onStatus, onError } = options;
  return apiFor(options).subscribe(plain(params), onUpdate, { fallback, onStatus, onError });
}
