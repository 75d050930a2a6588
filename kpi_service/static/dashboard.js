// The KPI dashboard: cards live from the service through kpi-client.js (a WebSocket, server-sent
// events or polling, whichever gets through), charts from GET /api/kpi/history. No framework, no
// build step: this module is served as it is.
import { getKpiHistory, subscribe } from "./kpi-client.js";

const CURRENCY = "USD"; // the dealership's currency: the API's amounts carry none
const TOKEN_KEY = "kpi-dashboard-token";
const HISTORY_EVERY_MS = 30000; // live updates redraw the charts at most this often
const MAX_BUCKETS = 400; // the service's default KPI_MAX_BUCKETS

const KPIS = [
  { key: "total_listings", label: "Listings", hint: "Vehicles listed in the window", format: "int" },
  { key: "total_value", label: "Total value", hint: "Sum of their asking prices", format: "money" },
  { key: "average_price", label: "Average price", hint: "Mean asking price", format: "money" },
  { key: "aged_inventory", label: "Aged inventory", hint: "In stock longer than {aged} days", format: "int" },
  { key: "scoring_rate", label: "Scoring rate", hint: "Listings with a deal score", format: "pct" },
  { key: "average_score", label: "Average deal score", hint: "Out of 100", format: "score" },
  { key: "active_buyers", label: "Active buyers", hint: "With a lead or a purchase", format: "int" },
  { key: "conversion_rate", label: "Lead conversion", hint: "Leads that became a purchase", format: "pct" },
  { key: "lead_to_purchase_time", label: "Lead to purchase", hint: "Average time from lead to sale", format: "days" },
  { key: "average_profit_per_unit", label: "Profit per unit", hint: "Sale price minus acquisition cost", format: "money" },
];

// --- formatting for people -------------------------------------------------------------------

const numberFormat = (options) => new Intl.NumberFormat(undefined, options);
const formats = {
  int: numberFormat({ maximumFractionDigits: 0 }),
  money: numberFormat({ style: "currency", currency: CURRENCY, minimumFractionDigits: 2, maximumFractionDigits: 2 }),
  moneyShort: numberFormat({ style: "currency", currency: CURRENCY, notation: "compact", maximumFractionDigits: 1 }),
  pct: numberFormat({ style: "percent", maximumFractionDigits: 2 }),
  decimal: numberFormat({ maximumFractionDigits: 2 }),
  short: numberFormat({ notation: "compact", maximumFractionDigits: 1 }),
};

function format(kind, value, short = false) {
  switch (kind) {
    case "int": return short ? formats.short.format(value) : formats.int.format(value);
    case "money": return short ? formats.moneyShort.format(value) : formats.money.format(value);
    case "pct": return formats.pct.format(value / 100);
    case "days": return `${formats.decimal.format(value)} ${value === 1 ? "day" : "days"}`;
    default: return formats.decimal.format(value);
  }
}

const dayFormat = new Intl.DateTimeFormat(undefined, { day: "numeric", month: "short", year: "numeric", timeZone: "UTC" });
const formatDay = (iso) => dayFormat.format(new Date(`${iso}T00:00:00Z`));
const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });

// --- dates in the chosen zone ----------------------------------------------------------------

function todayIn(tz) {
  // en-CA writes dates as YYYY-MM-DD.
  return new Intl.DateTimeFormat("en-CA", { timeZone: tz, year: "numeric", month: "2-digit", day: "2-digit" }).format(new Date());
}

function addDays(iso, days) {
  const day = new Date(`${iso}T00:00:00Z`);
  day.setUTCDate(day.getUTCDate() + days);
  return day.toISOString().slice(0, 10);
}

const daysBetween = (first, last) => Math.round((Date.parse(last) - Date.parse(first)) / 86400000) + 1;

function bucketCount(first, last, interval) {
  const days = daysBetween(first, last);
  if (interval === "day") return days;
  if (interval === "week") return Math.ceil(days / 7) + 1;
  const [y1, m1] = first.split("-").map(Number);
  const [y2, m2] = last.split("-").map(Number);
  return (y2 - y1) * 12 + (m2 - m1) + 1;
}

