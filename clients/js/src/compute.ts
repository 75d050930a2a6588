// The ten KPIs of docs/kpis.md computed from rows the application already holds: the fallback
// while the service fails. Exact arithmetic (BigInt fractions, microsecond instants) and one
// rounding, half away from zero, as the service does; tests/vectors/kpis.json holds the cases
// the service's SQL and this file are both checked against.
import type { KpiMetrics, KpiParams } from "./api.js";

type Decimalish = string | number;
type Instant = string | Date;

export interface ListingRow {
  id: number | string;
  price: Decimalish;
  acquisition_cost?: Decimalish | null;
  status: "active" | "pending" | "sold" | "withdrawn" | string;
  listed_at: Instant;
  sold_at?: Instant | null;
  score?: Decimalish | null;
}

export interface LeadRow {
  id: number | string;
  buyer_id: number | string;
  created_at: Instant;
}

export interface PurchaseRow {
  id: number | string;
  listing_id: number | string;
  buyer_id: number | string;
  lead_id?: number | string | null;
  sale_price: Decimalish;
  purchased_at: Instant;
}

export interface KpiRows {
  listings: ListingRow[];
  leads: LeadRow[];
  purchases: PurchaseRow[];
}

/** A window as the API takes it, and the instant "now" (by default, the clock's). */
export interface KpiWindow extends KpiParams {
  now?: Instant;
}

/** A fraction of BigInts, denominator positive. */
export type Q = [bigint, bigint];

const ZERO: Q = [0n, 1n];
const add = ([a, b]: Q, [c, e]: Q): Q => [a * e + c * b, b * e];
const sub = ([a, b]: Q, [c, e]: Q): Q => [a * e - c * b, b * e];

export function decimal(value: Decimalish): Q {
  const text = typeof value === "number" ? numberText(value) : value.trim();
  const match = /^([+-]?)(\d*)(?:\.(\d*))?(?:e([+-]?\d+))?$/i.exec(text);
  if (!match || (match[2] === "" && !match[3])) throw new TypeError(`not a decimal number: ${value}`);
  const [, sign, whole, fraction = "", exponent = "0"] = match;
  let numerator = BigInt((whole || "0") + fraction) * (sign === "-" ? -1n : 1n);
  let denominator = 10n ** BigInt(fraction.length);
  const shift = Number(exponent);
  if (shift >= 0) numerator *= 10n ** BigInt(shift);
  else denominator *= 10n ** BigInt(-shift);
  return [numerator, denominator];
}

function numberText(value: number): string {
  if (!Number.isFinite(value)) throw new TypeError(`not a finite number: ${value}`);
  return String(value);
}

/**
 * Microseconds since the epoch: ISO strings keep their microseconds, Dates have milliseconds.
 * PostgreSQL's text form ("2026-03-01 10:00:00.5+00": a space, an hours-only offset) is taken as
 * Python's datetime.fromisoformat takes it, since rows often come straight from a query.
 */
export function micros(value: Instant): bigint {
  if (value instanceof Date) return BigInt(value.getTime()) * 1000n;
  const match = /^(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}(?::\d{2})?)(?:\.(\d+))?(Z|[+-]\d{2}(?::?\d{2})?)?$/i.exec(
    value.trim(),
  );
  if (!match) throw new TypeError(`not an ISO instant: ${value}`);
  const [, day, time, fraction = "", zone = "Z"] = match;
  // Date.parse wants the offset as ±HH:MM.
  const offset = zone.toUpperCase() === "Z" ? "Z" : `${zone.slice(0, 3)}:${zone.slice(3).replace(":", "") || "00"}`;
  const ms = Date.parse(`${day}T${time}${offset}`);
  if (Number.isNaN(ms)) throw new TypeError(`not an ISO instant: ${value}`);
  return BigInt(ms) * 1000n + BigInt((fraction + "000000").slice(0, 6));
}

