// @vitest-environment jsdom
// useKpiMetrics over a fake API that answers when the test says so, with fake timers: the store's
// deferred release, retries and gc run when the test advances the clock, never by waiting.
import { act, render, renderHook } from "@testing-library/react";
import { StrictMode, useEffect, useState, type ReactNode } from "react";
import { hydrateRoot } from "react-dom/client";
import { renderToString } from "react-dom/server";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import {
  createKpiApi,
  KpiApiError,
  type KpiApi,
  type KpiParams,
  type KpiResponse,
  type KpiUpdate,
  type SubscribeOptions,
} from "../src/api.js";
import { KpiProvider, createKpiStore, useKpiMetrics, type KpiStore, type UseKpiMetricsOptions } from "../src/react.js";

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
const MARCH: KpiParams = { from: "2026-03-01", to: "2026-03-31", tz: "UTC" };
const APRIL: KpiParams = { from: "2026-04-01", to: "2026-04-30", tz: "UTC" };

function body(total: number, stale = false): KpiResponse {
  return {
    metrics: { ...METRICS, total_listings: total },
    targets: {},
    success: true,
    message: null,
    meta: {
      computed_at: "2026-03-01T00:00:00Z",
      cached: false,
      stale,
      duration_ms: 1,
      includes_commits_before: null,
      pending_changes: 0,
      window: { from: null, to: null, tz: "UTC", aged_days: 60 },
    },
  };
}

interface Call {
  params: KpiParams;
  signal?: AbortSignal;
  resolve: (value: KpiResponse) => void;
  reject: (error: unknown) => void;
}

interface Subscription {
  params: KpiParams;
  onUpdate: (u: KpiUpdate) => void;
  options: SubscribeOptions;
  closed: boolean;
}

/** An API whose getKpiMetrics answers when the test says so; `local` is the real one. */
function fakeApi(baseUrl = "http://kpi.test/") {
  const calls: Call[] = [];
  const subscriptions: Subscription[] = [];
  const real = createKpiApi({ baseUrl });
  const api: KpiApi = {
    baseUrl: real.baseUrl,
    getKpiMetrics: (params = {}, { signal } = {}) =>
      new Promise((resolve, reject) => {
        calls.push({ params, signal, resolve, reject });
        signal?.addEventListener("abort", () => reject(new KpiApiError("aborted", 0, "cancelled")));
      }),
    getKpiHistory: () => Promise.reject(new Error("not used")),
    subscribe(params, onUpdate, options = {}) {
      const entry: Subscription = { params, onUpdate, options, closed: false };
      subscriptions.push(entry);
      return { close: () => void (entry.closed = true) };
    },
    local: real.local,
  };
  return { api, calls, subscriptions };
}

const outage = () => new KpiApiError("unreachable", 0, "The KPI service cannot be reached.");
const noToken = () => new KpiApiError("auth", 0, "No token: signed out");

let store: KpiStore;
const wrapper = ({ children }: { children?: ReactNode }) => <KpiProvider store={store}>{children}</KpiProvider>;
/** Lets promises settle and timers up to `ms` from now fire, inside act. */
const advance = (ms = 0) => act(() => vi.advanceTimersByTimeAsync(ms));

function mount(params: KpiParams, options: UseKpiMetricsOptions) {
  return renderHook(({ p, o }) => useKpiMetrics(p, o), { wrapper, initialProps: { p: params, o: options } });
}

beforeEach(() => {
  vi.useFakeTimers();
  store = createKpiStore({ retryDelay: () => 1000 });
});
afterEach(() => {
  vi.useRealTimers();
  vi.unstubAllGlobals();
});