// The period selector: the last N days to today, or this month so far, in the chosen zone.
function periodDays(period, tz) {
  const today = todayIn(tz);
  if (period === "month") return { from: `${today.slice(0, 8)}01`, to: today };
  return { from: addDays(today, 1 - Number(period)), to: today };
}

function periodOf(view) {
  if (!view.from || !view.to) return "custom";
  for (const period of ["7", "30", "90", "month"]) {
    const days = periodDays(period, view.tz);
    if (days.from === view.from && days.to === view.to) return period;
  }
  return "custom";
}

// --- elements --------------------------------------------------------------------------------

const $ = (id) => document.getElementById(id);
const el = {
  form: $("controls"), from: $("from"), to: $("to"), tz: $("tz"),
  cards: $("cards"), banner: $("banner"), status: $("status"), statusText: $("status-text"),
  updated: $("updated"), windowLabel: $("window-label"), historyNote: $("history-note"),
  dialog: $("token-dialog"), tokenForm: $("token-form"), tokenInput: $("token-input"),
  tokenReason: $("token-reason"), changeToken: $("change-token"), period: $("period"),
  downloadWindow: $("download-window"), downloadHistory: $("download-history"),
};
const SVG = "http://www.w3.org/2000/svg";

// --- state -----------------------------------------------------------------------------------

const state = {
  token: null,
  view: null, // {from, to, tz, interval}
  generation: 0, // bumped on every change of view or token: late answers of older ones are dropped
  subscription: null,
  transport: null, // "websocket", "sse" or "poll"
  historyAt: 0,
  history: null,
  body: null,
  // Per KPI, "higher" or "lower" is better: the OpenAPI document's x-better (docs/kpis.md).
  better: {},
  drawnTargets: "{}", // the targets the charts show, redrawn when they change
};

// --- rendering -------------------------------------------------------------------------------

function buildCards() {
  el.cards.replaceChildren();
  for (const kpi of KPIS) {
    const card = document.createElement("li");
    card.className = "card loading";
    card.dataset.kpi = kpi.key;
    const title = document.createElement("h3");
    title.id = `label-${kpi.key}`;
    title.textContent = kpi.label;
    const value = document.createElement("p");
    value.className = "value";
    value.setAttribute("aria-describedby", `hint-${kpi.key}`);
    value.textContent = "—";
    const change = document.createElement("p");
    change.className = "change";
    change.hidden = true;
    const hint = document.createElement("p");
    hint.className = "hint";
    hint.id = `hint-${kpi.key}`;
    hint.textContent = kpi.hint.replace("{aged}", "60");
    const chart = document.createElement("figure");
    chart.className = "chart";
    card.append(title, value, change, hint, chart);
    el.cards.append(card);
  }
}

function render(body, via) {
  state.body = body;
  const meta = body.meta;
  for (const kpi of KPIS) {
    const card = el.cards.querySelector(`[data-kpi="${kpi.key}"]`);
    const value = card.querySelector(".value");
    const text = format(kpi.format, body.metrics[kpi.key]);
    if (value.textContent !== text && !card.classList.contains("loading")) {
      card.classList.remove("changed");
      void card.offsetWidth; // restart the highlight
      card.classList.add("changed");
    }
    value.textContent = text;
    showChange(card.querySelector(".change"), kpi, body.comparison);
    const target = body.targets?.[kpi.key];
    card.dataset.target = target ? String(target.value) : "";
    card.classList.toggle("target-met", Boolean(target?.met));
    card.classList.toggle("target-missed", Boolean(target && !target.met));
    card.classList.remove("loading");
    card.classList.toggle("stale", meta.stale);
    card.querySelector(".hint").textContent = kpi.hint.replace("{aged}", String(meta.window.aged_days));
  }
  el.cards.setAttribute("aria-busy", "false");
  const targets = JSON.stringify(body.targets || {});
  if (state.history && targets !== state.drawnTargets) drawCharts(state.history, state.view.interval);
  el.cards.dataset.via = via;
  el.cards.dataset.computedAt = meta.computed_at;
  const computed = new Date(meta.computed_at);
  el.updated.textContent = `Computed ${timeFormat.format(computed)}`;
  el.updated.title = `${meta.computed_at}, in ${formats.decimal.format(meta.duration_ms)} ms${meta.cached ? ", from the cache" : ""}`;
  if (meta.stale) {
    showBanner(`The database is unavailable: these are the last known figures, computed at ${timeFormat.format(computed)}.`, "warning");
    setMode("stale", "Stale");
  } else {
    hideBanner();
    showTransport();
  }
}

