-- The statements of the decoding capture mode's decoder (kpi_service/db/decoding.py), by name.
-- On the primary: the decoding state, the log rows of a batch, a lost slot and a new one
-- (sql/schema/decoding.sql). On the server that holds the slot (KPI_DECODING_URL): the slot's
-- state, its changes and its advance.

-- name: decoding_state()
SELECT slot, slot_ok, lost, lost_at, on_standby FROM kpi.kpi_decoding_state()

-- name: read_columns()
SELECT jsonb_object_agg(t, kpi.kpi_read_columns(t)) AS tables FROM unnest(ARRAY['listings', 'leads', 'purchases']) t

-- name: decoded(changes, upto)
SELECT kpi.kpi_decoded(:changes::jsonb, :upto::pg_lsn) AS logged

-- name: lost(reason)
SELECT kpi.kpi_decoding_lost(:reason::text) AS lost

-- name: slot_made(slot, lsn, on_standby)
SELECT kpi.kpi_decoding_slot_made(:slot::text, :lsn::pg_lsn, :on_standby::boolean) AS made

-- name: slot_status(slot)
-- Where the slot's server has WAL to (a standby: what it has replayed), and the slot as
-- pg_replication_slots shows it (jsonb: invalidation_reason is PostgreSQL 17's, conflicting 16's).
SELECT pg_is_in_recovery() AS in_recovery,
       (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_flush_lsn() END)::text AS end,
       (SELECT to_jsonb(s) FROM pg_replication_slots s
        WHERE s.slot_name = :slot::name AND s.database = current_database()) AS found,
       (SELECT s.confirmed_flush_lsn::text FROM pg_replication_slots s WHERE s.slot_name = :slot::name) AS confirmed

-- name: replayed(target)
SELECT pg_last_wal_replay_lsn() >= :target::pg_lsn AS replayed

-- name: peek(slot, upto, changes, options)
SELECT data FROM pg_logical_slot_peek_binary_changes(:slot::name, :upto::pg_lsn, :changes::integer,
                                                     VARIADIC :options::text[])

-- name: advance(slot, upto)
SELECT pg_replication_slot_advance(:slot::name, :upto::pg_lsn)

-- name: drop_slot(slot)
SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = :slot::name

-- name: create_slot(slot)
SELECT lsn::text AS lsn FROM pg_create_logical_replication_slot(:slot::name, 'pgoutput')

-- name: primary_facts()
SELECT current_setting('wal_level') AS wal_level, (SELECT system_identifier FROM pg_control_system()) AS system,
       current_database() AS database

-- name: slot_server_facts()
SELECT current_setting('wal_level') AS wal_level, (SELECT system_identifier FROM pg_control_system()) AS system,
       (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user) AS replication,
       pg_is_in_recovery() AS standby, current_setting('hot_standby_feedback') AS feedback,
       current_database() AS database