describe("useKpiMetrics, fetched", () => {
  it("goes from loading to the service's figures", async () => {
    const { api, calls } = fakeApi();
    const { result } = mount({ tz: "UTC" }, { api });
    expect(result.current).toMatchObject({ status: "loading", metrics: null, source: null, isFetching: true });
    expect(calls).toHaveLength(1);
    expect(calls[0].params).toEqual({ tz: "UTC" });
    await act(async () => calls[0].resolve(body(7)));
    expect(result.current).toMatchObject({ status: "ready", source: "service", error: null, transport: "http" });
    expect(result.current).toMatchObject({ isFetching: false, metrics: { total_listings: 7 } });
  });

  it("says stale when the service serves its cache with the database down", async () => {
    const { api, calls } = fakeApi();
    const { result } = mount({}, { api });
    await act(async () => calls[0].resolve(body(3, true)));
    expect(result.current).toMatchObject({ status: "stale", source: "service" });
  });

  it("never shows one window's figures as another's: a window change starts from loading", async () => {
    const { api, calls } = fakeApi();
    const seen: string[] = [];
    const { result, rerender } = renderHook(
      ({ p }) => {
        const state = useKpiMetrics(p, { api });
        seen.push(`${p.from} ${state.status} ${state.metrics?.total_listings ?? "-"}`);
        return state;
      },
      { wrapper, initialProps: { p: MARCH } },
    );
    await act(async () => calls[0].resolve(body(3)));
    rerender({ p: { ...MARCH } }); // equal params, a new object: no new request
    expect(calls).toHaveLength(1);
    seen.length = 0;
    rerender({ p: APRIL });
    expect(calls).toHaveLength(2);
    expect(calls[1].params).toEqual(APRIL);
    await act(async () => calls[1].reject(outage())); // and no fallback
    expect(result.current).toMatchObject({ status: "error", metrics: null, source: null });
    expect(seen.filter((s) => s.startsWith("2026-04-01"))).not.toContainEqual(expect.stringMatching(/ 3$/));
    expect(seen.at(-1)).toBe("2026-04-01 error -");
    await advance(); // the deferred release: March's request is no longer needed
    expect(store.peek(`${api.baseUrl} fetch from=2026-03-01&to=2026-03-31&tz=UTC`)?.metrics?.total_listings).toBe(3);
  });

  it("keeps the previous window's figures only when asked, flagged as placeholder data", async () => {
    const { api, calls } = fakeApi();
    const { result, rerender } = mount(MARCH, { api, keepPrevious: true });
    expect(result.current).toMatchObject({ status: "loading", metrics: null, isPlaceholderData: false });
    await act(async () => calls[0].resolve(body(3)));
    expect(result.current).toMatchObject({ status: "ready", isPlaceholderData: false });
    rerender({ p: APRIL, o: { api, keepPrevious: true } });
    expect(result.current).toMatchObject({ status: "loading", isPlaceholderData: true, metrics: { total_listings: 3 } });
    await act(async () => calls[1].resolve(body(4)));
    expect(result.current).toMatchObject({ status: "ready", isPlaceholderData: false, metrics: { total_listings: 4 } });
  });

  it("shows a window's cached figures at once when it comes back, without a request within staleTime", async () => {
    const { api, calls } = fakeApi();
    const { result, rerender } = mount(MARCH, { api, staleTime: 60_000 });
    await act(async () => calls[0].resolve(body(3)));
    rerender({ p: APRIL, o: { api, staleTime: 60_000 } });
    rerender({ p: MARCH, o: { api, staleTime: 60_000 } });
    expect(result.current).toMatchObject({ status: "ready", metrics: { total_listings: 3 } });
    expect(calls.map((c) => c.params.from)).toEqual(["2026-03-01", "2026-04-01"]);
  });

  it("uses the fallback during an outage, then recovers: the service's figures and no error", async () => {
    const { api, calls } = fakeApi();
    const seen: KpiParams[] = [];
    const fallback = (params: KpiParams) => (seen.push(params), LOCAL);
    const { result } = mount({ tz: "UTC" }, { api, fallback });
    await act(async () => calls[0].reject(outage()));
    expect(result.current).toMatchObject({ status: "ready", source: "local", metrics: LOCAL, meta: { local: true } });
    expect(result.current.error?.kind).toBe("unreachable");
    expect(seen).toEqual([{ tz: "UTC" }]);
    await advance(999);
    expect(calls).toHaveLength(1);
    await advance(1); // the retry's back-off
    expect(calls).toHaveLength(2);
    await act(async () => calls[1].resolve(body(8)));
    expect(result.current).toMatchObject({ status: "ready", source: "service", error: null, metrics: { total_listings: 8 } });
  });

  it("reports a failed token as auth: no fallback, an error the UI sees, and a retry with the renewed token", async () => {
    const { api, calls } = fakeApi();
    const fallback = vi.fn(() => LOCAL);
    const { result } = mount(MARCH, { api, fallback });
    await act(async () => calls[0].reject(noToken()));
    expect(result.current).toMatchObject({ status: "error", source: null, metrics: null });
    expect(result.current.error).toMatchObject({ kind: "auth", isOutage: false });
    expect(fallback).not.toHaveBeenCalled();
    await advance(1000);
    await act(async () => calls[1].resolve(body(5)));
    expect(result.current).toMatchObject({ status: "ready", error: null, metrics: { total_listings: 5 } });
  });

  it("is an error, never retried, when the service refuses the window", async () => {
    const { api, calls } = fakeApi();
    const { result } = mount({ from: "x" }, { api, fallback: () => LOCAL });
    const refusal = new KpiApiError("http", 400, "Invalid query parameters.", {
      success: false,
      metrics: null,
      message: "Invalid query parameters.",
      errors: { from: ["Not a valid date."] },
    });
    await act(async () => calls[0].reject(refusal));
    expect(result.current).toMatchObject({ status: "error", metrics: null, source: null });
    expect(result.current.error?.errors).toEqual({ from: ["Not a valid date."] });
    await advance(60_000);
    expect(calls).toHaveLength(1);
  });

  it("is an error on an outage without fallback, and keeps the window's own figures as stale after one", async () => {
    const { api, calls } = fakeApi();
    const { result } = mount({}, { api });
    await act(async () => calls[0].reject(outage()));
    expect(result.current).toMatchObject({ status: "error", metrics: null });
    await advance(1000);
    await act(async () => calls[1].resolve(body(6)));
    act(() => result.current.refetch());
    await act(async () => calls[2].reject(outage()));
    expect(result.current).toMatchObject({ status: "stale", metrics: { total_listings: 6 }, source: "service" });
  });

  it("cancels the request in flight once the last component unmounts", async () => {
    const { api, calls } = fakeApi();
    const { result, unmount } = mount({}, { api });
    unmount();
    expect(calls[0].signal?.aborted).toBe(false); // deferred: StrictMode mounts again at once
    await advance();
    expect(calls[0].signal?.aborted).toBe(true);
    expect(result.current.status).toBe("loading"); // the last render; nothing renders after unmount
    await advance(10_000);
    expect(calls).toHaveLength(1);
  });

  it("makes one request under StrictMode", async () => {
    const { api, calls } = fakeApi();
    const { result } = renderHook(() => useKpiMetrics(MARCH, { api }), {
      wrapper: ({ children }) => (
        <StrictMode>
          <KpiProvider store={store}>{children}</KpiProvider>
        </StrictMode>
      ),
    });
    await advance();
    expect(calls).toHaveLength(1);
    expect(calls[0].signal?.aborted).toBe(false);
    await act(async () => calls[0].resolve(body(4)));
    expect(result.current).toMatchObject({ status: "ready", metrics: { total_listings: 4 } });
  });

  it("asks nothing while disabled, and refetches on demand", async () => {
    const { api, calls } = fakeApi();
    const { result, rerender } = mount(MARCH, { api, enabled: false });
    expect(result.current).toMatchObject({ status: "idle", isFetching: false });
    expect(calls).toHaveLength(0);
    rerender({ p: MARCH, o: { api } });
    expect(result.current).toMatchObject({ status: "loading", isFetching: true });
    rerender({ p: MARCH, o: { api, enabled: false } }); // disabled again before an answer
    await advance();
    expect(calls[0].signal?.aborted).toBe(true);
    expect(result.current).toMatchObject({ status: "idle", isFetching: false });
    rerender({ p: MARCH, o: { api } });
    expect(result.current.status).toBe("loading");
    await act(async () => calls[1].resolve(body(1)));
    act(() => result.current.refetch());
    expect(result.current.isFetching).toBe(true);
    expect(result.current.status).toBe("ready"); // the figures stay while they are fetched again
    await act(async () => calls[2].resolve(body(2)));
    expect(result.current.metrics?.total_listings).toBe(2);
  });

  it("renders initialData on the server without a request, and on the client without a loading state", async () => {
    const { api, calls } = fakeApi();
    function Cards() {
      const { status, metrics } = useKpiMetrics(MARCH, { api, initialData: body(9), staleTime: 60_000 });
      return <p>{`${status} ${metrics?.total_listings}`}</p>;
    }
    const html = renderToString(
      <KpiProvider store={store}>
        <Cards />
      </KpiProvider>,
    );
    expect(html).toBe("<p>ready 9</p>");
    expect(calls).toHaveLength(0);
    // Hydrated over the server's HTML: the same text, so no mismatch is reported.
    const container = document.createElement("div");
    container.innerHTML = html;
    const mismatches: unknown[] = [];
    await act(async () => {
      hydrateRoot(
        container,
        <KpiProvider store={store}>
          <Cards />
        </KpiProvider>,
        { onRecoverableError: (error) => mismatches.push(error) },
      );
    });
    expect(mismatches).toEqual([]);
    expect(container.textContent).toBe("ready 9");
    await advance(1000);
    expect(calls).toHaveLength(0); // younger than staleTime
  });
});

