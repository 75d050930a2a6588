// A small application page, built with Vite as an application would build it (vite.config.ts),
// which tests/test_js_client.py serves next to a real service and drives in Chromium. The token
// comes in the URL's fragment; the rows its fallback computes from, from ./rows.json.
import { StrictMode, useMemo } from "react";
import { createRoot } from "react-dom/client";
import { computeKpis, createKpiApi, type KpiParams, type KpiRows } from "@kpi-service/client";
import { useKpiMetrics } from "@kpi-service/client/react";

const api = createKpiApi({
  baseUrl: new URL("..", location.href), // the page is served at <service>/app/
  getToken: () => decodeURIComponent(location.hash.slice(1)),
  // Short delays so that the test sees reconnections within seconds.
  pollMs: 500,
  minDelayMs: 100,
  maxDelayMs: 1000,
  timeoutMs: 3000,
});

const VIEW: KpiParams = { from: "2026-03-01", to: "2026-03-31", tz: "UTC" };

export function KpiCards({ view, rows }: { view: KpiParams; rows: KpiRows }) {
  const fallback = useMemo(() => (params: KpiParams) => computeKpis(rows, params), [rows]);
  const { metrics, source, status, error, transport } = useKpiMetrics(view, { api, live: true, fallback });
  return (
    <section>
      <p>
        <output id="source">{source ?? "-"}</output> <output id="status">{status}</output>{" "}
        <output id="transport">{transport ?? "-"}</output>
      </p>
      <pre id="metrics">{metrics ? JSON.stringify(metrics) : ""}</pre>
      {error && <p id="error">{error.message}</p>}
    </section>
  );
}

const rows: KpiRows = await (await fetch("rows.json")).json();
createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <KpiCards view={VIEW} rows={rows} />
  </StrictMode>,
);
