--
-- partitions: partitioned tables move with the tenant (0.6, issue 5): the
-- copy is partitioned the same way with the same partitions (or one table,
-- clinic_migrate.keep_partitions = off), captured on every partition,
-- validated, cut over, rolled back and finalized like any table; new
-- partitions, dropped partitions and ALTERs of the partitioned table reach
-- the copies; TRUNCATE of one partition and DETACH are refused while a
-- tenant moves.
--
SELECT current_database() AS regress_db \gset
SET client_min_messages = warning;
CREATE DATABASE regress_clinic_partitions;
\c regress_clinic_partitions
CREATE EXTENSION clinic_migrate;
RESET client_min_messages;
SET clinic_migrate.progress_interval = 0;
SET TimeZone = 'UTC';
SET DateStyle = 'ISO, YMD';
\pset null '(null)'

CREATE ROLE regress_pt_owner;
CREATE ROLE regress_pt_app;
GRANT CREATE ON SCHEMA public TO regress_pt_owner;
CREATE SCHEMA regress_pt_own AUTHORIZATION regress_pt_owner;
SET ROLE regress_pt_owner;
CREATE TABLE tenants (tenant_id text PRIMARY KEY);
-- seed 004's usage events: by month, with a default partition
CREATE TABLE usage_events (tenant_id text NOT NULL REFERENCES tenants, id bigserial,
                           at timestamptz NOT NULL, kind text,
                           PRIMARY KEY (tenant_id, id, at)) PARTITION BY RANGE (at);
CREATE TABLE usage_events_2026_11 PARTITION OF usage_events
  FOR VALUES FROM ('2026-11-01 00:00+00') TO ('2026-12-01 00:00+00');
CREATE TABLE usage_events_2026_12 PARTITION OF usage_events
  FOR VALUES FROM ('2026-12-01 00:00+00') TO ('2027-01-01 00:00+00');
CREATE TABLE usage_events_default PARTITION OF usage_events DEFAULT;
CREATE INDEX usage_events_kind ON usage_events (tenant_id, kind);
-- two levels: by region, then by hash; the region a domain whose CHECK the
-- owner wrote (evaluated again when a partition bound is: never as a superuser)
CREATE FUNCTION region_ok(text) RETURNS boolean LANGUAGE sql AS
$$SELECT $1 IS NOT NULL AND NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user)$$;
CREATE DOMAIN region_code AS text CHECK (public.region_ok(VALUE));
CREATE TABLE invoices (tenant_id text NOT NULL REFERENCES tenants, id integer NOT NULL,
                       region region_code NOT NULL, amount integer NOT NULL CHECK (amount >= 0),
                       PRIMARY KEY (tenant_id, id, region)) PARTITION BY LIST (region);
CREATE TABLE invoices_us PARTITION OF invoices FOR VALUES IN ('us');
CREATE TABLE invoices_eu PARTITION OF invoices FOR VALUES IN ('eu') PARTITION BY HASH (id);
CREATE TABLE invoices_eu_0 PARTITION OF invoices_eu FOR VALUES WITH (MODULUS 2, REMAINDER 0);
CREATE TABLE invoices_eu_1 PARTITION OF invoices_eu FOR VALUES WITH (MODULUS 2, REMAINDER 1);
-- a child found through its foreign key to a partitioned table
CREATE TABLE invoice_lines (line_id serial PRIMARY KEY, tenant text NOT NULL, invoice_id integer NOT NULL,
                            region region_code NOT NULL, what text,
                            FOREIGN KEY (tenant, invoice_id, region) REFERENCES invoices ON UPDATE CASCADE ON DELETE CASCADE);