// The change against the compared window: an arrow, the percent, coloured by the KPI's direction.
function showChange(element, kpi, comparison) {
  const change = comparison?.change?.[kpi.key];
  element.hidden = !change;
  if (!change) return;
  const arrow = change.absolute > 0 ? "▲" : change.absolute < 0 ? "▼" : "▬";
  const percent = change.percent === null ? "—" : formats.pct.format(Math.abs(change.percent) / 100);
  const better = state.better[kpi.key] || "higher";
  const good = better === "higher" ? change.absolute > 0 : change.absolute < 0;
  element.dataset.direction = change.absolute > 0 ? "up" : change.absolute < 0 ? "down" : "flat";
  element.dataset.tone = change.absolute === 0 ? "same" : good ? "better" : "worse";
  element.dataset.percent = change.percent === null ? "" : String(change.percent);
  element.textContent = `${arrow} ${percent}`;
  const period = comparison.compare === "previous_year" ? "the same days a year before" : "the previous period";
  element.title = `${change.absolute > 0 ? "+" : ""}${format(kpi.format, change.absolute)} against ${period} ` +
    `(${formatDay(comparison.from)} – ${formatDay(comparison.to)}); ${better} is better`;
}

// What the status pill says for each way the figures arrive (kpi-client.js's onStatus).
const TRANSPORTS = { websocket: ["live", "Live"], sse: ["live", "Live"], poll: ["polling", "Polling"] };

function showTransport() {
  if (state.transport && state.body) setMode(...TRANSPORTS[state.transport]);
}

function setMode(mode, text) {
  el.status.dataset.mode = mode;
  if (el.statusText.textContent !== text) el.statusText.textContent = text;
}

function showBanner(message, kind = "error") {
  el.banner.textContent = message;
  el.banner.dataset.kind = kind;
  el.banner.hidden = false;
}

function hideBanner() {
  el.banner.hidden = true;
  el.banner.textContent = "";
}

function describeWindow(view, agedDays) {
  const from = view.from ? formatDay(view.from) : "the beginning";
  const to = view.to ? formatDay(view.to) : "now";
  return `${from} – ${to} · ${view.tz.replaceAll("_", " ")} · aged after ${agedDays} days`;
}

// --- charts: one small bar chart per KPI, plain SVG ------------------------------------------

function historyRange(view) {
  const last = view.to || todayIn(view.tz);
  let first = view.from || addDays(last, -29);
  if (first > last) first = last;
  return { first, last };
}

function drawCharts(series, interval) {
  state.drawnTargets = JSON.stringify(state.body?.targets || {});
  for (const kpi of KPIS) {
    const figure = el.cards.querySelector(`[data-kpi="${kpi.key}"] .chart`);
    figure.replaceChildren();
    if (series.length === 0) continue;
    const values = series.map((bucket) => bucket.metrics[kpi.key]);
    const top = document.createElement("div");
    top.className = "chart-max";
    top.setAttribute("aria-hidden", "true");
    top.textContent = `max ${format(kpi.format, Math.max(...values), true)}`;
    const axis = document.createElement("figcaption");
    axis.setAttribute("aria-hidden", "true"); // the chart's own label says it all
    const first = document.createElement("span");
    first.textContent = formatDay(series[0].start);
    const last = document.createElement("span");
    last.textContent = formatDay(series[series.length - 1].end);
    axis.append(first, last);
    figure.append(top, chart(kpi, series, values, interval, state.body?.targets?.[kpi.key]), axis);
  }
}

