import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { computeKpis, micros, roundHalfAway, windowInstants, type KpiRows, type KpiWindow } from "../src/compute.js";

interface Vector {
  name: string;
  window: KpiWindow;
  instants: { start: string | null; end: string | null; as_of: string };
  rows: KpiRows;
  metrics: Record<string, number>;
}

// Made by tests/make_vectors.py from the Python reference; the Python suite checks the SQL with it.
const vectors: Vector[] = JSON.parse(readFileSync(new URL("../../../tests/vectors/kpis.json", import.meta.url), "utf8"));

describe("computeKpis on the shared vectors", () => {
  it("has vectors to check", () => expect(vectors.length).toBeGreaterThan(30));

  it.each(vectors.map((v) => [v.name, v] as const))("%s", (_, vector) => {
    const at = (text: string | null) => (text === null ? null : micros(text));
    expect(windowInstants(vector.window)).toEqual({
      start: at(vector.instants.start),
      end: at(vector.instants.end),
      asOf: at(vector.instants.as_of),
    });
    expect(computeKpis(vector.rows, vector.window)).toEqual(vector.metrics);
  });
});

describe("rounding", () => {
  it("takes halves away from zero", () => {
    expect(roundHalfAway([10000005n, 1000n])).toBe(10000.01);
    expect(roundHalfAway([-5n, 1000n])).toBe(-0.01);
    expect(roundHalfAway([-4n, 1000n])).toBe(0);
    expect(Object.is(roundHalfAway([-4n, 1000n]), -0)).toBe(false);
  });
});

describe("numbers as the application holds them", () => {
  it("takes JS numbers and Dates as well as strings", () => {
    const rows: KpiRows = {
      listings: [{ id: 1, price: 0.1, status: "active", listed_at: new Date("2026-03-02T00:00:00Z"), score: 50 }],
      leads: [],
      purchases: [],
    };
    const metrics = computeKpis(rows, { from: "2026-03-01", to: "2026-03-31", tz: "UTC", now: "2026-04-02T00:00:00Z" });
    expect(metrics).toMatchObject({ total_listings: 1, total_value: 0.1, average_score: 50, scoring_rate: 100 });
  });
});
