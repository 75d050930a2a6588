// The KPI service's browser client: GET /api/kpi with ETags, and live updates over a WebSocket,
// else server-sent events, else polling, with the application's own computation as a last resort
// while the service fails. An ES module with no dependencies and no build step:
//
//   import { getKpiMetrics, subscribe } from "/static/kpi-client.js";
//
// Every function takes `options`: token (a string, or a function returning one or a promise of
// one), baseUrl (the service's root; by default the one serving this file), timeoutMs,
// fallback (see subscribe). subscribe also takes onStatus, onError, pollMs, minDelayMs and
// maxDelayMs. README.md ("The browser client") describes them.

// This file is served at <root>/static/kpi-client.js.
const SERVICE_ROOT = new URL("..", import.meta.url);
const DEFAULTS = {
  timeoutMs: 10000, // a request answered later than this counts as a failure of the service
  pollMs: 10000, // polling, when no stream can be opened; the server's cache makes faster pointless
  minDelayMs: 1000, // reconnection back-off: the first delay ...
  maxDelayMs: 30000, // ... doubling up to this, each with jitter
};
const WINDOW_PARAMS = ["from", "to", "tz", "aged_days"];
const KEPT_WINDOWS = 32; // ETags and bodies kept for If-None-Match, newest first out last

// The last ETag and body of each window's URL, shared by every call of this page.
const kept = new Map();

/** A failed request: `status` is the HTTP status, 0 when the service could not be reached or
 * did not answer within timeoutMs; `body` the error envelope, when there was one. */
export class KpiError extends Error {
  constructor(status, message, body = null) {
    super(message);
    this.name = "KpiError";
    this.status = status;
    this.body = body;
  }

  /** The service failed (unreachable, timed out, 5xx), as opposed to refusing the request. */
  get isOutage() {
    return this.status === 0 || this.status >= 500;
  }
}

function settings(options) {
  const root = String(options.baseUrl ?? SERVICE_ROOT);
  return { ...DEFAULTS, ...options, base: new URL(root.endsWith("/") ? root : `${root}/`, location.href) };
}

const plain = (params = {}) => (params instanceof URLSearchParams ? Object.fromEntries(params) : { ...params });

/** The window's parameters as the API takes them, in a fixed order (one ETag per window). */
function windowQuery(params, extra = {}) {
  const given = plain(params);
  const query = new URLSearchParams();
  for (const name of WINDOW_PARAMS) {
    const value = given[name];
    if (value !== undefined && value !== null && value !== "") query.set(name, String(value));
  }
  for (const [name, value] of Object.entries(extra)) if (value) query.set(name, value);
  return query;
}

async function bearer(token) {
  const value = typeof token === "function" ? await token() : token;
  return value ? { Authorization: `Bearer ${value}` } : {};
}

function describe(status, body) {
  let message = body?.message || `The KPI service answered ${status}.`;
  if (body?.errors) {
    message += " " + Object.entries(body.errors).map(([field, problems]) => `${field}: ${[].concat(problems).join(" ")}`).join("; ");
  }
  return message;
}

/** One call of the API: the response and its JSON body (null for a 304). Throws KpiError. */
async function request(url, o, { method = "GET", headers = {}, signal } = {}) {
  const controller = new AbortController();
  const abort = () => controller.abort();
  signal?.addEventListener("abort", abort);
  const timer = setTimeout(abort, o.timeoutMs);
  try {
    let response;
    try {
      response = await fetch(url, {
        method,
        headers: { Accept: "application/json", ...(await bearer(o.token)), ...headers },
        cache: "no-store", // the ETags are handled here, with the body they belong to
        signal: controller.signal,
      });
    } catch {
      throw new KpiError(0, "The KPI service cannot be reached.");
    }
    if (response.status === 304) return { response, body: null };
    let body = null;
    try {
      body = await response.json();
    } catch {
      if (controller.signal.aborted) throw new KpiError(0, "The KPI service did not answer in time.");
    }
    if (!response.ok) throw new KpiError(response.status, describe(response.status, body), body);
    return { response, body };
  } finally {
    clearTimeout(timer);
    signal?.removeEventListener("abort", abort);
  }
}

