// The same from an ES module under `nodenext` resolution: the import condition's build.
import { computeKpis } from "@kpi-service/client";
import { createKpiStore } from "@kpi-service/client/react";
import { kpiQueryKey } from "@kpi-service/client/tanstack";

const metrics = computeKpis({ listings: [], leads: [], purchases: [] }, { now: "2026-04-01T00:00:00Z" });
const key = kpiQueryKey({ baseUrl: "http://kpi.test/" }, { tz: "UTC" });
console.log(JSON.stringify({ metrics, key, store: createKpiStore().size }));
