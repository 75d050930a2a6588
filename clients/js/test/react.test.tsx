// @vitest-environment jsdom
import { act, renderHook, waitFor } from "@testing-library/react";
import { describe, expect, it } from "vitest";
import { createKpiApi, KpiApiError, type KpiApi, type KpiParams, type KpiResponse, type KpiUpdate } from "../src/api.js";
import { useKpiMetrics } from "../src/react.js";

const METRICS = {
  total_listings: 2,
  total_value: 400,
  average_price: 200,
  scoring_rate: 0,
  average_score: 0,
  aged_inventory: 0,
  average_profit_per_unit: 0,
  lead_to_purchase_time: 0,
  conversion_rate: 0,
  active_buyers: 0,
};
const LOCAL = { ...METRICS, total_listings: 4242 };

function body(total: number, stale = false): KpiResponse {
  return {
    metrics: { ...METRICS, total_listings: total },
    success: true,
    message: null,
    meta: {
      computed_at: "2026-03-01T00:00:00Z",
      cached: false,
      stale,
      duration_ms: 1,
      window: { from: null, to: null, tz: "UTC", aged_days: 60 },
    },
  } as KpiResponse;
}

interface Call {
  params: KpiParams;
  signal?: AbortSignal;
  resolve: (value: KpiResponse) => void;
  reject: (error: unknown) => void;
}

/** An API whose getKpiMetrics answers when the test says so; `local` is the real one. */
function fakeApi() {
  const calls: Call[] = [];
  const subscriptions: { params: KpiParams; onUpdate: (u: KpiUpdate) => void; options: any; closed: boolean }[] = [];
  const real = createKpiApi({ baseUrl: "http://127.0.0.1:1/" });
  const api: KpiApi = {
    getKpiMetrics: (params = {}, { signal } = {}) =>
      new Promise((resolve, reject) => {
        calls.push({ params, signal, resolve, reject });
        signal?.addEventListener("abort", () => reject(new KpiApiError("aborted", 0, "cancelled")));
      }),
    getKpiHistory: () => Promise.reject(new Error("not used")),
    subscribe(params, onUpdate, options = {}) {
      const entry = { params, onUpdate, options, closed: false };
      subscriptions.push(entry);
      return { close: () => void (entry.closed = true) };
    },
    local: real.local,
  };
  return { api, calls, subscriptions };
}

const outage = () => new KpiApiError("unreachable", 0, "The KPI service cannot be reached.");

describe("useKpiMetrics, fetched once", () => {
  it("goes from loading to the service's figures", async () => {
    const { api, calls } = fakeApi();
    const { result } = renderHook(() => useKpiMetrics({ tz: "UTC" }, { api }));
    expect(result.current).toMatchObject({ status: "loading", metrics: null, source: null });
    await waitFor(() => expect(calls).toHaveLength(1));
    expect(calls[0].params).toEqual({ tz: "UTC" });
    await act(async () => calls[0].resolve(body(7)));
    expect(result.current).toMatchObject({ status: "ready", source: "service", error: null });
    expect(result.current.metrics?.total_listings).toBe(7);
  });

  it("says stale when the service serves its cache with the database down", async () => {
    const { api, calls } = fakeApi();
    const { result } = renderHook(() => useKpiMetrics({}, { api }));
    await waitFor(() => expect(calls).toHaveLength(1));
    await act(async () => calls[0].resolve(body(3, true)));
    expect(result.current).toMatchObject({ status: "stale", source: "service" });
  });

  it("refetches when the params change and cancels the request in flight", async () => {
    const { api, calls } = fakeApi();
    const { result, rerender } = renderHook(({ params }) => useKpiMetrics(params, { api }), {
      initialProps: { params: { from: "2026-03-01" } as KpiParams },
    });
    await waitFor(() => expect(calls).toHaveLength(1));
    rerender({ params: { from: "2026-03-01" } }); // equal params, a new object: no new request
    rerender({ params: { from: "2026-04-01" } });
    await waitFor(() => expect(calls).toHaveLength(2));
    expect(calls[0].signal?.aborted).toBe(true);
    expect(calls[1].params).toEqual({ from: "2026-04-01" });
    await act(async () => calls[1].resolve(body(9)));
    expect(result.current).toMatchObject({ status: "ready", metrics: { total_listings: 9 } });
  });

  it("uses the fallback while the service fails, with the error", async () => {
    const { api, calls } = fakeApi();
    const seen: KpiParams[] = [];
    const fallback = (params: KpiParams) => (seen.push(params), LOCAL);
    const { result } = renderHook(() => useKpiMetrics({ tz: "UTC" }, { api, fallback }));
    await waitFor(() => expect(calls).toHaveLength(1));
    await act(async () => calls[0].reject(outage()));
    await waitFor(() => expect(result.current.source).toBe("local"));
    expect(result.current).toMatchObject({ status: "ready", metrics: LOCAL, meta: { local: true } });
    expect(result.current.error?.kind).toBe("unreachable");
    expect(seen).toEqual([{ tz: "UTC" }]);
  });

  it("is an error, not the fallback, when the service refuses the request", async () => {
    const { api, calls } = fakeApi();
    const { result } = renderHook(() => useKpiMetrics({ from: "x" }, { api, fallback: () => LOCAL }));
    await waitFor(() => expect(calls).toHaveLength(1));
    const refusal = new KpiApiError("http", 400, "Invalid query parameters.", {
      success: false,
      metrics: null,
      message: "Invalid query parameters.",
      errors: { from: ["Not a valid date."] },
    });
    await act(async () => calls[0].reject(refusal));
    expect(result.current).toMatchObject({ status: "error", metrics: null, source: null });
    expect(result.current.error?.status).toBe(400);
    expect(result.current.error?.errors).toEqual({ from: ["Not a valid date."] });
  });

  it("is an error on an outage without fallback", async () => {
    const { api, calls } = fakeApi();
    const { result } = renderHook(() => useKpiMetrics({}, { api }));
    await waitFor(() => expect(calls).toHaveLength(1));
    await act(async () => calls[0].reject(outage()));
    expect(result.current).toMatchObject({ status: "error", metrics: null });
  });

  it("cancels the request in flight on unmount", async () => {
    const { api, calls } = fakeApi();
    const { unmount } = renderHook(() => useKpiMetrics({}, { api }));
    await waitFor(() => expect(calls).toHaveLength(1));
    unmount();
    expect(calls[0].signal?.aborted).toBe(true);
  });
});