/** GET /api/kpi with If-None-Match: a 304 gives back the body kept with that ETag. */
async function fetchKpis(query, o, signal) {
  const url = new URL(`api/kpi?${query}`, o.base).href;
  const last = kept.get(url);
  const { response, body } = await request(url, o, { headers: last ? { "If-None-Match": last.etag } : {}, signal });
  if (response.status === 304 && last) return last.body;
  if (!body) throw new KpiError(response.status, `The KPI service answered ${response.status} without a body.`);
  const etag = response.headers.get("ETag");
  kept.delete(url);
  if (etag) kept.set(url, { etag, body });
  if (kept.size > KEPT_WINDOWS) kept.delete(kept.keys().next().value);
  return body;
}

/** The application's own figures, shaped like the service's, or null without a fallback. */
async function local(o, params, error) {
  if (typeof o.fallback !== "function") return null;
  const started = performance.now();
  const metrics = await o.fallback(plain(params), error);
  const now = new Date().toISOString();
  return {
    metrics,
    meta: {
      computed_at: now,
      cached: false,
      stale: false,
      local: true,
      duration_ms: Math.round((performance.now() - started) * 100) / 100,
      window: Object.fromEntries(windowQuery(params)),
    },
  };
}

/**
 * The ten KPIs of a window: `{metrics, meta, source}`, source "http", or "local" when the service
 * failed (unreachable, timed out, 5xx) and options.fallback computed them. Rejects with a
 * KpiError otherwise (a 400 for a bad window, a 401 for a bad token).
 */
export async function getKpiMetrics(params = {}, options = {}) {
  const o = settings(options);
  try {
    const body = await fetchKpis(windowQuery(params), o, options.signal);
    return { metrics: body.metrics, meta: body.meta, source: "http" };
  } catch (error) {
    if (!(error instanceof KpiError) || !error.isOutage) throw error;
    const figures = await local(o, params, error).catch(() => null);
    if (!figures) throw error;
    return { ...figures, source: "local" };
  }
}

/** GET /api/kpi/history: `{series, meta}` (params: from, to, interval, tz, aged_days). */
export async function getKpiHistory(params, options = {}) {
  const o = settings(options);
  const query = windowQuery(params, { interval: params.interval });
  const { body } = await request(new URL(`api/kpi/history?${query}`, o.base).href, o, { signal: options.signal });
  return body;
}

/**
 * Live figures of a window: onUpdate({metrics, meta, source}) with each new value, source
 * "websocket", "sse", "poll" or "local". Tries a WebSocket, then server-sent events, then polls
 * with ETags while it keeps trying to reconnect (back-off with jitter, capped). When the service
 * fails and options.fallback is given, its figures are passed on as "local" until the service
 * answers again. options.onStatus(transport) hears "websocket", "sse" or "poll" when the way in
 * use changes; options.onError(KpiError) hears failures nothing else handles. A 401 or another
 * refusal of the request (4xx) ends the subscription. Returns `{close()}`.
 */