function chart(kpi, series, values, interval, target) {
  // Drawn in a 300 x 60 box stretched to the card's width: no text inside, so nothing distorts.
  const width = 300;
  const height = 60;
  const goal = target ? [target.value] : [];
  const max = Math.max(0, ...values, ...goal);
  const min = Math.min(0, ...values, ...goal);
  const span = max - min || 1;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  const highest = values.indexOf(Math.max(...values));
  svg.setAttribute(
    "aria-label",
    `${kpi.label} by ${interval}: from ${format(kpi.format, values[0])} to ${format(kpi.format, values[values.length - 1])}, ` +
      `highest ${format(kpi.format, values[highest])} (${formatDay(series[highest].start)}).`,
  );
  const y = (v) => (height - 1) * (1 - (v - min) / span);
  const baseline = document.createElementNS(SVG, "line");
  for (const [name, value] of [["x1", 0], ["x2", width], ["y1", y(0)], ["y2", y(0)]]) baseline.setAttribute(name, String(value));
  baseline.setAttribute("class", "baseline");
  baseline.setAttribute("vector-effect", "non-scaling-stroke");
  svg.append(baseline);
  const step = width / values.length;
  const gap = step > 4 ? Math.min(2, step * 0.2) : 0;
  values.forEach((v, i) => {
    const bar = document.createElementNS(SVG, "rect");
    const y0 = y(0);
    const y1 = y(v);
    bar.setAttribute("x", String(i * step + gap / 2));
    bar.setAttribute("width", String(Math.max(step - gap, 0.5)));
    bar.setAttribute("y", String(Math.min(y0, y1)));
    bar.setAttribute("height", String(Math.max(Math.abs(y0 - y1), v === 0 ? 0 : 1)));
    bar.setAttribute("class", i === values.length - 1 ? "bar last" : "bar");
    const tip = document.createElementNS(SVG, "title");
    const bucket = series[i];
    const days = bucket.start === bucket.end ? formatDay(bucket.start) : `${formatDay(bucket.start)} – ${formatDay(bucket.end)}`;
    tip.textContent = `${days}: ${format(kpi.format, v)}`;
    bar.append(tip);
    svg.append(bar);
  });
  if (target) {
    // The owner's target, across the chart (it applies to the window, each bar is a bucket of it).
    const line = document.createElementNS(SVG, "line");
    for (const [name, value] of [["x1", 0], ["x2", width], ["y1", y(target.value)], ["y2", y(target.value)]]) line.setAttribute(name, String(value));
    line.setAttribute("class", "target");
    line.setAttribute("vector-effect", "non-scaling-stroke");
    line.dataset.value = String(target.value);
    const tip = document.createElementNS(SVG, "title");
    tip.textContent = `Target: ${format(kpi.format, target.value)}`;
    line.append(tip);
    svg.append(line);
  }
  return svg;
}

// --- loading ---------------------------------------------------------------------------------

async function loadHistory(generation) {
  const { first, last } = historyRange(state.view);
  const interval = state.view.interval;
  const count = bucketCount(first, last, interval);
  if (count > MAX_BUCKETS) {
    el.historyNote.textContent = `Too many ${interval}s for the charts (${count}, at most ${MAX_BUCKETS}): choose a longer interval.`;
    drawCharts([], interval);
    return;
  }
  state.historyAt = Date.now();
  try {
    const body = await getKpiHistory({ ...state.view, from: first, to: last }, { token: state.token });
    if (generation !== state.generation) return;
    state.history = body.series;
    drawCharts(body.series, interval);
    el.historyNote.textContent = `Charts: ${formatDay(first)} – ${formatDay(last)}, one bar per ${interval}; the last bar is highlighted.`;
  } catch (error) {
    if (generation !== state.generation) return;
    if (error.status === 401) throw error;
    el.historyNote.textContent = `Charts unavailable: ${error.message}`;
  }
}