describe("one store under the hook", () => {
  function Card({ api, view, live }: { api: KpiApi; view: KpiParams; live?: boolean }) {
    const { status, metrics } = useKpiMetrics({ ...view }, { api, live });
    return (
      <i>
        {status}:{metrics?.total_listings ?? "-"}
      </i>
    );
  }

  function Page({ api, live, show = true }: { api: KpiApi; live?: boolean; show?: boolean }) {
    if (!show) return null;
    return (
      <KpiProvider store={store}>
        {[1, 2, 3, 4, 5].map((i) => (
          <Card key={`m${i}`} api={api} view={MARCH} live={live} />
        ))}
        {[1, 2].map((i) => (
          <Card key={`a${i}`} api={api} view={APRIL} live={live} />
        ))}
      </KpiProvider>
    );
  }

  it("makes one request per window for 5 + 2 components, and every component shows it", async () => {
    const { api, calls } = fakeApi();
    const { container, rerender } = render(<Page api={api} />);
    expect(calls.map((c) => c.params.from)).toEqual(["2026-03-01", "2026-04-01"]);
    await act(async () => {
      calls[0].resolve(body(3));
      calls[1].resolve(body(4));
    });
    expect(container.textContent).toBe("ready:3".repeat(5) + "ready:4".repeat(2));
    rerender(<Page api={api} show={false} />);
    await advance();
    expect(calls).toHaveLength(2);
  });

  it("opens one subscription per window for 5 + 2 live components, and closes both when all unmount", async () => {
    const { api, subscriptions } = fakeApi();
    const { rerender } = render(<Page api={api} live />);
    expect(subscriptions.map((s) => s.params.from)).toEqual(["2026-03-01", "2026-04-01"]);
    rerender(<Page api={api} live show={false} />);
    expect(subscriptions.map((s) => s.closed)).toEqual([false, false]);
    await advance();
    expect(subscriptions.map((s) => s.closed)).toEqual([true, true]);
    expect(subscriptions).toHaveLength(2);
  });

  it("survives an api made anew on every render: at most 2 requests in a second of re-renders", async () => {
    const requests: string[] = [];
    vi.stubGlobal(
      "fetch",
      vi.fn(async (input: string | URL | Request) => {
        requests.push(String(input));
        return new Response(JSON.stringify(body(1)), { headers: { "Content-Type": "application/json", ETag: '"a"' } });
      }),
    );
    let renders = 0;
    function Restless() {
      const [tick, setTick] = useState(0);
      useEffect(() => {
        const timer = setInterval(() => setTick((t) => t + 1), 5);
        return () => clearInterval(timer);
      }, []);
      renders += 1;
      // The common mistake: a new client (and new params) each render.
      const api = createKpiApi({ baseUrl: "http://kpi.test/", getToken: () => "t" });
      const { status } = useKpiMetrics({ ...MARCH }, { api });
      return (
        <b>
          {status} {tick}
        </b>
      );
    }
    const { container } = render(
      <KpiProvider store={store}>
        <Restless />
      </KpiProvider>,
    );
    // In steps: one act batches every update inside it into one render.
    for (let ms = 0; ms < 1000; ms += 5) await advance(5);
    expect(renders).toBeGreaterThan(150);
    expect(container.textContent).toMatch(/^ready /);
    expect(requests.length).toBeGreaterThanOrEqual(1);
    expect(requests.length).toBeLessThanOrEqual(2);
  });
});

