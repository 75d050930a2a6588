-- The decoding capture mode (docs/design.md, "Change capture from a replication slot"), applied
-- by `kpi-service init-db` before summary.sql (whose functions call kpi_decoding_mode), in the
-- same transaction, whatever the mode: its tables stay empty in the trigger mode. capture.sql,
-- after summary.sql, installs the mode asked for.
--
-- In this mode nothing of the service is on the application's tables: no trigger, no function
-- they call, no column. The service's decoder (kpi_service/db/decoding.py) reads the slot's
-- changes over SQL (pg_logical_slot_peek_binary_changes, pgoutput) and hands each batch to
-- kpi_decoded below, which writes the same log rows the triggers write (sign -1 old image, +1
-- new image, 't' a TRUNCATE), so that kpi_apply_changes, the rebuild and kpi_source are the
-- trigger mode's.
SELECT set_config('search_path', 'kpi, pg_catalog, pg_temp', true);

-- The decoding state: a row when the mode is decoding, none in the trigger mode.
CREATE TABLE IF NOT EXISTS kpi.kpi_decoding (
    slot      text NOT NULL,     -- the logical slot's name on the server that holds it
    -- The end of the last decoded transaction whose log rows are committed here: a transaction
    -- the slot gives again (the service stopped between this commit and the slot's advance) is
    -- skipped, so each is logged once.
    lsn       pg_lsn,
    slot_ok   boolean NOT NULL,  -- false: the slot was lost; the summaries wait for a new one
    lost      text,              -- why the last slot was lost, for /readyz and the log
    lost_at   timestamptz
);
-- Whether the slot was made on a standby: one found out of recovery since was promoted, and the
-- slot there may be ahead of what this (replicated) state says was logged.
ALTER TABLE kpi.kpi_decoding ADD COLUMN IF NOT EXISTS on_standby boolean;

-- The old images. The slot gives an UPDATE's new row only, and a DELETE's key (the tables'
-- default replica identity; REPLICA IDENTITY FULL would cost the application WAL at every
-- update): the service keeps, per row, the image it last logged, with only the columns the KPIs
-- read (kpi_read_columns), and logs it as the old image of the row's next change.
CREATE TABLE IF NOT EXISTS kpi.kpi_row_copy (
    tbl "char" NOT NULL,  -- 'l' listings, 'd' leads, 'p' purchases (kpi_changes.tbl)
    id  bigint NOT NULL,
    img jsonb NOT NULL,
    PRIMARY KEY (tbl, id)
) WITH (fillfactor = 90, autovacuum_vacuum_scale_factor = 0.05, autovacuum_analyze_scale_factor = 0.05);

-- A decoded change, in the order the slot gave it (k), with the TRUNCATEs before it (part).
DO $$
BEGIN
    IF to_regtype('kpi.kpi_decoded_change') IS NULL THEN
        CREATE TYPE kpi.kpi_decoded_change AS (k bigint, part bigint, op text, tbl "char", id bigint, img jsonb,
                                               old jsonb);
    END IF;
END
$$;

-- Whether the publication kpi is the service's (capture.sql marks it; one of the owner's of that
-- name is neither used nor dropped).
CREATE OR REPLACE FUNCTION kpi.kpi_decoding_publication() RETURNS boolean
LANGUAGE sql STABLE AS $fn$
    SELECT EXISTS (SELECT FROM pg_publication p
                   WHERE p.pubname = 'kpi'
                     AND obj_description(p.oid, 'pg_publication') = 'kpi-service: made by kpi-service init-db')
$fn$;

-- Whether the changes come from a slot.
CREATE OR REPLACE FUNCTION kpi.kpi_decoding_mode() RETURNS boolean
LANGUAGE sql STABLE AS $fn$
    SELECT EXISTS (SELECT FROM kpi.kpi_decoding)
$fn$;

