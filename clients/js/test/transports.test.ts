// createKpiApi's subscribe and requests over a fake fetch, WebSocket and EventSource, with fake
// timers: the way down from WebSocket to SSE to polling, the back-off, 304s, and a 401 cured by a
// renewed token. Math.random is 0, so each back-off is exactly half its cap.
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { createKpiApi, KpiApiError, type KpiApiOptions, type KpiResponse, type KpiUpdate } from "../src/api.js";

const BASE = "http://kpi.test/";

function body(total: number, computedAt = "2026-03-01T00:00:00Z"): KpiResponse {
  return {
    targets: {},
    metrics: {
      total_listings: total,
      total_value: 0,
      average_price: 0,
      scoring_rate: 0,
      average_score: 0,
      aged_inventory: 0,
      average_profit_per_unit: 0,
      lead_to_purchase_time: 0,
      conversion_rate: 0,
      active_buyers: 0,
    },
    success: true,
    message: null,
    meta: {
      computed_at: computedAt,
      cached: false,
      stale: false,
      duration_ms: 1,
      includes_commits_before: null,
      pending_changes: 0,
      window: { from: null, to: null, tz: "UTC", aged_days: 60 },
    },
  };
}

class FakeWebSocket extends EventTarget {
  static made: FakeWebSocket[] = [];
  closedWith: number | null = null;
  constructor(readonly url: string) {
    super();
    FakeWebSocket.made.push(this);
  }
  close(code?: number) {
    this.closedWith = code ?? 1005;
  }
  open() {
    this.dispatchEvent(new Event("open"));
  }
  send(frame: object) {
    this.dispatchEvent(new MessageEvent("message", { data: JSON.stringify(frame) }));
  }
  /** The server closes (or the connection fails, before "open"). */
  end(code: number) {
    this.dispatchEvent(Object.assign(new Event("close"), { code }));
  }
}

class FakeEventSource extends EventTarget {
  static made: FakeEventSource[] = [];
  closed = false;
  constructor(readonly url: string) {
    super();
    FakeEventSource.made.push(this);
  }
  close() {
    this.closed = true;
  }
  open() {
    this.dispatchEvent(new Event("open"));
  }
  send(event: string, data: object, id = "") {
    this.dispatchEvent(new MessageEvent(event, { data: JSON.stringify(data), lastEventId: id }));
  }
}

interface Request {
  at: number;
  method: string;
  url: string;
  headers: Record<string, string>;
}

type Handler = (request: Request) => Response | Promise<Response>;
let requests: Request[];
let handle: Handler;
const json = (value: object, status = 200, headers: Record<string, string> = {}) =>
  new Response(JSON.stringify(value), { status, headers: { "Content-Type": "application/json", ...headers } });
const ticket = (value = "t1") => json({ ticket: value, expires_in: 30 });
const flush = (ms = 0) => vi.advanceTimersByTimeAsync(ms);

function api(options: Partial<KpiApiOptions> = {}) {
  return createKpiApi({ baseUrl: BASE, getToken: () => "tok", pollMs: 1000, minDelayMs: 100, maxDelayMs: 1000, ...options });
}

function watch() {
  const updates: KpiUpdate[] = [];
  const statuses: string[] = [];
  const errors: KpiApiError[] = [];
  const options = {
    onStatus: (t: string) => statuses.push(t),
    onError: (e: KpiApiError) => errors.push(e),
  };
  return { updates, statuses, errors, options, onUpdate: (u: KpiUpdate) => updates.push(u) };
}

beforeEach(() => {
  vi.useFakeTimers();
  vi.spyOn(Math, "random").mockReturnValue(0);
  FakeWebSocket.made = [];
  FakeEventSource.made = [];
  requests = [];
  handle = () => {
    throw new TypeError("no handler");
  };
  vi.stubGlobal("WebSocket", FakeWebSocket);
  vi.stubGlobal("EventSource", FakeEventSource);
  vi.stubGlobal(
    "fetch",
    vi.fn(async (input: string, init: RequestInit = {}) => {
      const request = {
        at: Date.now(),
        method: init.method ?? "GET",
        url: String(input),
        headers: (init.headers ?? {}) as Record<string, string>,
      };
      requests.push(request);
      return handle(request);
    }),
  );
});
afterEach(() => {
  vi.useRealTimers();
  vi.restoreAllMocks();
  vi.unstubAllGlobals();
});