describe("useKpiMetrics, live", () => {
  it("keeps one subscription while the api and params are made anew on every render, and refetch resubscribes", async () => {
    const { api, subscriptions } = fakeApi();
    const { result, rerender } = mount({ ...MARCH }, { api: { ...api }, live: true });
    for (let i = 0; i < 50; i += 1) rerender({ p: { ...MARCH }, o: { api: { ...api }, live: true } });
    await advance(1000);
    expect(subscriptions).toHaveLength(1);
    act(() => result.current.refetch());
    expect(subscriptions.map((s) => s.closed)).toEqual([true, false]);
  });

  const update = (total: number, source: KpiUpdate["source"]): KpiUpdate => ({ ...body(total), source });

  it("shows each update and its transport, local ones as local with the outage", async () => {
    const { api, subscriptions } = fakeApi();
    const { result } = mount({ tz: "UTC" }, { api, live: true, fallback: () => LOCAL });
    expect(result.current).toMatchObject({ status: "loading", isFetching: true });
    const [subscription] = subscriptions;
    expect(subscription.params).toEqual({ tz: "UTC" });
    act(() => subscription.options.onStatus?.("websocket"));
    act(() => subscription.onUpdate(update(1, "websocket")));
    expect(result.current).toMatchObject({ status: "ready", source: "service", transport: "websocket", isFetching: false });

    // The client calls the fallback on an outage and passes its figures on as "local".
    await act(async () => {
      const local = await api.local({ tz: "UTC" }, outage(), subscription.options.fallback);
      subscription.onUpdate(local!);
    });
    expect(result.current).toMatchObject({ status: "ready", source: "local", metrics: LOCAL });
    expect(result.current.error?.kind).toBe("unreachable");

    act(() => subscription.options.onStatus?.("sse"));
    act(() => subscription.onUpdate(update(2, "sse")));
    expect(result.current).toMatchObject({ status: "ready", source: "service", transport: "sse", error: null });
  });

  it("keeps the window's last figures as stale when the subscription reports an outage without fallback", async () => {
    const { api, subscriptions } = fakeApi();
    const { result } = mount({}, { api, live: true });
    act(() => subscriptions[0].onUpdate(update(5, "poll")));
    act(() => subscriptions[0].options.onError?.(outage()));
    expect(result.current).toMatchObject({ status: "stale", metrics: { total_listings: 5 }, source: "service" });
  });

  it("shows a refused token during a subscription as auth, and the figures again once it is renewed", async () => {
    const { api, subscriptions } = fakeApi();
    const { result } = mount({}, { api, live: true, fallback: () => LOCAL });
    act(() => subscriptions[0].onUpdate(update(5, "websocket")));
    act(() => subscriptions[0].options.onError?.(new KpiApiError("auth", 401, "Token has expired")));
    expect(result.current).toMatchObject({ status: "error", error: { kind: "auth", status: 401 } });
    expect(subscriptions[0].closed).toBe(false); // the client tries again with the next token
    act(() => subscriptions[0].onUpdate(update(6, "websocket")));
    expect(result.current).toMatchObject({ status: "ready", error: null, metrics: { total_listings: 6 } });
  });

  it("resubscribes when the window changes, starting from loading", async () => {
    const { api, subscriptions } = fakeApi();
    const { result, rerender } = mount(MARCH, { api, live: true });
    act(() => subscriptions[0].onUpdate(update(5, "websocket")));
    rerender({ p: APRIL, o: { api, live: true } });
    expect(result.current).toMatchObject({ status: "loading", metrics: null });
    expect(subscriptions[1].params).toEqual(APRIL);
    await advance();
    expect(subscriptions[0].closed).toBe(true);
  });

  it("opens one subscription under StrictMode, and closes it on unmount", async () => {
    const { api, subscriptions } = fakeApi();
    const { unmount } = renderHook(() => useKpiMetrics(MARCH, { api, live: true }), {
      wrapper: ({ children }) => (
        <StrictMode>
          <KpiProvider store={store}>{children}</KpiProvider>
        </StrictMode>
      ),
    });
    await advance();
    expect(subscriptions).toHaveLength(1);
    unmount();
    await advance();
    expect(subscriptions[0].closed).toBe(true);
  });
});