// --- live updates ----------------------------------------------------------------------------

function follow(view, generation) {
  // With both dates, the previous period too (an open window has none).
  const compare = view.from && view.to ? { compare: "previous_period" } : {};
  state.subscription = subscribe({ from: view.from, to: view.to, tz: view.tz, ...compare }, (update) => {
    if (generation !== state.generation) return;
    const first = state.body === null;
    render(update, update.source);
    if (first) el.windowLabel.textContent = describeWindow(view, update.meta.window.aged_days);
    if (Date.now() - state.historyAt > HISTORY_EVERY_MS) loadHistory(generation).catch(handleError);
  }, {
    token: () => state.token,
    onStatus: (transport) => {
      state.transport = transport;
      if (!["stale", "error"].includes(el.status.dataset.mode)) showTransport();
    },
    onError: (error) => {
      if (generation === state.generation) handleError(error);
    },
  });
}

// --- downloads: the API's own CSV of the window and of its history --------------------------

async function download(path, params) {
  const query = new URLSearchParams({ format: "csv" });
  for (const [name, value] of Object.entries(params)) if (value) query.set(name, value);
  const response = await fetch(`${path}?${query}`, { headers: { Authorization: `Bearer ${state.token}` } });
  if (!response.ok) {
    const body = await response.json().catch(() => null);
    throw Object.assign(new Error(body?.message || `The KPI service answered ${response.status}.`), { status: response.status });
  }
  const name = /filename="([^"]+)"/.exec(response.headers.get("Content-Disposition") || "")?.[1] || "kpi.csv";
  const link = document.createElement("a");
  link.href = URL.createObjectURL(await response.blob());
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

function downloadWindow() {
  const view = state.view;
  const compare = view.from && view.to ? "previous_period" : null;
  return download("api/kpi", { from: view.from, to: view.to, tz: view.tz, compare });
}

function downloadHistory() {
  const { first, last } = historyRange(state.view);
  return download("api/kpi/history", { from: first, to: last, tz: state.view.tz, interval: state.view.interval });
}

async function loadDirections() {
  try {
    const response = await fetch("api/openapi.json");
    const properties = (await response.json()).components.schemas.KpiValues.properties;
    for (const kpi of KPIS) state.better[kpi.key] = properties[kpi.key]["x-better"] || "higher";
  } catch {
    // Without the document every KPI colours as higher-is-better until the next load.
  }
  if (state.body) render(state.body, el.cards.dataset.via);
}

// --- errors and the token --------------------------------------------------------------------

function handleError(error) {
  if (error.status === 401) return authRequired(error.message);
  // kpi-client.js keeps trying by itself after anything but a refusal (a 4xx).
  const message = error.status === 503
    ? `${error.message} The figures will appear as soon as the service can compute them.`
    : error.status === 0 ? `${error.message} Retrying…` : error.message;
  showBanner(message);
  setMode("error", error.status === 400 ? "Invalid window" : "Error");
}

function authRequired(message) {
  stop();
  state.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  setMode("auth", "Token needed");
  askForToken(`The service refused the token (${message}). Paste a new one.`);
}

function askForToken(reason) {
  el.tokenReason.textContent = reason;
  el.tokenInput.value = "";
  if (!el.dialog.open) el.dialog.showModal();
  el.tokenInput.focus();
}

function stop() {
  state.generation += 1;
  state.subscription?.close();
  state.subscription = null;
  state.transport = null;
}

// --- the view: the form and the URL's fragment -----------------------------------------------

function readForm() {
  return {
    from: el.from.value || null,
    to: el.to.value || null,
    tz: el.tz.value,
    interval: new FormData(el.form).get("interval") || "day",
  };
}

