// An application's page using every entry point of the installed tarball (tests/test_js_client.py
// type-checks it under `bundler` resolution and builds it with Vite).
import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import { computeKpis, createKpiApi, KpiApiError, type KpiParams, type KpiRows } from "@kpi-service/client";
import { createKpiStore, KpiProvider, useKpiMetrics, type KpiStatus } from "@kpi-service/client/react";
import { kpiQueryOptions } from "@kpi-service/client/tanstack";

const api = createKpiApi({ baseUrl: "/", getToken: () => "token" });
const rows: KpiRows = { listings: [], leads: [], purchases: [] };
const view: KpiParams = { from: "2026-03-01", to: "2026-03-31", tz: "UTC" };
export const options = kpiQueryOptions(api, view);

function Cards() {
  const { metrics, status, error, transport } = useKpiMetrics(view, {
    api,
    live: true,
    fallback: (params) => computeKpis(rows, params),
  });
  const shown: KpiStatus = status;
  const auth = error instanceof KpiApiError && error.kind === "auth";
  return <p>{`${shown} ${transport ?? "-"} ${auth} ${metrics?.total_listings ?? "-"}`}</p>;
}

createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <KpiProvider store={createKpiStore({ staleTime: 10_000 })}>
      <Cards />
    </KpiProvider>
  </StrictMode>,
);
