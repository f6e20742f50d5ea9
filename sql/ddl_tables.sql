--
-- ddl_tables: tables the application creates, drops, comments and grants
-- while tenants move (0.6): a new table the plan takes gets its copies in
-- the same transaction, in every state; DROP TABLE and DROP INDEX reach the
-- copies; a tenant's copy itself takes no column change until finalize.
--
SELECT current_database() AS regress_db \gset
SET client_min_messages = warning;
CREATE DATABASE regress_clinic_ddl_tables;
\c regress_clinic_ddl_tables
CREATE EXTENSION clinic_migrate;
RESET client_min_messages;
SET clinic_migrate.progress_interval = 0;
\pset null '(null)'

CREATE ROLE regress_dt_owner;
CREATE ROLE regress_dt_reader;
GRANT CREATE ON SCHEMA public TO regress_dt_owner;
SET ROLE regress_dt_owner;
CREATE TABLE tenants (tenant_id text PRIMARY KEY);
CREATE TABLE patients (tenant_id text NOT NULL REFERENCES tenants, id serial,
                       name text, PRIMARY KEY (tenant_id, id));
INSERT INTO tenants VALUES ('t1'), ('t2'), ('t3'), ('t4');
INSERT INTO patients (tenant_id, name) SELECT 't' || (1 + i % 4), 'patient ' || i FROM generate_series(1, 20) i;
RESET ROLE;

-- t1 copied and in sync, t2 cut over, t3 only has its empty schema, t4 stays
SELECT schema_name FROM clinic_migrate.migrate_tenant('t1');
SELECT schema_name FROM clinic_migrate.migrate_tenant('t2');
SELECT schema_name FROM clinic_migrate.cutover('t2');
SELECT clinic_migrate.create_tenant_schema('t3');

-- a deploy creates a table with the tenant column: each tenant has its copy
-- now, with its key, foreign keys to its own tables and capture
SET ROLE regress_dt_owner;
CREATE TABLE invoices (tenant_id text NOT NULL REFERENCES tenants, id serial,
                       patient_id integer NOT NULL, amount integer NOT NULL,
                       PRIMARY KEY (tenant_id, id), FOREIGN KEY (tenant_id, patient_id) REFERENCES patients);
RESET ROLE;
SELECT tenant_id, table_name, kind, copied, rows_total FROM clinic_migrate.tenant_tables
WHERE table_name = 'invoices' ORDER BY 1;
SELECT conrelid::regclass AS copy, confrelid::regclass AS points_at FROM pg_constraint
WHERE contype = 'f' AND conrelid::regclass::text LIKE '%invoices'
ORDER BY conrelid::regclass::text, confrelid::regclass::text;
SELECT tgrelid::regclass AS "table", tgname FROM pg_trigger
WHERE tgname LIKE 'clinic\_migrate\_%' AND tgrelid::regclass::text LIKE '%invoices'
ORDER BY tgrelid::regclass::text, tgname;
-- a cut-over tenant's new keys come from the shared sequence until finalize
BEGIN;
SET LOCAL search_path = pg_catalog;
SELECT pg_get_expr(d.adbin, d.adrelid) AS t2_default FROM pg_attrdef d
WHERE d.adrelid = 'tenant_t2.invoices'::regclass;
COMMIT;