-- An image with only the columns the KPIs read (a column renamed or dropped is then missing,
-- and kpi_change_of stops the summaries, as in the trigger mode).
CREATE OR REPLACE FUNCTION kpi.kpi_read_image(tbl "char", img jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $fn$
    SELECT coalesce(jsonb_object_agg(e.key, e.value), '{}')
    FROM jsonb_each(img) e
    WHERE e.key = ANY (kpi.kpi_read_columns(CASE tbl WHEN 'l' THEN 'listings' WHEN 'd' THEN 'leads' ELSE 'purchases' END))
$fn$;

-- The log rows of a batch of decoded changes, a jsonb array in the slot's order of objects
-- {lsn: the end of its transaction, op: I U D T, tbl: l d p, id, img: the new row's columns
-- that the KPIs read (kpi_read_columns: the decoder leaves out the others), as text, or null},
-- and the row copy brought to their end, in the caller's transaction, which
-- then records `upto` (the end of the batch's last transaction) as consumed. Changes of
-- transactions at or below the recorded end are skipped (given again after a crash). Takes
-- the applier's lock: a rebuild (which makes the copy anew) and another instance's decoder
-- wait. Returns the log rows written; NULL when the lock is another's.
--
-- Each change logs the copy's image of its row (or the image its previous change in the batch
-- left) with -1 and its new image with +1, then sets the copy: so the log rows of a row's
-- changes, from any image the copy held, add up to (last image - that image). That is what
-- makes the start exact (docs/design.md): a copy and summaries built from a snapshot taken after
-- the slot's consistent point, then every change after that point replayed, even those the
-- snapshot holds already, telescope to the rows as they are.
CREATE OR REPLACE FUNCTION kpi.kpi_decoded(changes jsonb, upto pg_lsn) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
DECLARE
    done pg_lsn;
    items kpi.kpi_decoded_change[];
    chained kpi.kpi_decoded_change[];
    p bigint;
    logged bigint := 0;
    n bigint;
BEGIN
    IF NOT kpi.kpi_applier_lock() THEN
        RETURN NULL;
    END IF;
    SELECT d.lsn INTO done FROM kpi.kpi_decoding d FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'kpi-service: the changes do not come from a slot here (kpi.kpi_decoding is empty)';
    END IF;
    items := ARRAY(
        SELECT ROW(e.k, count(*) FILTER (WHERE e.x->>'op' = 'T') OVER (ORDER BY e.k), e.x->>'op',
                   (e.x->>'tbl')::"char", (e.x->>'id')::bigint,
                   CASE WHEN jsonb_typeof(e.x->'img') = 'object' THEN e.x->'img' END,
                   NULL)::kpi.kpi_decoded_change
        FROM jsonb_array_elements(changes) WITH ORDINALITY AS e (x, k)
        WHERE done IS NULL OR (e.x->>'lsn')::pg_lsn > done
    );
    -- Part by part: a TRUNCATE empties its table's copy before the changes after it.
    FOR p IN SELECT DISTINCT i.part FROM unnest(items) i ORDER BY 1 LOOP
        INSERT INTO kpi.kpi_changes (tbl, img)
        SELECT 't', jsonb_build_object('table', CASE i.tbl WHEN 'l' THEN 'listings' WHEN 'd' THEN 'leads' ELSE 'purchases' END)
        FROM unnest(items) i WHERE i.part = p AND i.op = 'T';
        GET DIAGNOSTICS n = ROW_COUNT;
        logged := logged + n;
        DELETE FROM kpi.kpi_row_copy c USING unnest(items) i WHERE i.part = p AND i.op = 'T' AND c.tbl = i.tbl;

        -- Each change with the image before it: the copy's for a row's first change here, the
        -- previous change's after. (An UPDATE's new row leaves out a value TOASTed and unchanged:
        -- it is the old image's. The columns the KPIs read are numbers, instants and a status.)
        chained := ARRAY(
            SELECT ROW(x.k, x.part, x.op, x.tbl, x.id,
                       CASE WHEN x.op = 'U' THEN coalesce(x.old, '{}') || x.img ELSE x.img END, x.old)::kpi.kpi_decoded_change
            FROM (
                SELECT i.k, i.part, i.op, i.tbl, i.id, i.img,
                       CASE WHEN row_number() OVER w = 1 THEN (SELECT c.img FROM kpi.kpi_row_copy c WHERE c.tbl = i.tbl AND c.id = i.id)
                            ELSE lag(i.img) OVER w END AS old
                FROM unnest(items) i
                WHERE i.part = p AND i.op <> 'T'
                WINDOW w AS (PARTITION BY i.tbl, i.id ORDER BY i.k)
            ) x
        );
        INSERT INTO kpi.kpi_changes (tbl, sign, img)
        SELECT c.tbl, -1, c.old FROM unnest(chained) c WHERE c.old IS NOT NULL
        UNION ALL
        SELECT c.tbl, 1, c.img FROM unnest(chained) c WHERE c.img IS NOT NULL;
        GET DIAGNOSTICS n = ROW_COUNT;
        logged := logged + n;
        -- The copy: each row as its last change left it.
        WITH last AS (
            SELECT DISTINCT ON (c.tbl, c.id) c.tbl, c.id, c.img FROM unnest(chained) c ORDER BY c.tbl, c.id, c.k DESC
        ),
        gone AS (
            DELETE FROM kpi.kpi_row_copy r USING last l WHERE l.img IS NULL AND r.tbl = l.tbl AND r.id = l.id
        )
        INSERT INTO kpi.kpi_row_copy AS r SELECT l.tbl, l.id, l.img FROM last l WHERE l.img IS NOT NULL
        ON CONFLICT (tbl, id) DO UPDATE SET img = excluded.img;
    END LOOP;
    UPDATE kpi.kpi_decoding SET lsn = upto WHERE lsn IS NULL OR lsn < upto;
    RETURN logged;
END
$fn$;

-- The copy made anew from the rows, in the rebuild's snapshot (kpi_rebuild), in the decoding
-- mode; emptied in the trigger mode.
CREATE OR REPLACE FUNCTION kpi.kpi_copy_rebuild() RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    TRUNCATE kpi.kpi_row_copy;
    IF NOT kpi.kpi_decoding_mode() THEN
        RETURN;
    END IF;
    RAISE NOTICE 'kpi-service: building the summaries: the copy of the rows'' read columns';
    INSERT INTO kpi.kpi_row_copy
    SELECT 'l', x.id, kpi.kpi_read_image('l', to_jsonb(x)) FROM @sales@.listings x
    UNION ALL
    SELECT 'd', x.id, kpi.kpi_read_image('d', to_jsonb(x)) FROM @sales@.leads x
    UNION ALL
    SELECT 'p', x.id, kpi.kpi_read_image('p', to_jsonb(x)) FROM @sales@.purchases x;
END
$fn$;

-- The slot was found lost (invalidated, dropped, or on a server that is no longer the one the
-- service decodes from): the summaries stop (kpi_source() says 'raw'; the log, which may miss
-- changes, is of no use) until the decoder has made a new slot (kpi_decoding_slot_made) and the
-- applier has built them anew.
CREATE OR REPLACE FUNCTION kpi.kpi_decoding_lost(reason text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
BEGIN
    UPDATE kpi.kpi_decoding SET slot_ok = false, lsn = NULL, lost = reason, lost_at = clock_timestamp();
    DELETE FROM kpi.kpi_summary_state;
    DELETE FROM kpi.kpi_changes;
    PERFORM set_config('kpi.changed', '{"all": true}', true);
END
$fn$;

-- A new slot, consistent from `consistent`, on a standby or not: every transaction committing
-- after it will be decoded. The summaries (stopped) are built anew from a snapshot taken after
-- this commit.
DROP FUNCTION IF EXISTS kpi.kpi_decoding_slot_made(text, pg_lsn);  -- (before on_standby)
CREATE OR REPLACE FUNCTION kpi.kpi_decoding_slot_made(slot text, consistent pg_lsn, on_standby boolean) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
BEGIN
    DELETE FROM kpi.kpi_summary_state;
    DELETE FROM kpi.kpi_changes;
    UPDATE kpi.kpi_decoding d SET slot = kpi_decoding_slot_made.slot, lsn = consistent, slot_ok = true,
                                  on_standby = kpi_decoding_slot_made.on_standby;
END
$fn$;

-- The decoding state for /readyz: the slot's name, whether it is usable, and why the last was lost.
-- (Its columns grew: a function's result type is replaced only by a new one.)
DROP FUNCTION IF EXISTS kpi.kpi_decoding_state();
CREATE FUNCTION kpi.kpi_decoding_state()
RETURNS TABLE (slot text, slot_ok boolean, lost text, lost_at timestamptz, on_standby boolean)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
    SELECT d.slot, d.slot_ok, d.lost, d.lost_at, d.on_standby FROM kpi.kpi_decoding d
$fn$;