CREATE INDEX ON invoice_lines (tenant, invoice_id, region);
-- the application's trigger fires once per application write, never for the copy
CREATE TABLE event_audit (n bigserial PRIMARY KEY, event_id bigint, op text);
CREATE FUNCTION audit_event() RETURNS trigger LANGUAGE plpgsql AS
$$BEGIN INSERT INTO public.event_audit (event_id, op) VALUES (NEW.id, TG_OP); RETURN NEW; END$$;
CREATE TRIGGER usage_events_audit AFTER INSERT ON usage_events FOR EACH ROW EXECUTE FUNCTION audit_event();
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO regress_pt_app;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO regress_pt_app;
INSERT INTO tenants VALUES ('t1'), ('t2'), ('t3'), ('t4');
INSERT INTO usage_events (tenant_id, at, kind)
  SELECT 't' || (1 + i % 4), '2026-11-20 00:00+00'::timestamptz + i * interval '3 hours', 'k' || i % 3
  FROM generate_series(1, 200) i;
INSERT INTO invoices SELECT 't' || (1 + i % 4), i, CASE WHEN i % 3 = 0 THEN 'us' ELSE 'eu' END, i
  FROM generate_series(1, 60) i;
INSERT INTO invoice_lines (tenant, invoice_id, region, what) SELECT tenant_id, id, region, 'line' FROM invoices;
RESET ROLE;
SELECT clinic_migrate.exclude_table('event_audit');

-- partitioned tables are planned like any table, their partitions with them
SELECT position, table_name, kind FROM clinic_migrate.plan() ORDER BY table_name;

-- t1 copied and in sync (its schema made first, then emptied and loaded), t2 cut over
SELECT clinic_migrate.create_tenant_schema('t1');
SELECT schema_name FROM clinic_migrate.migrate_tenant('t1');
SELECT schema_name FROM clinic_migrate.migrate_tenant('t2');
SELECT c.oid::regclass AS copy, pg_get_partkeydef(c.oid) AS partition_key,
       (SELECT string_agg(p.relid::regclass || ' ' || pg_get_expr(k.relpartbound, k.oid), ', ' ORDER BY p.relid::regclass::text)
        FROM pg_partition_tree(c.oid) p JOIN pg_class k ON k.oid = p.relid WHERE p.level > 0) AS partitions
FROM pg_class c WHERE c.relnamespace = 'tenant_t1'::regnamespace AND c.relkind = 'p' AND NOT c.relispartition
ORDER BY 1;
SELECT tableoid::regclass AS partition, count(*) FROM tenant_t1.usage_events GROUP BY 1 ORDER BY 1;
SELECT tableoid::regclass AS partition, count(*) FROM tenant_t1.invoices GROUP BY 1 ORDER BY 1;
SELECT count(*) AS t1_lines FROM tenant_t1.invoice_lines;
SELECT count(*) AS audits_before FROM event_audit;
-- capture on every partition, firing ALWAYS, and the truncate guard on each
SELECT tgrelid::regclass AS "table", count(*) FILTER (WHERE tgname LIKE 'clinic\_migrate\_capture%') AS capture,
       count(*) FILTER (WHERE tgname = 'clinic_migrate_guard_truncate') AS guard,
       string_agg(DISTINCT tgenabled::text, '') AS enabled
FROM pg_trigger WHERE tgname LIKE 'clinic\_migrate\_%' AND tgrelid::regclass::text LIKE '%usage\_events%'
GROUP BY 1 ORDER BY 1;
SELECT schema_name FROM clinic_migrate.cutover('t2');