-- the application writes it: t1 in the shared table (captured, replayed),
-- t2 where it lives (routed), t4 shared
INSERT INTO invoices (tenant_id, patient_id, amount) VALUES ('t1', 4, 10), ('t4', 3, 40);
BEGIN;
SELECT clinic_migrate.set_tenant('t2', true) IS NOT NULL AS routed;
INSERT INTO invoices (tenant_id, patient_id, amount) VALUES ('t2', 1, 20);
COMMIT;
-- a write of t2's rows in the shared table is refused there, as for any planned table
\set VERBOSITY terse
INSERT INTO public.invoices (tenant_id, patient_id, amount) VALUES ('t2', 1, 21);
\set VERBOSITY default
-- (t2's row reaches the shared table too, by reverse replay, for a rollback)
SELECT clinic_migrate.sync_now('t1') AS t1_keys, clinic_migrate.sync_now('t2') >= 0 AS t2_replayed;
SELECT 'tenant_t1' AS schema, tenant_id, id, amount FROM tenant_t1.invoices
UNION ALL SELECT 'tenant_t2', tenant_id, id, amount FROM tenant_t2.invoices
UNION ALL SELECT 'public', tenant_id, id, amount FROM public.invoices ORDER BY 1, 2, 3;

-- a table made with CREATE TABLE AS has rows and no key: a WARNING; its key
-- brings the copies, with each tenant's rows (none for t3, not started)
SET ROLE regress_dt_owner;
CREATE TABLE notes AS SELECT tenant_id, id, 'note of ' || name AS body FROM patients;
ALTER TABLE notes ADD PRIMARY KEY (tenant_id, id);
RESET ROLE;
SELECT tenant_id, table_name, copied, rows_total FROM clinic_migrate.tenant_tables
WHERE table_name = 'notes' ORDER BY 1;
SELECT count(*) AS t1_notes FROM tenant_t1.notes;
SELECT count(*) AS t2_notes FROM tenant_t2.notes;
SELECT count(*) AS t3_notes FROM tenant_t3.notes;

-- a child table, found through its foreign key
SET ROLE regress_dt_owner;
CREATE TABLE invoice_lines (id serial PRIMARY KEY, tenant text NOT NULL, invoice_id integer NOT NULL,
                            item text, FOREIGN KEY (tenant, invoice_id) REFERENCES invoices);
INSERT INTO invoice_lines (tenant, invoice_id, item)
SELECT tenant_id, id, 'line' FROM public.invoices WHERE tenant_id <> 't2';
RESET ROLE;
SELECT tenant_id, table_name, kind FROM clinic_migrate.tenant_tables
WHERE table_name = 'invoice_lines' ORDER BY 1;
SELECT clinic_migrate.sync_now('t1') AS t1_keys;
SELECT 'tenant_t1' AS schema, tenant, item FROM tenant_t1.invoice_lines
UNION ALL SELECT 'tenant_t2', tenant, item FROM tenant_t2.invoice_lines ORDER BY 1;

-- a temporary table is the session's own: nothing is said or made
CREATE TEMP TABLE scratch (tenant_id text PRIMARY KEY);
SELECT count(*) AS scratch_copies FROM clinic_migrate.tenant_tables WHERE table_name = 'scratch';

-- a table without a key keeps t1 from cutting over, with what to do
SET ROLE regress_dt_owner;
CREATE TABLE keyless (tenant_id text, v integer);
RESET ROLE;
SELECT schema_name FROM clinic_migrate.cutover('t1');
SET ROLE regress_dt_owner;
DROP TABLE keyless;
RESET ROLE;

-- COMMENT, GRANT and REVOKE reach the copies (and ON ALL TABLES IN SCHEMA)
SET ROLE regress_dt_owner;
COMMENT ON TABLE invoices IS 'money';
COMMENT ON COLUMN invoices.amount IS 'in cents';
GRANT SELECT ON invoices TO regress_dt_reader;
GRANT INSERT ON ALL TABLES IN SCHEMA public TO regress_dt_reader;
REVOKE INSERT ON patients FROM regress_dt_reader;
RESET ROLE;
SELECT c.oid::regclass AS "table", obj_description(c.oid, 'pg_class') AS comment,
       col_description(c.oid, 4) AS amount_comment,
       has_table_privilege('regress_dt_reader', c.oid, 'SELECT') AS reads,
       has_table_privilege('regress_dt_reader', c.oid, 'INSERT') AS inserts
FROM pg_class c WHERE c.relname = 'invoices' ORDER BY c.oid::regclass::text;
SELECT c.oid::regclass AS "table", has_table_privilege('regress_dt_reader', c.oid, 'INSERT') AS inserts
FROM pg_class c WHERE c.relname IN ('patients', 'notes') AND c.relkind = 'r' ORDER BY c.oid::regclass::text;

-- a tenant's copy itself takes no column change before finalize (the
-- application's migration, routed there by set_tenant): the shared table does
\set VERBOSITY default
SET ROLE regress_dt_owner;
BEGIN;
SELECT clinic_migrate.set_tenant('t2', true) IS NOT NULL AS routed;
ALTER TABLE patients ADD COLUMN phone text;
ROLLBACK;
ALTER TABLE tenant_t1.patients RENAME COLUMN name TO full_name;
ALTER TABLE tenant_t2.invoices DROP COLUMN amount;
-- what is the copy's own (an index) is allowed
CREATE INDEX t2_amounts ON tenant_t2.invoices (amount);
RESET ROLE;
\set VERBOSITY terse

-- DROP INDEX and DROP TABLE reach the copies, and the capture log goes
SET ROLE regress_dt_owner;
CREATE INDEX invoices_amount ON invoices (amount);
SELECT indrelid::regclass FROM pg_index WHERE indexrelid::regclass::text LIKE '%invoices_amount'
ORDER BY indrelid::regclass::text;
DROP INDEX invoices_amount;
SELECT count(*) AS amount_indexes FROM pg_class WHERE relname = 'invoices_amount';
DROP TABLE notes;
RESET ROLE;
SELECT count(*) AS notes_tables FROM pg_class WHERE relname = 'notes' AND relkind = 'r';
SELECT count(*) AS notes_records FROM clinic_migrate.tenant_tables WHERE table_name = 'notes';
SELECT count(*) AS notes_logs FROM clinic_migrate.capture_logs l WHERE l.log_table::text LIKE '%notes%';

-- CREATE INDEX CONCURRENTLY cannot run again inside its statement: each
-- copy's index waits in pending_indexes for its tenant's index job (no
-- scheduler here: the jobs stay queued); validation says so, cutover waits
-- for it, and one made by hand counts
\set VERBOSITY default
SET ROLE regress_dt_owner;
CREATE INDEX CONCURRENTLY invoices_patient ON invoices (tenant_id, patient_id);
RESET ROLE;
SELECT tenant_id, index_name, copy_table, ddl, queued_by, built_at IS NOT NULL AS built
FROM clinic_migrate.pending_indexes ORDER BY tenant_id;
SELECT tenant_id, action, state, enqueued_by FROM clinic_migrate.job_queue ORDER BY tenant_id;
SELECT count(*) AS t1_tables FROM clinic_migrate.validate_migration('t1');
SELECT schema_name FROM clinic_migrate.cutover('t1');
CREATE INDEX CONCURRENTLY invoices_patient ON tenant_t1.invoices USING btree (tenant_id, patient_id);
\set VERBOSITY terse
SELECT count(*) AS t1_tables FROM clinic_migrate.validate_migration('t1');
SELECT clinic_migrate.cancel(job_id) FROM clinic_migrate.job_queue WHERE tenant_id = 't1';

-- a trigger made on a planned table during the move reaches the copies
-- (0.7): it fires for the application's writes, once, in the shared table or
-- in a cut-over tenant's schema, never for the replay; DROP TRIGGER reaches
-- them too. A view made over a planned table reaches the tenants' schemas.
SET ROLE regress_dt_owner;
CREATE TABLE patient_log (n serial PRIMARY KEY, tbl text NOT NULL, name text);
CREATE FUNCTION log_patient() RETURNS trigger LANGUAGE plpgsql AS
$$BEGIN INSERT INTO public.patient_log (tbl, name) VALUES (TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, NEW.name); RETURN NEW; END$$;
CREATE TRIGGER patients_log AFTER INSERT ON patients FOR EACH ROW EXECUTE FUNCTION log_patient();
CREATE VIEW patient_names AS SELECT tenant_id, name FROM patients;
RESET ROLE;
SELECT tgrelid::regclass AS "table", tgname, tgenabled FROM pg_trigger WHERE tgname = 'patients_log'
ORDER BY 1::text;
SELECT c.oid::regclass AS view FROM pg_class c WHERE c.relname = 'patient_names' ORDER BY 1::text;
INSERT INTO patients (tenant_id, name) VALUES ('t1', 'written for t1');
BEGIN;
SELECT clinic_migrate.set_tenant('t2', true) IS NOT NULL AS routed;
INSERT INTO patients (tenant_id, name) VALUES ('t2', 'written for t2');
SELECT tenant_id, name FROM patient_names WHERE name LIKE 'written%';
COMMIT;
SELECT clinic_migrate.sync_now('t1') >= 0 AS replayed, clinic_migrate.sync_now('t2') >= 0 AS replayed;
SELECT tbl, name FROM patient_log ORDER BY n;
SET ROLE regress_dt_owner;
DROP TRIGGER patients_log ON patients;
-- the capture triggers of a plain shared table may not go while tenants move
DROP TRIGGER clinic_migrate_capture_insert ON patients;
ALTER TABLE patients DISABLE TRIGGER clinic_migrate_capture_delete;
ALTER TRIGGER clinic_migrate_capture_update ON patients RENAME TO capture_update;
RESET ROLE;
SELECT count(*) AS patients_log_triggers FROM pg_trigger WHERE tgname = 'patients_log';
-- a function put in a tenant's schema to take the place of the one a new
-- view calls: that tenant's view is not made (it would run the planted
-- function for whoever reads it)
SET ROLE regress_dt_owner;
CREATE FUNCTION public.label(t text) RETURNS text LANGUAGE sql AS 'SELECT upper(t)';
CREATE FUNCTION tenant_t2.label(t text) RETURNS text LANGUAGE sql AS 'SELECT ''planted'' || t';
RESET ROLE;
CREATE VIEW patient_labels AS SELECT tenant_id, label(name) AS label FROM patients;
SELECT c.oid::regclass AS view FROM pg_class c WHERE c.relname = 'patient_labels' ORDER BY 1::text;
-- CREATE OR REPLACE VIEW and DROP VIEW reach the tenants' views
CREATE OR REPLACE VIEW patient_names AS SELECT tenant_id, name, id FROM patients;
SELECT c.oid::regclass AS view, pg_get_userbyid(c.relowner) AS owner,
       (SELECT count(*) FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0) AS columns
