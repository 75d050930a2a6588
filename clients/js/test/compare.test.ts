import { readFileSync } from "node:fs";
import { describe, expect, it, vi } from "vitest";
import { createKpiApi, KpiApiError, windowQuery, type KpiMetrics } from "../src/api.js";
import { comparedDays, kpiChanges, type Compare } from "../src/compare.js";
import { computeKpis, type KpiRows } from "../src/compute.js";

interface Vectors {
  days: { from: string; to: string; compare: Compare; compared: [string, string] }[];
  changes: { current: KpiMetrics; base: KpiMetrics; change: ReturnType<typeof kpiChanges> }[];
}

// Made by tests/make_vectors.py from the service's own functions (serving/windows.py, responses.py).
const vectors: Vectors = JSON.parse(
  readFileSync(new URL("../../../tests/vectors/comparisons.json", import.meta.url), "utf8"),
);

describe("the comparison on the shared vectors", () => {
  it("has vectors to check", () => {
    expect(vectors.days.length).toBeGreaterThan(20);
    expect(vectors.changes.length).toBeGreaterThan(10);
  });

  it.each(vectors.days.map((v) => [`${v.from}..${v.to} ${v.compare}`, v] as const))("days %s", (_, v) => {
    expect(comparedDays(v.from, v.to, v.compare)).toEqual(v.compared);
  });

  it.each(vectors.changes.map((v, i) => [i, v] as const))("changes %i", (_, v) => {
    expect(kpiChanges(v.current, v.base)).toEqual(v.change);
  });
});

describe("the fallback's comparison", () => {
  const rows: KpiRows = {
    listings: [
      { id: 1, price: "100", status: "active", listed_at: "2026-03-01T10:00:00Z" },
      { id: 2, price: "300", status: "active", listed_at: "2026-03-02T10:00:00Z" },
      { id: 3, price: "500", status: "active", listed_at: "2026-03-02T11:00:00Z" },
    ],
    leads: [],
    purchases: [],
  };

  it("is computeKpis over the compared days, a second window", async () => {
    const api = createKpiApi({ baseUrl: "http://kpi.test/" });
    const fallback = vi.fn((params: { from?: string; to?: string; tz?: string }) =>
      computeKpis(rows, { ...params, now: "2026-11-25T00:00:00Z" }),
    );
    const error = new KpiApiError("unreachable", 0, "down");
    const update = await api.local(
      { from: "2026-03-02", to: "2026-03-02", tz: "UTC", compare: "previous_period" },
      error,
      fallback,
    );
    expect(fallback).toHaveBeenCalledTimes(2);
    expect(fallback.mock.calls[1][0]).toEqual({ from: "2026-03-01", to: "2026-03-01", tz: "UTC" });
    expect(update?.metrics.total_listings).toBe(2);
    expect(update?.comparison?.metrics.total_listings).toBe(1);
    expect(update?.comparison?.change.total_listings).toEqual({ absolute: 1, percent: 100 });
    expect(update?.comparison?.change.average_price).toEqual({ absolute: 300, percent: 300 });
  });
});

describe("compare in the window's query", () => {
  it("is sent, so getKpiMetrics, subscribe and useKpiMetrics (keyed by it) ask for the comparison", () => {
    const query = windowQuery({ from: "2026-12-01", to: "2026-12-07", tz: "UTC", compare: "previous_period" });
    expect(query.toString()).toBe("from=2026-12-01&to=2026-12-07&tz=UTC&compare=previous_period");
  });

  it("reaches getKpiMetrics' request", async () => {
    const fetch = vi.fn(async (_url: string) => new Response(JSON.stringify({ metrics: {}, targets: {}, meta: {} }), { status: 200 }));
    vi.stubGlobal("fetch", fetch);
    try {
      const api = createKpiApi({ baseUrl: "http://kpi.test/" });
      await api.getKpiMetrics({ from: "2026-12-01", to: "2026-12-07", compare: "previous_year" });
      expect(String(fetch.mock.calls[0][0])).toBe("http://kpi.test/api/kpi?from=2026-12-01&to=2026-12-07&compare=previous_year");
    } finally {
      vi.unstubAllGlobals();
    }
  });
});
