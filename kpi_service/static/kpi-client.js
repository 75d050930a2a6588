// Built from clients/js/src/browser.ts by clients/js/scripts/build-static.mjs. Do not edit:
// change the package and run `npm run build:static` in clients/js.

// src/compute.ts
function decimal(value) {
  const text = typeof value === "number" ? numberText(value) : value.trim();
  const match = /^([+-]?)(\d*)(?:\.(\d*))?(?:e([+-]?\d+))?$/i.exec(text);
  if (!match || match[2] === "" && !match[3]) throw new TypeError(`not a decimal number: ${value}`);
  const [, sign, whole, fraction = "", exponent = "0"] = match;
  let numerator = BigInt((whole || "0") + fraction) * (sign === "-" ? -1n : 1n);
  let denominator = 10n ** BigInt(fraction.length);
  const shift = Number(exponent);
  if (shift >= 0) numerator *= 10n ** BigInt(shift);
  else denominator *= 10n ** BigInt(-shift);
  return [numerator, denominator];
}
function numberText(value) {
  if (!Number.isFinite(value)) throw new TypeError(`not a finite number: ${value}`);
  return String(value);
}
function roundHalfAway([numerator, denominator]) {
  const negative = numerator < 0n !== denominator < 0n;
  const n = numerator < 0n ? -numerator : numerator;
  const d = denominator < 0n ? -denominator : denominator;
  const hundredths = (n * 200n + d) / (2n * d);
  const text = `${hundredths / 100n}.${String(hundredths % 100n).padStart(2, "0")}`;
  const value = Number(text);
  return negative && hundredths !== 0n ? -value : value;
}

// src/compare.ts
var day = (text) => {
  const [y, m, d] = text.split("-").map(Number);
  return new Date(Date.UTC(y, m - 1, d));
};
var iso = (date) => date.toISOString().slice(0, 10);
var plusDays = (date, days) => new Date(date.getTime() + days * 864e5);
var monthBefore = (date) => new Date(Date.UTC(date.getUTCFullYear(), date.getUTCMonth(), 0));
function yearBefore(date) {
  const [y, m, d] = [date.getUTCFullYear(), date.getUTCMonth(), date.getUTCDate()];
  return new Date(Date.UTC(y - 1, m, m === 1 && d === 29 ? 28 : d));
}
function comparedDays(from, to, compare) {
  const first = day(from);
  const last = day(to);
  if (compare === "previous_year") return [iso(yearBefore(first)), iso(yearBefore(last))];
  const sameMonth = first.getUTCFullYear() === last.getUTCFullYear() && first.getUTCMonth() === last.getUTCMonth();
  if (first.getUTCDate() === 1 && sameMonth) {
    const end = monthBefore(first);
    const clipped = Math.min(last.getUTCDate(), end.getUTCDate());
    return [iso(new Date(Date.UTC(end.getUTCFullYear(), end.getUTCMonth(), 1))), iso(new Date(Date.UTC(end.getUTCFullYear(), end.getUTCMonth(), clipped)))];
  }
  if (first.getUTCMonth() === 0 && first.getUTCDate() === 1 && first.getUTCFullYear() === last.getUTCFullYear()) {
    return [iso(yearBefore(first)), iso(yearBefore(last))];
  }
  const length = Math.round((last.getTime() - first.getTime()) / 864e5) + 1;
  return [iso(plusDays(first, -length)), iso(plusDays(first, -1))];
}
var KPIS = [
  "total_listings",
  "total_value",
  "average_price",
  "scoring_rate",
  "average_score",
  "aged_inventory",
  "average_profit_per_unit",
  "lead_to_purchase_time",
  "conversion_rate",
  "active_buyers"
];
function kpiChanges(current, base) {
  const result = {};
  for (const name of KPIS) {
    const [a, b] = decimal(current[name]);
    const [c, e] = decimal(base[name]);
    const difference = [a * e - c * b, b * e];
    const size = [c < 0n ? -c : c, e];
    result[name] = {
      absolute: roundHalfAway(difference),
      percent: c === 0n ? null : roundHalfAway([difference[0] * 100n * size[1], difference[1] * size[0]])
    };
  }
  return result;
}