FROM pg_class c WHERE c.relname = 'patient_names' ORDER BY 1::text;
-- a view the tenants have a copy of is found by name: not renamed, not moved
ALTER VIEW patient_names RENAME TO patient_names_old;
ALTER VIEW patient_names SET SCHEMA tenant_t3;
DROP VIEW patient_names, patient_labels;
SELECT count(*) AS views_left FROM pg_class WHERE relname IN ('patient_names', 'patient_labels');

-- both tenants validate with the new tables; t2 rolls back (its invoice
-- written in its schema is in the shared table again), t1 cuts over and
-- finalizes
SELECT table_name, source_rows, match FROM clinic_migrate.validate_migration('t1') ORDER BY 1;
SELECT table_name, source_rows, match FROM clinic_migrate.validate_migration('t2') ORDER BY 1;
SELECT clinic_migrate.rollback_tenant('t2');
SELECT tenant_id, amount FROM public.invoices WHERE tenant_id = 't2';
SELECT schema_name FROM clinic_migrate.cutover('t1');
SELECT * FROM clinic_migrate.finalize_tenant('t1');
SELECT count(*) AS t1_shared_invoices FROM public.invoices WHERE tenant_id = 't1';
SELECT tenant_id, amount FROM tenant_t1.invoices;

-- a sequence several planned tables draw from stays one sequence after
-- finalize, the tenant's own, past every table's values: a serial that
-- another table draws from too, and a sequence no column owns
SET ROLE regress_dt_owner;
CREATE SEQUENCE doc_ids;
CREATE TABLE docs (tenant_id text NOT NULL REFERENCES tenants, id bigint NOT NULL DEFAULT nextval('doc_ids'),
                   PRIMARY KEY (tenant_id, id));
