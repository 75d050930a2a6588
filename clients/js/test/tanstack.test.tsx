// @vitest-environment jsdom
// The TanStack Query adapter with a real QueryClient: one request for components sharing a window,
// the fallback during an outage, no retry of an auth failure, and live values through setQueryData.
import { QueryClient, QueryClientProvider, useQuery } from "@tanstack/react-query";
import { act, render, renderHook, waitFor } from "@testing-library/react";
import type { ReactNode } from "react";
import { describe, expect, it, vi } from "vitest";
import { createKpiApi, KpiApiError, type KpiApi, type KpiResponse, type KpiUpdate } from "../src/api.js";
import { kpiQueryKey, kpiQueryOptions, subscribeKpiQuery } from "../src/tanstack.js";

const MARCH = { from: "2026-03-01", to: "2026-03-31", tz: "UTC" };
const metrics = (total: number) => ({
  total_listings: total,
  total_value: 0,
  average_price: 0,
  scoring_rate: 0,
  average_score: 0,
  aged_inventory: 0,
  average_profit_per_unit: 0,
  lead_to_purchase_time: 0,
  conversion_rate: 0,
  active_buyers: 0,
});
const body = (total: number): KpiResponse => ({
  metrics: metrics(total),
  targets: {},
  success: true,
  message: null,
  meta: {
    computed_at: "2026-03-01T00:00:00Z",
    cached: false,
    stale: false,
    duration_ms: 1,
    includes_commits_before: null,
    pending_changes: 0,
    window: { from: "2026-03-01", to: "2026-03-31", tz: "UTC", aged_days: 60 },
  },
});

function api(getKpiMetrics: KpiApi["getKpiMetrics"], subscribe?: KpiApi["subscribe"]): KpiApi {
  const real = createKpiApi({ baseUrl: "http://kpi.test/" });
  return { ...real, getKpiMetrics, subscribe: subscribe ?? real.subscribe };
}

function setup() {
  const client = new QueryClient({ defaultOptions: { queries: { retryDelay: 0 } } });
  const wrapper = ({ children }: { children?: ReactNode }) => (
    <QueryClientProvider client={client}>{children}</QueryClientProvider>
  );
  return { client, wrapper };
}

describe("kpiQueryOptions", () => {
  it("gives components on one window one request, keyed by value", async () => {
    const get = vi.fn(async () => body(3));
    const kpi = api(get);
    const { wrapper } = setup();
    function Card() {
      const { data } = useQuery(kpiQueryOptions(kpi, { ...MARCH }));
      return <i>{data?.metrics.total_listings ?? "-"}</i>;
    }
    const { container } = render(
      <>
        <Card />
        <Card />
        <Card />
      </>,
      { wrapper },
    );
    await waitFor(() => expect(container.textContent).toBe("333"));
    expect(get).toHaveBeenCalledTimes(1);
    expect(kpiQueryKey(kpi, { tz: "UTC", to: "2026-03-31", from: "2026-03-01" })).toEqual(kpiQueryKey(kpi, MARCH));
  });

  it("computes locally during an outage, and neither falls back nor retries on an auth failure", async () => {
    const { wrapper } = setup();
    const down = api(async () => Promise.reject(new KpiApiError("unreachable", 0, "down")));
    const local = renderHook(() => useQuery(kpiQueryOptions(down, MARCH, { fallback: () => metrics(42) })), { wrapper });
    await waitFor(() => expect(local.result.current.data?.source).toBe("local"));
    expect(local.result.current.data?.metrics.total_listings).toBe(42);

    const refused = vi.fn(async () => Promise.reject(new KpiApiError("auth", 401, "Token has expired")));
    const fallback = vi.fn(() => metrics(42));
    const auth = renderHook(() => useQuery(kpiQueryOptions(api(refused), { tz: "UTC" }, { fallback })), { wrapper });
    await waitFor(() => expect(auth.result.current.status).toBe("error"));
    expect(auth.result.current.error).toMatchObject({ kind: "auth" });
    expect(refused).toHaveBeenCalledTimes(1);
    expect(fallback).not.toHaveBeenCalled();
  });
});

describe("subscribeKpiQuery", () => {
  it("writes each live value into the QueryClient that useQuery reads", async () => {
    let push: ((update: KpiUpdate) => void) | null = null;
    const closed = vi.fn();
    const kpi = api(
      async () => body(1),
      (_, onUpdate) => {
        push = onUpdate;
        return { close: closed };
      },
    );
    const { client, wrapper } = setup();
    const subscription = subscribeKpiQuery(client, kpi, MARCH);
    const { result } = renderHook(() => useQuery({ ...kpiQueryOptions(kpi, MARCH), staleTime: Infinity }), { wrapper });
    await waitFor(() => expect(result.current.data?.metrics.total_listings).toBe(1));
    act(() => push!({ metrics: metrics(2), meta: body(2).meta, source: "websocket" }));
    // QueryClient notifies its observers on a later task (its notifyManager batches).
    await waitFor(() => expect(result.current.data).toMatchObject({ source: "websocket", metrics: { total_listings: 2 } }));
    expect(client.getQueryData(kpiQueryKey(kpi, MARCH))).toBe(result.current.data);
    subscription.close();
    expect(closed).toHaveBeenCalledTimes(1);
  });
});