/** Rounded to 2 decimals, halves away from zero (the service's rounding). */
export function roundHalfAway([numerator, denominator]: Q): number {
  const negative = numerator < 0n !== denominator < 0n;
  const n = numerator < 0n ? -numerator : numerator;
  const d = denominator < 0n ? -denominator : denominator;
  const hundredths = (n * 200n + d) / (2n * d); // floor(|v| * 100 + 1/2)
  // Through the decimal text: Number(hundredths) / 100 rounds twice above 2^53 hundredths (off
  // by a cent), where parsing "h.hh" rounds once, as Python's float(Fraction(h, 100)) does.
  const text = `${hundredths / 100n}.${String(hundredths % 100n).padStart(2, "0")}`;
  const value = Number(text);
  return negative && hundredths !== 0n ? -value : value;
}

const mean = (values: Q[]) => (values.length ? roundHalfAway(divide(values.reduce(add, ZERO), values.length)) : 0);
const ratio = (part: number, whole: number) => (whole ? roundHalfAway([BigInt(100 * part), BigInt(whole)]) : 0);
const divide = ([a, b]: Q, n: number | bigint): Q => [a, b * BigInt(n)];

// --- windows: calendar days in a time zone -----------------------------------------------------

const formats = new Map<string, Intl.DateTimeFormat>();

/** The zone's offset from UTC at `ms`, in milliseconds (whole seconds). */
function offset(ms: number, zone: string): number {
  let format = formats.get(zone);
  if (!format) {
    format = new Intl.DateTimeFormat("en-US", {
      timeZone: zone,
      hourCycle: "h23",
      year: "numeric",
      month: "numeric",
      day: "numeric",
      hour: "numeric",
      minute: "numeric",
      second: "numeric",
      era: "short",
    });
    formats.set(zone, format);
  }
  const part: Record<string, string> = {};
  for (const { type, value } of format.formatToParts(ms)) part[type] = value;
  const year = part.era === "BC" || part.era === "B" ? 1 - Number(part.year) : Number(part.year);
  const local = Date.UTC(year, Number(part.month) - 1, Number(part.day), Number(part.hour), Number(part.minute), Number(part.second));
  return local - Math.floor(ms / 1000) * 1000;
}

/**
 * 00:00 of `day` (YYYY-MM-DD) in `zone`, in ms since the epoch. Where 00:00 does not exist the
 * day starts at its first instant; where it happens twice, at the first (docs/kpis.md).
 */
export function midnight(day: string, zone: string): number {
  const [y, m, d] = day.split("-").map(Number);
  const wall = Date.UTC(y, m - 1, d); // the wall-clock time read as if it were UTC
  const offsets = new Set([offset(wall - 86400000, zone), offset(wall, zone), offset(wall + 86400000, zone)]);
  const exact = [...offsets].map((o) => wall - o).filter((t) => offset(t, zone) === wall - t);
  if (exact.length) return Math.min(...exact);
  // A gap: the first instant whose wall clock is at or after 00:00, i.e. the change itself.
  let before = wall - Math.max(...offsets); // wall clock still on the day before
  let after = wall - Math.min(...offsets);
  while (after - before > 1) {
    const middle = Math.floor((before + after) / 2);
    if (middle + offset(middle, zone) >= wall) after = middle;
    else before = middle;
  }
  return after;
}

function nextDay(day: string): string {
  const [y, m, d] = day.split("-").map(Number);
  return new Date(Date.UTC(y, m - 1, d + 1)).toISOString().slice(0, 10);
}

/** The window's [start, end) and T = min(end, now), in microseconds; null is an open side. */
export function windowInstants(window: KpiWindow): { start: bigint | null; end: bigint | null; asOf: bigint } {
  const zone = window.tz || "UTC";
  const start = window.from ? BigInt(midnight(window.from, zone)) * 1000n : null;
  const end = window.to ? BigInt(midnight(nextDay(window.to), zone)) * 1000n : null;
  const now = micros(window.now ?? new Date());
  return { start, end, asOf: end !== null && end < now ? end : now };
}