describe("subscribe", () => {
  it("opens a WebSocket with a ticket and passes each kpi frame on", async () => {
    handle = () => ticket();
    const seen = watch();
    const subscription = api().subscribe({ tz: "UTC" }, seen.onUpdate, seen.options);
    await flush();
    expect(requests).toMatchObject([{ method: "POST", url: `${BASE}api/kpi/stream-ticket`, headers: { Authorization: "Bearer tok" } }]);
    const [socket] = FakeWebSocket.made;
    expect(socket.url).toBe("ws://kpi.test/api/kpi/ws?tz=UTC&ticket=t1");
    socket.open();
    socket.send({ event: "kpi", id: "2026-03-01T00:00:00Z", data: body(3) });
    socket.send({ event: "heartbeat" });
    expect(seen.statuses).toEqual(["websocket"]);
    expect(seen.updates).toMatchObject([{ source: "websocket", metrics: { total_listings: 3 } }]);
    subscription.close();
    expect(socket.closedWith).toBe(1000);
  });

  it("gives way to server-sent events when the socket fails before opening", async () => {
    let tickets = 0;
    handle = () => ticket(`t${++tickets}`);
    const seen = watch();
    api().subscribe({ tz: "UTC" }, seen.onUpdate, seen.options);
    await flush();
    FakeWebSocket.made[0].end(1006);
    await flush();
    const [source] = FakeEventSource.made;
    expect(source.url).toBe(`${BASE}api/kpi/stream?tz=UTC&ticket=t2`); // a new ticket: the socket may have spent t1
    source.open();
    source.send("kpi", body(4), "2026-03-01T00:00:00Z");
    expect(seen.statuses).toEqual(["sse"]);
    expect(seen.updates).toMatchObject([{ source: "sse", metrics: { total_listings: 4 } }]);
  });

  it("polls while no stream opens (a 304 gives no second update), trying the stream again with doubling back-off", async () => {
    handle = (request) => {
      if (request.method === "POST") throw new TypeError("Failed to fetch"); // no ticket: Redis is down
      if (request.headers["If-None-Match"] === '"a"') return new Response(null, { status: 304 });
      return json(body(5), 200, { ETag: '"a"' });
    };
    const seen = watch();
    api().subscribe({ tz: "UTC" }, seen.onUpdate, seen.options);
    await flush(2000);
    const tickets = requests.filter((r) => r.method === "POST").map((r) => r.at);
    const gaps = tickets.slice(1).map((at, i) => at - tickets[i]);
    expect(gaps.slice(0, 5)).toEqual([50, 100, 200, 400, 500]); // half of 100·2^n, capped at 1000
    const polls = requests.filter((r) => r.method === "GET");
    expect(polls.map((r) => r.headers["If-None-Match"] ?? null)).toEqual([null, '"a"', '"a"']); // at 0, 1000, 2000
    expect(seen.statuses).toEqual(["poll"]);
    expect(seen.updates).toHaveLength(1);
    expect(seen.updates[0]).toMatchObject({ source: "poll", metrics: { total_listings: 5 } });
    expect(seen.errors).toEqual([]);
  });

  it("hears a 401 as auth without ending, and resumes with the renewed token", async () => {
    const tokens = ["old", "new"];
    handle = (request) =>
      request.headers.Authorization === "Bearer old"
        ? json({ success: false, metrics: null, message: "Token has expired" }, 401)
        : ticket();
    const seen = watch();
    const fallback = vi.fn(() => body(99).metrics);
    api({ getToken: () => (tokens.length > 1 ? tokens.shift() : tokens[0]) }).subscribe(
      { tz: "UTC" },
      seen.onUpdate,
      { ...seen.options, fallback },
    );
    await flush();
    expect(seen.errors).toMatchObject([{ kind: "auth", status: 401, isOutage: false }]);
    expect(FakeWebSocket.made).toHaveLength(0);
    expect(requests.filter((r) => r.method === "GET")).toHaveLength(0); // polls would be refused too
    await flush(50);
    expect(requests.at(-1)?.headers.Authorization).toBe("Bearer new");
    FakeWebSocket.made[0].open();
    FakeWebSocket.made[0].send({ event: "kpi", id: "x", data: body(6) });
    expect(seen.updates).toMatchObject([{ source: "websocket", metrics: { total_listings: 6 } }]);
    expect(fallback).not.toHaveBeenCalled();
  });

  it("polls when the ticket is refused otherwise than for the token (a service without streams)", async () => {
    handle = (request) =>
      request.method === "POST" ? json({ success: false, metrics: null, message: "Not found" }, 404) : json(body(2));
    const seen = watch();
    api().subscribe({ tz: "UTC" }, seen.onUpdate, seen.options);
    await flush();
    expect(seen.statuses).toEqual(["poll"]);
    expect(seen.updates).toMatchObject([{ source: "poll", metrics: { total_listings: 2 } }]);
    expect(seen.errors).toEqual([]);
  });

  it("computes locally on an unavailable frame, and shows the service's figures again after", async () => {
    handle = () => ticket();
    const seen = watch();
    api().subscribe({ tz: "UTC" }, seen.onUpdate, { ...seen.options, fallback: () => body(42).metrics });
    await flush();
    const [socket] = FakeWebSocket.made;
    socket.open();
    socket.send({ event: "unavailable", data: { success: false, metrics: null, message: "The database is down." } });
    await flush();
    socket.send({ event: "kpi", id: "b", data: body(7, "2026-03-01T00:01:00Z") });
    expect(seen.updates.map((u) => [u.source, u.metrics.total_listings])).toEqual([
      ["local", 42],
      ["websocket", 7],
    ]);
  });

  it("opens no socket after close(), even when fetch ignores the abort", async () => {
    let answer: (response: Response) => void = () => {};
    handle = () => new Promise((resolve) => (answer = resolve)); // never rejects on abort
    const subscription = api().subscribe({ tz: "UTC" }, () => {});
    await flush();
    subscription.close();
    answer(ticket());
    await flush(60_000);
    expect(FakeWebSocket.made).toHaveLength(0);
    expect(FakeEventSource.made).toHaveLength(0);
    expect(requests).toHaveLength(1);
  });
});

describe("requests", () => {
  it("sends nothing for an already-aborted signal", async () => {
    const error = await api()
      .getKpiMetrics({}, { signal: AbortSignal.abort() })
      .catch((e: unknown) => e);
    expect(error).toMatchObject({ kind: "aborted" });
    expect(requests).toHaveLength(0);
  });

  it("calls a throwing getToken an auth failure, not an outage, and sends nothing", async () => {
    const signedOut = api({
      getToken: () => {
        throw new Error("signed out");
      },
    });
    const error = await signedOut.getKpiMetrics({}).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(KpiApiError);
    expect(error).toMatchObject({ kind: "auth", status: 0, isOutage: false, message: "No token: signed out" });
    expect(requests).toHaveLength(0);
    expect(await signedOut.local({}, error as KpiApiError, undefined)).toBeNull();
  });
});