CREATE TABLE memos (tenant_id text NOT NULL REFERENCES tenants, id bigint NOT NULL DEFAULT nextval('doc_ids'),
                    patient_seq integer NOT NULL DEFAULT nextval('patients_id_seq'), PRIMARY KEY (tenant_id, id));
INSERT INTO docs (tenant_id) SELECT 't4' FROM generate_series(1, 3);
INSERT INTO memos (tenant_id) SELECT 't4' FROM generate_series(1, 3);
RESET ROLE;
SELECT schema_name FROM clinic_migrate.migrate_tenant('t4');
SELECT schema_name FROM clinic_migrate.cutover('t4');
SELECT schema_name FROM clinic_migrate.finalize_tenant('t4');
BEGIN;
SET LOCAL search_path = pg_catalog;
SELECT c.oid::regclass AS "table", a.attname, pg_get_expr(d.adbin, d.adrelid) AS "default"
FROM pg_attrdef d JOIN pg_class c ON c.oid = d.adrelid JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = d.adnum
WHERE c.relnamespace = 'tenant_t4'::regnamespace AND c.relname IN ('patients', 'docs', 'memos')
ORDER BY c.relname, a.attname;
COMMIT;
BEGIN;
SELECT clinic_migrate.set_tenant('t4', true) IS NOT NULL AS routed;
INSERT INTO docs (tenant_id) VALUES ('t4') RETURNING id;
INSERT INTO memos (tenant_id) VALUES ('t4') RETURNING id, patient_seq;
INSERT INTO patients (tenant_id, name) VALUES ('t4', 'new') RETURNING id;
COMMIT;