-- the application writes, as an ordinary role: through the parent, into a
-- partition directly, moving a row to another partition, into a child
SET ROLE regress_pt_app;
INSERT INTO usage_events (tenant_id, at, kind) VALUES ('t1', '2026-12-05 00:00+00', 'new'), ('t1', '2031-01-01 00:00+00', 'far');
UPDATE usage_events SET at = '2026-12-20 00:00+00' WHERE tenant_id = 't1' AND id = 4;
DELETE FROM usage_events_2026_11 WHERE tenant_id = 't1' AND id = 8;
INSERT INTO usage_events_2026_11 (tenant_id, at, kind) VALUES ('t1', '2026-11-02 00:00+00', 'direct');
UPDATE invoices SET region = 'us' WHERE tenant_id = 't1' AND id = 4;
INSERT INTO invoices VALUES ('t1', 1001, 'eu', 5);
INSERT INTO invoice_lines (tenant, invoice_id, region, what) VALUES ('t1', 1001, 'eu', 'new line');
DELETE FROM invoices WHERE tenant_id = 't1' AND id = 8;
BEGIN;
SELECT clinic_migrate.set_tenant('t2', true) IS NOT NULL AS routed;
INSERT INTO usage_events (tenant_id, at, kind) VALUES ('t2', '2026-12-06 00:00+00', 't2 new');
UPDATE invoices SET amount = amount + 1 WHERE id = 5;
COMMIT;
RESET ROLE;
-- TRUNCATE of one partition fires no row trigger: refused while a tenant
-- moves, in the shared tables and in a cut-over tenant's
SET ROLE regress_pt_owner;
TRUNCATE usage_events_2026_11;
TRUNCATE usage_events;
TRUNCATE tenant_t2.usage_events_2026_12;
-- nor may the capture triggers be dropped, enabled otherwise or disabled,
-- on the table or one of its partitions
DROP TRIGGER clinic_migrate_capture_insert ON usage_events;
ALTER TABLE usage_events_2026_12 DISABLE TRIGGER clinic_migrate_capture_update;
ALTER TABLE usage_events DISABLE TRIGGER USER;
ALTER TABLE tenant_t2.usage_events ENABLE TRIGGER clinic_migrate_capture_reverse;
-- the owner may execute the trigger functions (its partitions get our
-- triggers): a trigger of its own calling them does nothing but fail
CREATE TRIGGER a_forged AFTER INSERT ON usage_events FOR EACH ROW
  EXECUTE FUNCTION clinic_migrate.capture('log_usage_events', 'kind');
INSERT INTO usage_events (tenant_id, at, kind) VALUES ('t1', '2026-12-24 00:00+00', 't1');
SELECT count(*) AS forged_on_copies FROM pg_trigger WHERE tgname = 'a_forged';
DROP TRIGGER a_forged ON usage_events;
CREATE TRIGGER clinic_migrate_capture_aaa AFTER INSERT ON usage_events FOR EACH ROW
  EXECUTE FUNCTION clinic_migrate.capture('log_usage_events', 'kind');
INSERT INTO usage_events (tenant_id, at, kind) VALUES ('t1', '2026-12-24 00:00+00', 't1');
DROP TRIGGER clinic_migrate_capture_aaa ON usage_events;
RESET ROLE;
SELECT clinic_migrate.sync_now('t1') >= 0 AS replayed;
SELECT clinic_migrate.sync_now('t2') >= 0 AS replayed;
SELECT table_name, source_rows, target_rows, match FROM clinic_migrate.validate_migration('t1') ORDER BY 1;
-- 200 + 2 + 1 direct + 1 routed t2 write, and the UPDATE that moved a row
-- to another partition (an INSERT there, as PostgreSQL fires it): once each
SELECT count(*) AS audits_after FROM event_audit;

-- the monthly deploy: a new partition reaches every copy, captured
SET ROLE regress_pt_owner;
CREATE TABLE usage_events_2027_01 PARTITION OF usage_events
  FOR VALUES FROM ('2027-01-01 00:00+00') TO ('2027-02-01 00:00+00');
-- a partition one level down
CREATE TABLE invoices_apac PARTITION OF invoices FOR VALUES IN ('apac');
-- a session whose zone's abbreviation is ambiguous (CST) and whose dates are not ISO
SET TimeZone = 'Asia/Shanghai';
SET DateStyle = 'Postgres, MDY';
CREATE TABLE usage_events_2031_06 PARTITION OF usage_events
  FOR VALUES FROM ('2031-06-01 00:00+00') TO ('2031-07-01 00:00+00');
RESET ROLE;
SET TimeZone = 'UTC';
SET DateStyle = 'ISO, YMD';
SELECT count(*) AS copies, count(DISTINCT pg_get_expr(c.relpartbound, c.oid)) AS bounds,
       min(pg_get_expr(c.relpartbound, c.oid)) AS bound