// src/api.ts
var KpiApiError = class extends Error {
  constructor(kind, status, message, body = null, options) {
    super(message, options);
    this.kind = kind;
    this.status = status;
    this.body = body;
  }
  kind;
  status;
  body;
  name = "KpiApiError";
  /** Per-parameter problems of a 400 ({from: ["Not a valid date."]}), else {}. */
  get errors() {
    return this.body?.errors ?? {};
  }
  /** The service failed (unreachable, timed out, 5xx), as opposed to refusing the request. */
  get isOutage() {
    return this.kind === "unreachable" || this.kind === "timeout" || this.status >= 500;
  }
};
var WINDOW_PARAMS = ["from", "to", "tz", "aged_days", "compare"];
var KEPT_WINDOWS = 32;
function windowQuery(params = {}, extra = {}) {
  const query = new URLSearchParams();
  for (const name of WINDOW_PARAMS) {
    const value = params[name];
    if (value !== void 0 && value !== null && value !== "") query.set(name, String(value));
  }
  for (const [name, value] of Object.entries(extra)) if (value) query.set(name, value);
  return query;
}
function describe(status, body) {
  let message = body?.message || `The KPI service answered ${status}.`;
  if (body?.errors) {
    const problems = Object.entries(body.errors).map(([field, p]) => `${field}: ${[].concat(p).join(" ")}`);
    message += " " + problems.join("; ");
  }
  return message;
}
function createKpiApi(options) {
  const root = String(options.baseUrl);
  const base = new URL(root.endsWith("/") ? root : `${root}/`, globalThis.location?.href);
  const o = {
    getToken: options.getToken,
    timeoutMs: options.timeoutMs ?? 1e4,
    // a request answered later counts as a failure of the service
    pollMs: options.pollMs ?? 1e4,
    // the server's cache makes faster polling pointless
    minDelayMs: options.minDelayMs ?? 1e3,
    maxDelayMs: options.maxDelayMs ?? 3e4
  };
  const kept = options.etags ?? /* @__PURE__ */ new Map();
  const url = (path) => new URL(path, base).href;
  async function request(href, { method = "GET", headers = {}, signal } = {}) {
    if (signal?.aborted) throw new KpiApiError("aborted", 0, "The request was cancelled.");
    const controller = new AbortController();
    let timedOut = false;
    const abort = () => controller.abort();
    signal?.addEventListener("abort", abort);
    const timer = setTimeout(() => {
      timedOut = true;
      controller.abort();
    }, o.timeoutMs);
    const gone = () => signal?.aborted ? new KpiApiError("aborted", 0, "The request was cancelled.") : timedOut ? new KpiApiError("timeout", 0, "The KPI service did not answer in time.") : new KpiApiError("unreachable", 0, "The KPI service cannot be reached.");
    try {
      let token;
      try {
        token = await o.getToken?.();
      } catch (cause) {
        throw new KpiApiError("auth", 0, `No token: ${cause instanceof Error ? cause.message : String(cause)}`, null, {
          cause
        });
      }
      if (signal?.aborted) throw gone();
      let response;
      try {
        response = await fetch(href, {
          method,
          headers: { Accept: "application/json", ...token ? { Authorization: `Bearer ${token}` } : {}, ...headers },
          cache: "no-store",
          // the ETags are handled here, with the body they belong to
          signal: controller.signal
        });
      } catch {
        throw gone();
      }
      if (response.status === 304) return { response, body: null };
      let body = null;
      try {
        body = await response.json();
      } catch {
        if (controller.signal.aborted) throw gone();
      }
      if (!response.ok) {
        const envelope = body;
        const kind = response.status === 401 ? "auth" : "http";
        throw new KpiApiError(kind, response.status, describe(response.status, envelope), envelope);
      }
      return { response, body };
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener("abort", abort);
    }
  }
  async function getKpiMetrics2(params = {}, { signal } = {}) {
    const href = url(`api/kpi?${windowQuery(params)}`);
    const last = kept.get(href);
    const { response, body } = await request(href, { headers: last ? { "If-None-Match": last.etag } : {}, signal });
    if (response.status === 304 && last) return last.body;
    if (!body) throw new KpiApiError("http", response.status, `The KPI service answered ${response.status} without a body.`);
    const etag = response.headers.get("ETag");
    kept.delete(href);
    if (etag) kept.set(href, { etag, body });
    if (kept.size > KEPT_WINDOWS) kept.delete(kept.keys().next().value);
    return body;
  }
  async function getKpiHistory2(params, { signal } = {}) {
    const query = windowQuery(params, { interval: params.interval });
    return (await request(url(`api/kpi/history?${query}`), { signal })).body;
  }
  async function local(params, error, fallback) {
    if (typeof fallback !== "function") return null;
    const started = performance.now();
    const metrics = await fallback({ ...params }, error);
    let comparison;
    if (params.compare && params.from && params.to) {
      const [from, to] = comparedDays(params.from, params.to, params.compare);
      const { compare: _omitted, ...window } = params;
      const base2 = await fallback({ ...window, from, to }, error);
      comparison = { compare: params.compare, from, to, metrics: base2, change: kpiChanges(metrics, base2) };
    }
    return {
      metrics,
      ...comparison ? { comparison } : {},
      meta: {
        computed_at: (/* @__PURE__ */ new Date()).toISOString(),
        cached: false,
        stale: false,
        local: true,
        duration_ms: Math.round((performance.now() - started) * 100) / 100,
        window: Object.fromEntries(windowQuery(params))
      },
      source: "local"
    };
  }
  function subscribe2(params, onUpdate, options2 = {}) {
    const given = { ...params };
    const stopped = new AbortController();
    let closed = false;
    let stream = null;
    let transport = null;
    let reconnectTimer = null;
    let pollTimer = null;
    let polls = 0;
    let attempt = 0;
    let noWebSocket = false;
    let lastEventId = null;
    let shown = null;
    const report = (error) => {
      if (!closed) options2.onError?.(error);
    };
    function announce(next) {
      if (closed || transport === next) return;
      transport = next;
      options2.onStatus?.(next);
    }
    function emit(body, source) {
      if (closed) return;
      if (source !== "local" && shown && shown.source !== "local") {
        if (shown.body === body) return;
        if (body.meta.computed_at < shown.body.meta.computed_at) return;
      }
      shown = { body, source };
      const { comparison, targets } = body;
      onUpdate({ metrics: body.metrics, ...comparison ? { comparison } : {}, ...targets ? { targets } : {}, meta: body.meta, source });
    }
    function fail(error) {
      close();
      options2.onError?.(error);
    }
    async function outage(error, current) {
      let figures = null;
      try {
        figures = await local(given, error, options2.fallback);
      } catch {
        figures = null;
      }
      if (!current()) return;
      if (figures) emit(figures, "local");
      else report(error);
    }
    function backoff() {
      const cap = Math.min(o.maxDelayMs, o.minDelayMs * 2 ** attempt);
      attempt += 1;
      return cap / 2 + Math.random() * cap / 2;
    }
    function reconnect(delay) {
      if (reconnectTimer !== null) clearTimeout(reconnectTimer);
      reconnectTimer = closed ? null : setTimeout(connect, delay);
    }
    function unauthorised(error) {
      if (error.kind !== "auth") return false;
      stopPolling();
      report(error);
      reconnect(backoff());
      return true;
    }
    function refused(error) {
      if (unauthorised(error)) return true;
      if (error.status >= 400 && error.status < 500 && error.status !== 429) {
        fail(error);
        return true;
      }
      return false;
    }
    async function poll(round) {
      try {
        const body = await getKpiMetrics2(given, { signal: stopped.signal });
        if (round === polls) emit(body, "poll");
      } catch (caught) {
        const error = asKpiError(caught);
        if (closed || round !== polls) return;
        if (refused(error)) return;
        await outage(error, () => round === polls);
      }
      if (round === polls && !closed) pollTimer = setTimeout(poll, o.pollMs, round);
    }
    function startPolling() {
      if (closed || pollTimer !== null) return;
      announce("poll");
      polls += 1;
      pollTimer = setTimeout(poll, 0, polls);
    }
    function stopPolling() {
      polls += 1;
      if (pollTimer !== null) clearTimeout(pollTimer);
      pollTimer = null;
    }
    async function ticket() {
      const { body } = await request(url("api/kpi/stream-ticket"), { method: "POST", signal: stopped.signal });
      return body.ticket;
    }
    function streamUrl(path, value, websocket) {
      const resume = shown && shown.source !== "local" ? lastEventId : null;
      const href = new URL(`${path}?${windowQuery(given, { ticket: value, last_event_id: resume })}`, base);
      if (websocket) href.protocol = href.protocol === "https:" ? "wss:" : "ws:";
      return href.href;
    }
    function opened(kind) {
      attempt = 0;
      stopPolling();
      announce(kind);
    }
    function received(handle, kind, frame) {
      if (frame.event === "kpi") {
        if (frame.id) lastEventId = frame.id;
        emit(frame.data, kind);
      } else if (frame.event === "unavailable") {
        const since = shown;
        const error = new KpiApiError("http", 503, describe(503, frame.data), frame.data);
        outage(error, () => stream === handle && shown === since);
      }
    }
    function dropped() {
      stream = null;
      startPolling();
      reconnect(backoff());
    }
    function openWebSocket(value) {
      return new Promise((resolve) => {
        let socket;
        try {
          socket = new WebSocket(streamUrl("api/kpi/ws", value, true));
        } catch {
          resolve(false);
          return;
        }
        const handle = { close: () => socket.close(1e3) };
        let openedAt = null;
        stream = handle;
        socket.addEventListener("open", () => {
          if (stream !== handle) return socket.close(1e3);
          openedAt = performance.now();
          opened("websocket");
          resolve(true);
        });
        socket.addEventListener("message", (message) => {
          if (stream !== handle) return;
          let frame;
          try {
            frame = JSON.parse(String(message.data));
          } catch {
            return;
          }
          received(handle, "websocket", frame);
        });
        socket.addEventListener("close", (event) => {
          if (stream !== handle) return;
          stream = null;
          if (openedAt === null) return resolve(false);
          if (event.code === 1008 || event.code === 1009) {
            noWebSocket = true;
            reconnect(0);
          } else if (event.code === 1e3 && performance.now() - openedAt > o.minDelayMs) {
            reconnect(0);
          } else {
            dropped();
          }
        });
      });
    }
    function openEventSource(value) {
      const source = new EventSource(streamUrl("api/kpi/stream", value, false));
      const handle = { close: () => source.close() };
      let isOpen = false;
      stream = handle;
      source.addEventListener("open", () => {
        if (stream !== handle) return;
        isOpen = true;
        opened("sse");
      });
      source.addEventListener("kpi", (message) => {
        if (stream === handle) received(handle, "sse", { event: "kpi", id: message.lastEventId, data: JSON.parse(message.data) });
      });
      source.addEventListener("unavailable", (message) => {
        if (stream === handle) received(handle, "sse", { event: "unavailable", data: JSON.parse(message.data) });
      });
      source.addEventListener("error", () => {
        if (stream !== handle) return;
        source.close();
        if (isOpen) dropped();
        else {
          stream = null;
          startPolling();
          reconnect(backoff());
        }
      });
    }
    async function connect() {
      reconnectTimer = null;
      if (closed) return;
      try {
        if (!noWebSocket && typeof WebSocket === "function") {
          const value2 = await ticket();
          if (closed) return;
          if (await openWebSocket(value2)) return;
          if (closed) return;
        }
        if (typeof EventSource !== "function") throw new KpiApiError("unreachable", 0, "No EventSource here.");
        const value = await ticket();
        if (closed) return;
        openEventSource(value);
      } catch (caught) {
        if (closed) return;
        if (unauthorised(asKpiError(caught))) return;
        stream = null;
        startPolling();
        reconnect(backoff());
      }
    }
    function close() {
      if (closed) return;
      closed = true;
      stopped.abort();
      if (reconnectTimer !== null) clearTimeout(reconnectTimer);
      stopPolling();
      const open = stream;
      stream = null;
      open?.close();
    }
    connect();
    return { close };
  }
  return { baseUrl: base.href, getKpiMetrics: getKpiMetrics2, getKpiHistory: getKpiHistory2, subscribe: subscribe2, local };
}
function asKpiError(caught) {
  if (caught instanceof KpiApiError) return caught;
  const message = caught instanceof Error ? caught.message : String(caught);
  return new KpiApiError("unreachable", 0, message, null, { cause: caught });
}