// --- the ten definitions -----------------------------------------------------------------------

const DAY_US = 86_400_000_000n;

/** The ten KPIs of the window over the given rows, as the service computes them. */
export function computeKpis(rows: KpiRows, window: KpiWindow = {}): KpiMetrics {
  const { start, end, asOf } = windowInstants(window);
  // The service's defaults are its settings (KPI_AGED_DAYS, KPI_TIMEZONE): 60 and UTC unless set.
  const agedDays = BigInt(window.aged_days ?? 60); // 0 is a valid age: every listing in stock
  const inWindow = (at: Instant) => {
    const t = micros(at);
    return (start === null || t >= start) && (end === null || t < end);
  };
  const listings = rows.listings.filter((x) => inWindow(x.listed_at));
  const scores = listings.filter((x) => x.score !== null && x.score !== undefined).map((x) => decimal(x.score!));
  const byListing = new Map(rows.listings.map((x) => [String(x.id), x]));
  const leadsById = new Map(rows.leads.map((x) => [String(x.id), x]));
  const purchases = rows.purchases.filter((p) => inWindow(p.purchased_at));
  const leads = rows.leads.filter((x) => inWindow(x.created_at));
  refuseDanglingReferences(rows, byListing, leadsById);
  const purchasedLeads = new Set(rows.purchases.filter((p) => p.lead_id != null).map((p) => String(p.lead_id)));
  const agedBefore = asOf - agedDays * DAY_US;
  const prices = listings.map((x) => decimal(x.price));

  const profits: Q[] = [];
  const leadTimes: Q[] = [];
  for (const p of purchases) {
    const cost = byListing.get(String(p.listing_id))!.acquisition_cost;
    if (cost !== null && cost !== undefined) profits.push(sub(decimal(p.sale_price), decimal(cost)));
    if (p.lead_id != null) {
      const lead = leadsById.get(String(p.lead_id))!;
      leadTimes.push([micros(p.purchased_at) - micros(lead.created_at), DAY_US]);
    }
  }

  return {
    total_listings: listings.length,
    average_price: mean(prices),
    total_value: roundHalfAway(prices.reduce(add, ZERO)),
    scoring_rate: ratio(scores.length, listings.length),
    average_score: mean(scores),
    aged_inventory: rows.listings.filter(
      (x) =>
        x.status !== "withdrawn" &&
        micros(x.listed_at) < agedBefore &&
        (x.sold_at === null || x.sold_at === undefined || micros(x.sold_at) > asOf),
    ).length,
    average_profit_per_unit: mean(profits),
    lead_to_purchase_time: mean(leadTimes),
    conversion_rate: ratio(leads.filter((x) => purchasedLeads.has(String(x.id))).length, leads.length),
    active_buyers: new Set([...leads.map((x) => String(x.buyer_id)), ...purchases.map((p) => String(p.buyer_id))]).size,
  };
}

/** Thrown when a purchase names a listing or lead that `rows` lacks. */
export class DanglingReferenceError extends Error {
  override readonly name = "DanglingReferenceError";
}

// Skipping such a purchase would quietly change the numbers (a window's rows alone lack the
// earlier leads and listings its purchases name): the service reads whole tables, so must this.
function refuseDanglingReferences(
  rows: KpiRows,
  listings: Map<string, ListingRow>,
  leads: Map<string, LeadRow>,
): void {
  for (const p of rows.purchases) {
    if (!listings.has(String(p.listing_id)))
      throw new DanglingReferenceError(`purchase ${p.id} names listing ${p.listing_id}, which is not in rows.listings`);
    if (p.lead_id != null && !leads.has(String(p.lead_id)))
      throw new DanglingReferenceError(`purchase ${p.id} names lead ${p.lead_id}, which is not in rows.leads`);
  }
}