export function subscribe(params, onUpdate, options = {}) {
  const o = settings(options);
  const given = plain(params);
  const query = windowQuery(given);
  const stopped = new AbortController();
  let closed = false;
  let stream = null; // the open (or opening) WebSocket or EventSource: {close()}
  let transport = null; // what onStatus last heard
  let reconnectTimer = null;
  let pollTimer = null;
  let polls = 0; // bumped when polling starts or stops: a poll of an earlier round ends there
  let attempt = 0; // failed connections in a row: the back-off's exponent
  let noWebSocket = false; // the server refused WebSockets by policy: SSE from now on
  let lastEventId = null;
  let shown = null; // {body, source} last passed to onUpdate

  const report = (error) => {
    if (!closed && options.onError) options.onError(error);
  };

  function announce(next) {
    if (closed || transport === next) return;
    transport = next;
    options.onStatus?.(next);
  }

  function emit(body, source) {
    if (closed) return;
    if (source !== "local" && shown && shown.source !== "local") {
      if (shown.body === body) return; // a poll's 304
      // Never back in time (a poll answered before a newer streamed value, a stream reopening);
      // the same instant again is a value turning stale.
      if (body.meta.computed_at < shown.body.meta.computed_at) return;
    }
    shown = { body, source };
    onUpdate({ metrics: body.metrics, meta: body.meta, source });
  }

  function fail(error) {
    // A refusal cannot be cured by retrying: a bad window (400) stays bad, a refused token (401)
    // needs a new one from the application.
    close();
    if (options.onError) options.onError(error);
  }

  /** The service failed; `current()` says, once the fallback answered, whether the failure
   * still stands (no stream opened and no answer came meanwhile). */
  async function outage(error, current) {
    let figures = null;
    try {
      figures = await local(o, given, error);
    } catch {
      figures = null; // a failing fallback is no reason to stop trying the service
    }
    if (!current()) return;
    if (figures) emit(figures, "local");
    else report(error);
  }

  function backoff() {
    const cap = Math.min(o.maxDelayMs, o.minDelayMs * 2 ** attempt);
    attempt += 1;
    return cap / 2 + (Math.random() * cap) / 2; // "equal jitter": never zero, never above the cap
  }

  function reconnect(delay) {
    clearTimeout(reconnectTimer);
    reconnectTimer = closed ? null : setTimeout(connect, delay);
  }

  // --- polling: while no stream is open ----------------------------------------------------------

  async function poll(round) {
    try {
      const body = await fetchKpis(query, o, stopped.signal);
      if (round === polls) emit(body, "poll");
    } catch (error) {
      if (closed || round !== polls) return;
      if (error.status >= 400 && error.status < 500 && error.status !== 429) return fail(error);
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
    clearTimeout(pollTimer);
    pollTimer = null;
  }

  // --- streams -------------------------------------------------------------------------------

  async function ticket() {
    const url = new URL("api/kpi/stream-ticket", o.base).href;
    return (await request(url, o, { method: "POST", signal: stopped.signal })).body.ticket;
  }

  function streamUrl(path, value, scheme) {
    // Local figures shown: no last_event_id, so that the stream starts with the service's value.
    const resume = shown && shown.source !== "local" ? lastEventId : null;
    const url = new URL(`${path}?${windowQuery(given, { ticket: value, last_event_id: resume })}`, o.base);
    if (scheme) url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    return url.href;
  }

  function opened(kind) {
    attempt = 0;
    stopPolling();
    announce(kind);
  }

  function received(handle, kind, event, data, id) {
    if (event === "kpi") {
      if (id) lastEventId = id;
      emit(data, kind);
    } else if (event === "unavailable") {
      // The database is down and nothing is cached; the stream stays open for the next value.
      const since = shown;
      outage(new KpiError(503, describe(503, data), data), () => stream === handle && shown === since);
    }
  }

  function dropped() {
    // Poll meanwhile (it also finds out whether the service is down), and try again later.
    stream = null;
    startPolling();
    reconnect(backoff());
  }

  /** Resolves true once the socket is open, false if it failed before. */
  function openWebSocket(value) {
    return new Promise((resolve) => {
      let socket;
      try {
        socket = new WebSocket(streamUrl("api/kpi/ws", value, true));
      } catch {
        resolve(false);
        return;
      }
      const handle = { close: () => socket.close(1000) };
      let openedAt = null;
      stream = handle;
      socket.addEventListener("open", () => {
        if (stream !== handle) return socket.close(1000);
        openedAt = performance.now();
        opened("websocket");
        resolve(true);
      });
      socket.addEventListener("message", (message) => {
        if (stream !== handle) return;
        let frame;
        try {
          frame = JSON.parse(message.data);
        } catch {
          return;
        }
        received(handle, "websocket", frame.event, frame.data, frame.id);
      });
      socket.addEventListener("close", (event) => {
        if (stream !== handle) return;
        stream = null;
        if (openedAt === null) return resolve(false);
        if (event.code === 1008 || event.code === 1009) {
          noWebSocket = true; // the server will not have this socket: SSE, at once
          reconnect(0);
        } else if (event.code === 1000 && performance.now() - openedAt > o.minDelayMs) {
          reconnect(0); // the grant expired: a new ticket, and on from the last event
        } else {
          dropped(); // going away (1001), the network, or a 1000 at once: back off
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
    for (const name of ["kpi", "unavailable"]) {
      source.addEventListener(name, (event) => {
        if (stream === handle) received(handle, "sse", name, JSON.parse(event.data), event.lastEventId);
      });
    }
    source.addEventListener("error", () => {
      if (stream !== handle) return;
      // The ticket is spent: the browser's own reconnection would be refused.
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
        if (await openWebSocket(await ticket())) return;
        if (closed) return;
      }
      openEventSource(await ticket()); // a new ticket: the failed socket may have spent the last
    } catch (error) {
      if (closed) return;
      if (error.status === 401) return fail(error);
      // No ticket (the service is down, or Redis is and so no stream can open): poll.
      stream = null;
      startPolling();
      reconnect(backoff());
    }
  }

  function close() {
    if (closed) return;
    closed = true;
    stopped.abort();
    clearTimeout(reconnectTimer);
    stopPolling();
    const open = stream;
    stream = null;
    open?.close();
  }

  connect();
  return { close };
}