// src/browser.ts
var SERVICE_ROOT = new URL("..", import.meta.url);
var etags = /* @__PURE__ */ new Map();
function apiFor({ baseUrl, token, timeoutMs, pollMs, minDelayMs, maxDelayMs }) {
  const getToken = () => typeof token === "function" ? token() : token;
  return createKpiApi({ baseUrl: baseUrl ?? SERVICE_ROOT, getToken, timeoutMs, pollMs, minDelayMs, maxDelayMs, etags });
}
var plain = (params = {}) => params instanceof URLSearchParams ? Object.fromEntries(params) : { ...params };
async function getKpiMetrics(params = {}, options = {}) {
  const api = apiFor(options);
  const given = plain(params);
  try {
    const body = await api.getKpiMetrics(given, { signal: options.signal });
    return { metrics: body.metrics, meta: body.meta, source: "http" };
  } catch (error) {
    if (!(error instanceof KpiApiError) || !error.isOutage) throw error;
    const figures = await api.local(given, error, options.fallback).catch(() => null);
    if (!figures) throw error;
    return figures;
  }
}
function getKpiHistory(params, options = {}) {
  return apiFor(options).getKpiHistory(params, { signal: options.signal });
}
function subscribe(params, onUpdate, options = {}) {
  const { fallback, onStatus, onError } = options;
  return apiFor(options).subscribe(plain(params), onUpdate, { fallback, onStatus, onError });
}
export {
  KpiApiError,
  KpiApiError as KpiError,
  getKpiHistory,
  getKpiMetrics,
  subscribe
};
