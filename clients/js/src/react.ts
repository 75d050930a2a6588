// useKpiMetrics: the service's figures for a window, live or fetched once, with the application's
// own computation (for example computeKpis) while the service fails.
import { useEffect, useRef, useState } from "react";
import {
  KpiApiError,
  windowQuery,
  type KpiApi,
  type KpiFallback,
  type KpiMetrics,
  type KpiParams,
  type KpiUpdate,
} from "./api.js";

export interface UseKpiMetricsOptions {
  api: KpiApi;
  /** Follow the window live (WebSocket, else SSE, else polling) rather than fetch it once. */
  live?: boolean;
  /** The application's figures while the service fails (unreachable, timed out, 5xx). */
  fallback?: KpiFallback;
}

export interface KpiMetricsState {
  metrics: KpiMetrics | null;
  meta: KpiUpdate["meta"] | null;
  /** "service": the service's figures; "local": the fallback's, while the service fails. */
  source: "service" | "local" | null;
  /**
   * loading: nothing yet for these params; ready: figures for them; stale: the service's cache
   * while its database is down, or earlier figures after a failure without a fallback;
   * error: nothing to show (a refusal, such as a 400 or 401, or an outage without fallback).
   */
  status: "loading" | "ready" | "stale" | "error";
  /** The last failure, also while local or stale figures are shown. */
  error: KpiApiError | null;
}

const LOADING: KpiMetricsState = { metrics: null, meta: null, source: null, status: "loading", error: null };

function shown(update: KpiUpdate, error: KpiApiError | null = null): KpiMetricsState {
  const local = update.source === "local";
  return {
    metrics: update.metrics,
    meta: update.meta,
    source: local ? "local" : "service",
    status: !local && update.meta.stale ? "stale" : "ready",
    error: local ? error : null,
  };
}

function failed(previous: KpiMetricsState, error: KpiApiError): KpiMetricsState {
  // A refusal means these params have no figures; an outage leaves the last ones, now stale.
  if (!error.isOutage || previous.metrics === null) return { ...LOADING, status: "error", error };
  return { ...previous, status: "stale", error };
}

export function useKpiMetrics(params: KpiParams, { api, live = false, fallback }: UseKpiMetricsOptions): KpiMetricsState {
  const [state, setState] = useState<KpiMetricsState>(LOADING);
  // The fallback of the latest render, without resubscribing when the application passes a new
  // function each render.
  const fallbackRef = useRef(fallback);
  fallbackRef.current = fallback;
  const key = windowQuery(params).toString();

  useEffect(() => {
    const query = Object.fromEntries(new URLSearchParams(key)) as KpiParams;
    const useFallback: KpiFallback | undefined = fallbackRef.current
      ? (p, error) => fallbackRef.current!(p, error)
      : undefined;
    let current = true;
    setState((previous) => (previous.status === "loading" ? previous : { ...previous, status: "loading" }));

    if (live) {
      let lastError: KpiApiError | null = null;
      const subscription = api.subscribe(
        query,
        (update) => {
          if (current) setState(shown(update, lastError));
        },
        {
          fallback: useFallback
            ? (p, error) => {
                lastError = error;
                return useFallback(p, error);
              }
            : undefined,
          onError: (error) => {
            if (current) setState((previous) => failed(previous, error));
          },
        },
      );
      return () => {
        current = false;
        subscription.close();
      };
    }

    const controller = new AbortController();
    (async () => {
      try {
        const body = await api.getKpiMetrics(query, { signal: controller.signal });
        if (current) setState(shown({ metrics: body.metrics, meta: body.meta, source: "http" }));
      } catch (caught) {
        const error =
          caught instanceof KpiApiError ? caught : new KpiApiError("unreachable", 0, String((caught as Error)?.message));
        if (!current || error.kind === "aborted") return;
        if (error.isOutage) {
          try {
            const figures = await api.local(query, error, useFallback);
            if (figures && current) return setState(shown(figures, error));
          } catch {
            // a failing fallback: the service's error is the one to show
          }
        }
        if (current) setState((previous) => failed(previous, error));
      }
    })();
    return () => {
      current = false;
      controller.abort();
    };
  }, [api, live, key]);

  return state;
}
