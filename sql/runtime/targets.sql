-- The owner's targets (sql/schema/schema.sql, kpi.kpi_targets): read by the service, written by
-- `kpi-service target` (kpi_service/cli/commands.py) on the owner's connection.

-- name: kpi_targets()
-- Every target, in a fixed order (the service compares two reads to see a change).
SELECT t.kpi, t.window_length, t.value, t.set_at
FROM kpi.kpi_targets t
ORDER BY t.kpi, t.window_length;

-- name: kpi_target_set(kpi, window_length, value)!
INSERT INTO kpi.kpi_targets (kpi, window_length, value, set_at)
VALUES (:kpi::text, :window_length::text, :value::numeric, now())
ON CONFLICT (kpi, window_length) DO UPDATE SET value = excluded.value, set_at = excluded.set_at;

-- name: kpi_target_unset(kpi, window_length)$
WITH gone AS (
    DELETE FROM kpi.kpi_targets t WHERE t.kpi = :kpi::text AND t.window_length = :window_length::text RETURNING 1
)
SELECT count(*) AS removed FROM gone;