FROM pg_class c WHERE c.relname = 'usage_events_2031_06';
SELECT c.oid::regclass AS partition, pg_get_expr(c.relpartbound, c.oid) AS bound
FROM pg_class c WHERE c.relname = 'invoices_apac' ORDER BY 1;
SELECT c.oid::regclass AS partition, pg_get_expr(c.relpartbound, c.oid) AS bound, pg_get_userbyid(c.relowner) AS owner
FROM pg_class c WHERE c.relname = 'usage_events_2027_01' ORDER BY 1;
SELECT tgrelid::regclass AS "table", string_agg(tgname || ':' || tgenabled::text, ', ' ORDER BY tgname) AS ours
FROM pg_trigger WHERE tgname LIKE 'clinic\_migrate\_%' AND tgrelid::regclass::text LIKE '%usage\_events\_2027\_01'
GROUP BY 1 ORDER BY 1;
SET ROLE regress_pt_app;
INSERT INTO usage_events (tenant_id, at, kind) VALUES ('t1', '2027-01-05 00:00+00', 'january');
INSERT INTO invoices VALUES ('t1', 2001, 'apac', 7);
BEGIN;
SELECT clinic_migrate.set_tenant('t2', true) IS NOT NULL AS routed;
INSERT INTO usage_events (tenant_id, at, kind) VALUES ('t2', '2027-01-06 00:00+00', 'january');
COMMIT;
RESET ROLE;
-- an empty table attached: the copies get the partition; one holding a
-- moving tenant's rows is refused (ATTACH fires no trigger); DETACH too
SET ROLE regress_pt_owner;
-- (its columns in another order, one dropped: its attribute numbers are not the parent's)
CREATE TABLE usage_events_2027_02 (kind text, junk integer, at timestamptz NOT NULL, id bigint NOT NULL,
                                   tenant_id text NOT NULL);
ALTER TABLE usage_events_2027_02 DROP COLUMN junk;
INSERT INTO usage_events_2027_02 (tenant_id, id, at, kind) VALUES ('t4', 9001, '2027-02-03 00:00+00', 'staying tenant');
ALTER TABLE usage_events ATTACH PARTITION usage_events_2027_02
  FOR VALUES FROM ('2027-02-01 00:00+00') TO ('2027-03-01 00:00+00');
RESET ROLE;
SET ROLE regress_pt_app;
INSERT INTO usage_events (tenant_id, at, kind) VALUES ('t1', '2027-02-10 00:00+00', 'february');
UPDATE usage_events SET at = '2027-02-11 00:00+00', kind = 'moved to february' WHERE tenant_id = 't1' AND kind = 'january';
DELETE FROM usage_events WHERE tenant_id = 't1' AND kind = 'february';
INSERT INTO usage_events (tenant_id, at, kind) VALUES ('t1', '2027-02-12 00:00+00', 'february');
RESET ROLE;
SET ROLE regress_pt_owner;
CREATE TABLE usage_events_2027_03 (tenant_id text NOT NULL, id bigint NOT NULL, at timestamptz NOT NULL, kind text);
INSERT INTO usage_events_2027_03 VALUES ('t1', 9002, '2027-03-03 00:00+00', 'moving tenant');
ALTER TABLE usage_events ATTACH PARTITION usage_events_2027_03
  FOR VALUES FROM ('2027-03-01 00:00+00') TO ('2027-04-01 00:00+00');
DROP TABLE usage_events_2027_03;
ALTER TABLE usage_events DETACH PARTITION usage_events_2026_12;
ALTER TABLE usage_events DETACH PARTITION usage_events_2026_12 CONCURRENTLY;
ALTER TABLE usage_events DETACH PARTITION usage_events_2026_12 FINALIZE;
SELECT count(*) AS detach_pending FROM pg_inherits WHERE inhdetachpending;
-- the copies' partitions are found by name: no rename while a tenant moves
ALTER TABLE usage_events_2026_12 RENAME TO usage_events_december;
ALTER TABLE usage_events_2026_12 SET SCHEMA regress_pt_own;
-- a column added to the partitioned table reaches every copy's partitions
ALTER TABLE usage_events ADD COLUMN source text DEFAULT 'app';
-- retention drops the oldest month: the copies' partition goes with it
DROP TABLE usage_events_2026_11;
RESET ROLE;
SELECT c.oid::regclass AS copy, (SELECT count(*) FROM pg_partition_tree(c.oid) p WHERE p.isleaf) AS leaves,
       (SELECT count(*) FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'source') AS has_source
FROM pg_class c WHERE c.relname = 'usage_events' ORDER BY 1;
SELECT clinic_migrate.sync_now('t1') >= 0 AS replayed;
SELECT clinic_migrate.sync_now('t2') >= 0 AS replayed;
SELECT table_name, source_rows, target_rows, match FROM clinic_migrate.validate_migration('t1') ORDER BY 1;
SELECT table_name, source_rows, target_rows, match FROM clinic_migrate.validate_migration('t2') ORDER BY 1;

-- one table for t3 (keep_partitions off): all its rows in a plain table
SET clinic_migrate.keep_partitions = off;
SELECT schema_name FROM clinic_migrate.migrate_tenant('t3');
RESET clinic_migrate.keep_partitions;
SELECT c.oid::regclass AS copy, c.relkind FROM pg_class c
WHERE c.relnamespace = 'tenant_t3'::regnamespace AND c.relkind IN ('r', 'p') ORDER BY 1;
INSERT INTO usage_events (tenant_id, at, kind) VALUES ('t3', '2027-01-09 00:00+00', 'one table');
SELECT clinic_migrate.sync_now('t3') >= 0 AS replayed;
SELECT table_name, source_rows, target_rows, match FROM clinic_migrate.validate_migration('t3') ORDER BY 1;
-- t3's copy is one table: a dropped partition would leave its rows there (refused);
-- an attached table with t3's rows could not reach it (refused)
SET ROLE regress_pt_owner;
DROP TABLE usage_events_2027_01;
CREATE TABLE usage_events_2027_03 (LIKE usage_events);
INSERT INTO usage_events_2027_03 (tenant_id, id, at) VALUES ('t3', 9003, '2027-03-03 00:00+00');
ALTER TABLE usage_events ATTACH PARTITION usage_events_2027_03
  FOR VALUES FROM ('2027-03-01 00:00+00') TO ('2027-04-01 00:00+00');
DROP TABLE usage_events_2027_03;
-- a table of that name that is no partition: its drop touches no copy
CREATE TABLE regress_pt_own.usage_events_2027_02 (x integer);
DROP TABLE regress_pt_own.usage_events_2027_02;
RESET ROLE;
SELECT count(*) AS t1_february_partition FROM pg_class WHERE relname = 'usage_events_2027_02'
  AND relnamespace = 'tenant_t1'::regnamespace;
SELECT schema_name FROM clinic_migrate.cutover('t3');

-- t2 rolls back: its writes after cutover are in the shared partitions
SELECT clinic_migrate.rollback_tenant('t2');
SELECT tableoid::regclass AS partition, kind FROM usage_events WHERE tenant_id = 't2' AND (kind LIKE 't2%' OR kind = 'january') ORDER BY 1, 2;
-- t1 and t3 finish: their rows leave the shared partitions
SELECT schema_name FROM clinic_migrate.cutover('t1');
SELECT schema_name, rows_archived > 0 AS archived, finalized FROM clinic_migrate.finalize_tenant('t1');
SELECT schema_name, rows_archived > 0 AS archived, finalized FROM clinic_migrate.finalize_tenant('t3');
SELECT tenant_id, count(*) FROM usage_events GROUP BY 1 ORDER BY 1;
SELECT count(*) AS t1_events, count(*) FILTER (WHERE kind = 'january') AS january FROM tenant_t1.usage_events;
SELECT count(*) AS t3_events FROM tenant_t3.usage_events;
-- after finalize, a routed write lands in the tenant's own partition and fires its trigger
SET ROLE regress_pt_app;
BEGIN;
SELECT clinic_migrate.set_tenant('t1', true) IS NOT NULL AS routed;
INSERT INTO usage_events (tenant_id, at, kind) VALUES ('t1', '2027-01-10 00:00+00', 'mine');
SELECT tableoid::regclass AS partition FROM usage_events WHERE kind = 'mine';
COMMIT;
RESET ROLE;
SELECT op, count(*) FROM event_audit GROUP BY 1;
-- tenants that stay (row level security): a query that names a partition
-- itself is covered too, not only one through the partitioned table
SELECT clinic_migrate.enable_tenant_rls(ARRAY['regress_pt_app'], 'enforce') AS tables;
SELECT c.oid::regclass AS "table", c.relrowsecurity AS rls, count(p.polname) AS policies
FROM pg_class c LEFT JOIN pg_policy p ON p.polrelid = c.oid AND p.polname LIKE 'clinic\_migrate\_%'
WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p')
  AND (c.relname LIKE 'usage\_events%' OR c.relname LIKE 'invoice%')
GROUP BY 1, 2 ORDER BY 1::text;
-- a partition made afterwards gets the policy too
SET ROLE regress_pt_owner;
CREATE TABLE usage_events_2032_01 PARTITION OF usage_events
  FOR VALUES FROM ('2032-01-01 00:00+00') TO ('2032-02-01 00:00+00');
INSERT INTO usage_events (tenant_id, at, kind) VALUES ('t2', '2032-01-02 00:00+00', 'later'), ('t4', '2032-01-03 00:00+00', 'later');
RESET ROLE;
GRANT SELECT ON usage_events_2032_01 TO regress_pt_app;
SET ROLE regress_pt_app;
BEGIN;
SELECT clinic_migrate.set_tenant('t4', true) IS NOT NULL AS routed;
SELECT string_agg(DISTINCT tenant_id, ',') AS seen_in_a_new_partition FROM usage_events_2032_01;
SELECT string_agg(DISTINCT tenant_id, ',') AS seen_through_parent FROM usage_events;
SELECT string_agg(DISTINCT tenant_id, ',') AS seen_in_a_partition FROM usage_events_2026_12;
SELECT string_agg(DISTINCT tenant_id, ',') AS seen_in_a_subpartition FROM invoices_eu_1;
COMMIT;
RESET ROLE;
SELECT clinic_migrate.disable_tenant_rls() AS uncovered;
SELECT count(*) AS policies_left FROM pg_policy WHERE polname LIKE 'clinic\_migrate\_%';

-- the owner of a captured partitioned table may execute the trigger
-- functions (a partition's maker gets our triggers): on a table
-- clinic_migrate does not capture, they do nothing but fail
SET ROLE regress_pt_owner;
CREATE TABLE regress_pt_own.mine (tenant_id text, id integer PRIMARY KEY);
CREATE TRIGGER decoy AFTER INSERT ON regress_pt_own.mine FOR EACH ROW
  EXECUTE FUNCTION clinic_migrate.capture('log_usage_events', 'tenant_id');
INSERT INTO regress_pt_own.mine VALUES ('t2', 1);
CREATE TRIGGER decoy2 AFTER INSERT ON regress_pt_own.mine FOR EACH ROW
  EXECUTE FUNCTION clinic_migrate.capture_reverse('log_usage_events', 'tenant_id', 't2');
DROP TRIGGER decoy ON regress_pt_own.mine;
INSERT INTO regress_pt_own.mine VALUES ('t2', 1);
SELECT clinic_migrate.capture();
RESET ROLE;
SELECT clinic_migrate.guard_ddl();

\c :regress_db
SET client_min_messages = warning;
DROP DATABASE regress_clinic_partitions WITH (FORCE);
DROP ROLE regress_pt_owner, regress_pt_app;
