// A CommonJS script (a .cts file: CommonJS whatever the package says) requiring the installed
// tarball under `node16` resolution: it prints the KPIs of one listing, and proves the other
// entry points load.
import { computeKpis, KpiApiError } from "@kpi-service/client";
import { createKpiStore } from "@kpi-service/client/react";
import { kpiQueryKey } from "@kpi-service/client/tanstack";

const metrics = computeKpis(
  {
    listings: [{ id: 1, price: "10.005", status: "active", listed_at: "2026-03-02 10:00:00+00" }],
    leads: [],
    purchases: [],
  },
  { from: "2026-03-01", to: "2026-03-31", now: "2026-04-01T00:00:00Z" },
);
const key = kpiQueryKey({ baseUrl: "http://kpi.test/" }, { tz: "UTC" });
const error = new KpiApiError("auth", 401, "refused");
console.log(JSON.stringify({ metrics, key, auth: error.kind, store: createKpiStore().size }));