-- a table of another role that references a planned table is dropped: the
-- foreign key's internal triggers on the planned table go with it, and are
-- not the copies' business
CREATE SCHEMA reader_s AUTHORIZATION regress_dt_reader;
GRANT REFERENCES ON patients TO regress_dt_reader;
SET ROLE regress_dt_reader;
CREATE TABLE reader_s.refs (n integer PRIMARY KEY, tenant_id text NOT NULL, patient_id integer NOT NULL,
                            FOREIGN KEY (tenant_id, patient_id) REFERENCES public.patients);
DROP TABLE reader_s.refs;
RESET ROLE;
DROP SCHEMA reader_s;
REVOKE REFERENCES ON patients FROM regress_dt_reader;

-- DROP OWNED drops a planned table too (0.7): the moving tenant's copy, its
-- record and the capture log go with it
CREATE ROLE regress_dt_leaver;
CREATE TABLE leftover (tenant_id text NOT NULL REFERENCES tenants, id integer NOT NULL, PRIMARY KEY (tenant_id, id));
ALTER TABLE leftover OWNER TO regress_dt_leaver;
SELECT tenant_id, table_name FROM clinic_migrate.tenant_tables WHERE table_name::text LIKE '%leftover' ORDER BY 1;
SELECT count(*) AS t3_records FROM clinic_migrate.tenant_tables WHERE tenant_id = 't3';
DROP OWNED BY regress_dt_leaver;
DROP ROLE regress_dt_leaver;
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relname LIKE 'leftover%' OR c.relname LIKE 'log\_leftover%' ORDER BY 1, 2;
SELECT count(*) AS t3_records FROM clinic_migrate.tenant_tables WHERE tenant_id = 't3';

-- the event trigger function is not for calling
SELECT clinic_migrate.follow_drop();

\c :regress_db
SET client_min_messages = warning;
DROP DATABASE regress_clinic_ddl_tables WITH (FORCE);
DROP ROLE regress_dt_owner, regress_dt_reader;
