// The API client against a real service: tests/test_js_client.py starts one (gunicorn, a scratch
// database holding tests.helpers.two_listings) and runs this file with KPI_SERVICE_URL and
// KPI_TOKEN set. Without them (a plain `npm test`) it is skipped.
import { afterEach, describe, expect, it, vi } from "vitest";
import { createKpiApi, KpiApiError, type KpiUpdate } from "../src/api.js";

const base = process.env.KPI_SERVICE_URL;
const token = process.env.KPI_TOKEN;
const MARCH = { from: "2026-03-01", to: "2026-03-31", tz: "UTC" };

/** Runs `fn` and gives back the statuses of the responses fetch received meanwhile. */
async function statuses<T>(fn: () => Promise<T>): Promise<{ value: T; seen: number[] }> {
  const seen: number[] = [];
  const real = globalThis.fetch;
  const spy = vi.spyOn(globalThis, "fetch").mockImplementation(async (...args) => {
    const response = await real(...args);
    seen.push(response.status);
    return response;
  });
  try {
    return { value: await fn(), seen };
  } finally {
    spy.mockRestore();
  }
}

async function rejection(promise: Promise<unknown>): Promise<KpiApiError> {
  try {
    await promise;
  } catch (error) {
    expect(error).toBeInstanceOf(KpiApiError);
    return error as KpiApiError;
  }
  throw new Error("the request succeeded");
}

describe.skipIf(!base || !token)("the API client against the service", () => {
  // Made in the suite's body, which runs also when it is skipped: no service URL, no API.
  const api = createKpiApi({ baseUrl: base ?? "http://127.0.0.1:1/", getToken: () => token });
  afterEach(() => vi.restoreAllMocks());

  it("gets the window's numbers, and a 304 gives back the same body", async () => {
    const first = await statuses(() => api.getKpiMetrics(MARCH));
    expect(first.seen).toEqual([200]);
    expect(first.value.metrics).toMatchObject({ total_listings: 2, total_value: 400, average_price: 200 });
    expect(first.value.meta.window).toMatchObject({ from: "2026-03-01", to: "2026-03-31", tz: "UTC" });
    const second = await statuses(() => api.getKpiMetrics(MARCH));
    expect(second.seen).toEqual([304]);
    expect(second.value).toBe(first.value);
  });

  it("gets the history", async () => {
    const history = await api.getKpiHistory({ ...MARCH, interval: "month" });
    expect(history.series).toHaveLength(1);
    expect(history.series[0]).toMatchObject({ start: "2026-03-01", end: "2026-03-31", metrics: { total_listings: 2 } });
  });

  it("gives a 400 envelope as a typed error with the per-parameter problems", async () => {
    const error = await rejection(api.getKpiMetrics({ from: "2026-13-01" }));
    expect(error).toMatchObject({ kind: "http", status: 400, isOutage: false });
    expect(error.body?.success).toBe(false);
    expect(Object.keys(error.errors)).toEqual(["from"]);
    expect(error.message).toContain(error.body!.message);
  });

  it("gives a 401 envelope as a typed error", async () => {
    const anonymous = createKpiApi({ baseUrl: base!, getToken: () => "not-a-token" });
    const error = await rejection(anonymous.getKpiMetrics(MARCH));
    expect(error).toMatchObject({ kind: "auth", status: 401, isOutage: false });
    expect(error.body?.message).toBeTruthy();
  });

  it("calls a stopped service an outage", async () => {
    const nowhere = createKpiApi({ baseUrl: "http://127.0.0.1:1/", getToken: () => token });
    const error = await rejection(nowhere.getKpiMetrics(MARCH));
    expect(error).toMatchObject({ kind: "unreachable", status: 0, isOutage: true });
  });

  it("subscribes (by polling, in Node without WebSocket or EventSource) to the window", async () => {
    const updates: KpiUpdate[] = [];
    const transports: string[] = [];
    const subscription = api.subscribe(MARCH, (update) => updates.push(update), {
      onStatus: (transport) => transports.push(transport),
    });
    try {
      await vi.waitFor(() => expect(updates).toHaveLength(1), { timeout: 10000 });
      expect(updates[0]).toMatchObject({ source: expect.stringMatching(/websocket|sse|poll/), metrics: { total_listings: 2 } });
      expect(transports.length).toBeGreaterThan(0);
    } finally {
      subscription.close();
    }
  });
});
