// The comparison of docs/kpis.md ("Comparison"), as the service makes it: which days a window is
// compared with, and each KPI's change. tests/vectors/comparisons.json holds the cases the
// service's Python and this file are both checked against.
import type { KpiChange, KpiMetrics } from "./api.js";
import { decimal, roundHalfAway, type Q } from "./compute.js";

export type Compare = "previous_period" | "previous_year";

const day = (text: string) => {
  const [y, m, d] = text.split("-").map(Number);
  return new Date(Date.UTC(y, m - 1, d));
};
const iso = (date: Date) => date.toISOString().slice(0, 10);
const plusDays = (date: Date, days: number) => new Date(date.getTime() + days * 86_400_000);
// The last day of the month before `date`'s.
const monthBefore = (date: Date) => new Date(Date.UTC(date.getUTCFullYear(), date.getUTCMonth(), 0));

function yearBefore(date: Date): Date {
  const [y, m, d] = [date.getUTCFullYear(), date.getUTCMonth(), date.getUTCDate()];
  // 29 February becomes 28 February.
  return new Date(Date.UTC(y - 1, m, m === 1 && d === 29 ? 28 : d));
}

/** The days `from`..`to` (YYYY-MM-DD, both included) are compared with. */
export function comparedDays(from: string, to: string, compare: Compare): [string, string] {
  const first = day(from);
  const last = day(to);
  if (compare === "previous_year") return [iso(yearBefore(first)), iso(yearBefore(last))];
  const sameMonth = first.getUTCFullYear() === last.getUTCFullYear() && first.getUTCMonth() === last.getUTCMonth();
  if (first.getUTCDate() === 1 && sameMonth) {
    // A month to date: the same days of the previous month, the last clipped to its end.
    const end = monthBefore(first);
    const clipped = Math.min(last.getUTCDate(), end.getUTCDate());
    return [iso(new Date(Date.UTC(end.getUTCFullYear(), end.getUTCMonth(), 1))), iso(new Date(Date.UTC(end.getUTCFullYear(), end.getUTCMonth(), clipped)))];
  }
  if (first.getUTCMonth() === 0 && first.getUTCDate() === 1 && first.getUTCFullYear() === last.getUTCFullYear()) {
    return [iso(yearBefore(first)), iso(yearBefore(last))]; // a year to date
  }
  const length = Math.round((last.getTime() - first.getTime()) / 86_400_000) + 1;
  return [iso(plusDays(first, -length)), iso(plusDays(first, -1))];
}

const KPIS: (keyof KpiMetrics)[] = [
  "total_listings",
  "total_value",
  "average_price",
  "scoring_rate",
  "average_score",
  "aged_inventory",
  "average_profit_per_unit",
  "lead_to_purchase_time",
  "conversion_rate",
  "active_buyers",
];

/**
 * Per KPI, the window's number less the compared one (exact: both have 2 decimals at most) and
 * that difference in percent of the compared number's size, 2 decimals halves away from zero;
 * percent null where the compared number is 0.
 */
export function kpiChanges(current: KpiMetrics, base: KpiMetrics): Record<keyof KpiMetrics, KpiChange> {
  const result = {} as Record<keyof KpiMetrics, KpiChange>;
  for (const name of KPIS) {
    const [a, b] = decimal(current[name]);
    const [c, e] = decimal(base[name]);
    const difference: Q = [a * e - c * b, b * e];
    const size: Q = [c < 0n ? -c : c, e];
    result[name] = {
      absolute: roundHalfAway(difference),
      percent: c === 0n ? null : roundHalfAway([difference[0] * 100n * size[1], difference[1] * size[0]]),
    };
  }
  return result;
}
