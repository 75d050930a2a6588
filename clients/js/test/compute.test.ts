import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import {
  computeKpis,
  DanglingReferenceError,
  micros,
  roundHalfAway,
  windowInstants,
  type KpiRows,
  type KpiWindow,
} from "../src/compute.js";

interface Vector {
  name: string;
  window: KpiWindow;
  instants: { start: string | null; end: string | null; as_of: string };
  rows: KpiRows;
  metrics?: Record<string, number>;
  error?: string;
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
    if (vector.error) expect(() => computeKpis(vector.rows, vector.window)).toThrow(DanglingReferenceError);
    else expect(computeKpis(vector.rows, vector.window)).toEqual(vector.metrics);
  });

  it("include a negative lead time, defaults left out and refused dangling references", () => {
    const names = vectors.map((v) => v.name);
    expect(names).toContain("a lead after its purchase");
    expect(vectors.find((v) => v.name === "a lead after its purchase")?.metrics?.lead_to_purchase_time).toBeLessThan(0);
    const defaults = vectors.find((v) => v.name === "tz and aged_days left out");
    expect(defaults?.window).not.toHaveProperty("tz");
    expect(defaults?.window).not.toHaveProperty("aged_days");
    expect(vectors.filter((v) => v.error)).toHaveLength(2);
  });
});

describe("rounding", () => {
  it("takes halves away from zero", () => {
    expect(roundHalfAway([10000005n, 1000n])).toBe(10000.01);
    expect(roundHalfAway([-5n, 1000n])).toBe(-0.01);
    expect(roundHalfAway([-4n, 1000n])).toBe(0);
    expect(Object.is(roundHalfAway([-4n, 1000n]), -0)).toBe(false);
  });

  it("rounds once above 2^53 hundredths, as Python's float(Fraction(h, 100)) does", () => {
    // h = 2^53 + 1 hundredths: Number(h) / 100 rounds h to 2^53 first, then divides.
    const h = 2n ** 53n + 1n;
    expect(roundHalfAway([h, 100n])).toBe(Number(`${h / 100n}.${h % 100n}`));
    expect(roundHalfAway([h, 100n])).not.toBe(Number(h) / 100);
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

describe("the window and the rows' text", () => {
  const one: KpiRows = {
    listings: [{ id: 1, price: "10", status: "active", listed_at: "2026-03-02 10:00:00.25+00" }],
    leads: [],
    purchases: [],
  };

  it("takes PostgreSQL's text timestamps as Python does", () => {
    expect(micros("2026-03-02 10:00:00.25+00")).toBe(micros("2026-03-02T10:00:00.250Z"));
    expect(micros("2026-03-02 12:00:00+02")).toBe(micros("2026-03-02T10:00:00Z"));
    expect(micros("2026-03-02T15:30:00+0530")).toBe(micros("2026-03-02T10:00:00Z"));
    expect(() => micros("2026-03-02")).toThrow(TypeError);
  });

  it("counts aged_days 0 as 0, not as the default 60", () => {
    const window = { from: "2026-03-01", to: "2026-03-31", now: "2026-03-03T00:00:00Z" };
    expect(computeKpis(one, { ...window, aged_days: 0 }).aged_inventory).toBe(1);
    expect(computeKpis(one, window).aged_inventory).toBe(0);
  });
});