describe("useKpiMetrics, live", () => {
  const update = (total: number, source: KpiUpdate["source"]): KpiUpdate => ({ ...body(total), source });

  it("shows each update, local ones as local, and closes the subscription on unmount", async () => {
    const { api, subscriptions } = fakeApi();
    const { result, unmount } = renderHook(() => useKpiMetrics({ tz: "UTC" }, { api, live: true, fallback: () => LOCAL }));
    await waitFor(() => expect(subscriptions).toHaveLength(1));
    const [subscription] = subscriptions;
    expect(subscription.params).toEqual({ tz: "UTC" });
    act(() => subscription.onUpdate(update(1, "websocket")));
    expect(result.current).toMatchObject({ status: "ready", source: "service", metrics: { total_listings: 1 } });

    // The client calls the fallback on an outage and passes its figures on as "local".
    await act(async () => {
      const local = await api.local({ tz: "UTC" }, outage(), subscription.options.fallback);
      subscription.onUpdate(local!);
    });
    expect(result.current).toMatchObject({ status: "ready", source: "local", metrics: LOCAL });
    expect(result.current.error?.kind).toBe("unreachable");

    act(() => subscription.onUpdate(update(2, "sse")));
    expect(result.current).toMatchObject({ status: "ready", source: "service", error: null });
    unmount();
    expect(subscription.closed).toBe(true);
  });

  it("keeps the last figures as stale when the subscription reports an outage", async () => {
    const { api, subscriptions } = fakeApi();
    const { result } = renderHook(() => useKpiMetrics({}, { api, live: true }));
    await waitFor(() => expect(subscriptions).toHaveLength(1));
    act(() => subscriptions[0].onUpdate(update(5, "poll")));
    act(() => subscriptions[0].options.onError(outage()));
    expect(result.current).toMatchObject({ status: "stale", metrics: { total_listings: 5 }, source: "service" });
  });

  it("resubscribes when the params change", async () => {
    const { api, subscriptions } = fakeApi();
    const { rerender } = renderHook(({ params }) => useKpiMetrics(params, { api, live: true }), {
      initialProps: { params: { tz: "UTC" } as KpiParams },
    });
    await waitFor(() => expect(subscriptions).toHaveLength(1));
    rerender({ params: { tz: "Europe/Berlin" } });
    await waitFor(() => expect(subscriptions).toHaveLength(2));
    expect(subscriptions[0].closed).toBe(true);
    expect(subscriptions[1].params).toEqual({ tz: "Europe/Berlin" });
  });
});