function writeForm(view) {
  el.period.value = periodOf(view);
  el.from.value = view.from || "";
  el.to.value = view.to || "";
  el.tz.value = view.tz;
  el.form.querySelector(`input[name="interval"][value="${view.interval}"]`).checked = true;
}

function fillZones(selected) {
  let zones = [];
  try {
    zones = Intl.supportedValuesOf("timeZone");
  } catch {
    zones = [];
  }
  zones = Array.from(new Set(["UTC", selected, ...zones]));
  el.tz.replaceChildren(...zones.map((zone) => new Option(zone.replaceAll("_", " "), zone)));
  el.tz.value = selected;
}

function saveViewInUrl(view) {
  // The view goes in the fragment, so that a reload or a bookmark keeps it; the token never does.
  const params = new URLSearchParams();
  for (const name of ["from", "to", "tz", "interval"]) if (view[name]) params.set(name, view[name]);
  history.replaceState(null, "", `${location.pathname}${location.search}#${params}`);
}

function show(view) {
  stop();
  const generation = state.generation;
  // A range too long for daily bars gets weekly (or monthly) ones instead of an error.
  const { first, last } = historyRange(view);
  if (view.interval === "day" && bucketCount(first, last, "day") > MAX_BUCKETS) view.interval = "week";
  if (view.interval === "week" && bucketCount(first, last, "week") > MAX_BUCKETS) view.interval = "month";
  writeForm(view);
  state.view = view;
  state.body = null;
  state.historyAt = 0;
  saveViewInUrl(view);
  el.windowLabel.textContent = describeWindow(view, 60);
  el.cards.setAttribute("aria-busy", "true");
  for (const card of el.cards.children) card.classList.add("loading");
  setMode("loading", "Loading…");
  hideBanner();
  follow(view, generation);
}

function start() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const given = fragment.get("token");
  if (given) sessionStorage.setItem(TOKEN_KEY, given);
  state.token = sessionStorage.getItem(TOKEN_KEY);

  const browserZone = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
  const tz = fragment.get("tz") || browserZone;
  fillZones(tz);
  const today = todayIn(tz);
  const view = {
    from: fragment.has("from") ? fragment.get("from") || null : addDays(today, -29),
    to: fragment.has("to") ? fragment.get("to") || null : today,
    tz,
    interval: ["day", "week", "month"].includes(fragment.get("interval")) ? fragment.get("interval") : "day",
  };
  buildCards();
  writeForm(view);
  state.view = view;
  saveViewInUrl(view); // drops the token from the address bar and the history

  el.form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (state.token) show(readForm());
  });
  for (const radio of el.form.querySelectorAll('input[name="interval"]')) {
    radio.addEventListener("change", () => {
      if (!state.token) return;
      state.view = { ...state.view, interval: radio.value };
      saveViewInUrl(state.view);
      loadHistory(state.generation).catch(handleError);
    });
  }
  el.period.addEventListener("change", () => {
    if (el.period.value === "custom") return el.from.focus();
    const days = periodDays(el.period.value, el.tz.value);
    el.from.value = days.from;
    el.to.value = days.to;
    if (state.token) show(readForm());
  });
  for (const input of [el.from, el.to]) input.addEventListener("input", () => (el.period.value = "custom"));
  el.downloadWindow.addEventListener("click", () => downloadWindow().catch(handleError));
  el.downloadHistory.addEventListener("click", () => downloadHistory().catch(handleError));
  loadDirections();
  el.changeToken.addEventListener("click", () => askForToken("Paste the access token to use from now on."));
  el.tokenForm.addEventListener("submit", () => {
    const value = el.tokenInput.value.trim().replace(/^Bearer\s+/i, "");
    if (!value) return;
    state.token = value;
    sessionStorage.setItem(TOKEN_KEY, value);
    show(readForm());
  });
  el.dialog.addEventListener("cancel", (event) => {
    if (!state.token) event.preventDefault(); // nothing to show without one
  });

  if (state.token) show(view);
  else {
    setMode("auth", "Token needed");
    askForToken("Paste the access token the main application gave you.");
  }
}

start();
