--
-- ddl: the application's schema changes follow the tenants that are moving
-- (the event trigger clinic_migrate.follow_ddl), in a database of its own:
-- what is carried to the copies, what is refused, what stays the shared
-- table's own.
--
SELECT current_database() AS regress_db \gset
SET client_min_messages = warning;
CREATE DATABASE regress_clinic_ddl;
\c regress_clinic_ddl
CREATE EXTENSION clinic_migrate;
RESET client_min_messages;
SET clinic_migrate.progress_interval = 0;
\pset null '(null)'

-- the application's tables belong to its owner role, which deploys
CREATE ROLE regress_ddl_owner;
GRANT CREATE ON SCHEMA public TO regress_ddl_owner;
SET ROLE regress_ddl_owner;
CREATE TABLE tenants (tenant_id text PRIMARY KEY);
CREATE TABLE patients (tenant_id text NOT NULL REFERENCES tenants, id integer NOT NULL,
                       name text, PRIMARY KEY (tenant_id, id));
CREATE TABLE visits (id serial PRIMARY KEY, tenant_id text NOT NULL, patient_id integer NOT NULL,
                     FOREIGN KEY (tenant_id, patient_id) REFERENCES patients);
CREATE TABLE clinics (code text PRIMARY KEY);
INSERT INTO tenants VALUES ('t1'), ('t2'), ('t3');
INSERT INTO patients SELECT 't' || (1 + i % 3), i, 'patient ' || i FROM generate_series(1, 30) i;
INSERT INTO visits (tenant_id, patient_id) SELECT tenant_id, id FROM patients;
INSERT INTO clinics VALUES ('north'), ('south');
RESET ROLE;
SELECT clinic_migrate.exclude_table('clinics', 'reference data');

-- t1 copied and in sync, t2 cut over, t3 not moving
SELECT schema_name FROM clinic_migrate.migrate_tenant('t1');
SELECT schema_name FROM clinic_migrate.migrate_tenant('t2');
SELECT schema_name FROM clinic_migrate.cutover('t2');

-- a deploy: ADD COLUMN with a constant default, a backfill of t1, a new
-- foreign key to a table that stays shared and one to a table each copy has
SET ROLE regress_ddl_owner;
ALTER TABLE patients ADD COLUMN insurance text DEFAULT 'none',
                     ADD COLUMN clinic text REFERENCES clinics;
UPDATE patients SET insurance = 'gold', clinic = 'north' WHERE tenant_id = 't1' AND id = 3;
ALTER TABLE visits ADD COLUMN referred_by integer,
                   ADD CONSTRAINT visits_referral FOREIGN KEY (tenant_id, referred_by) REFERENCES patients;
RESET ROLE;
SELECT n.nspname, c.relname, string_agg(a.attname, ', ' ORDER BY a.attnum) AS columns
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relname IN ('patients', 'visits') AND n.nspname IN ('public', 'tenant_t1', 'tenant_t2')
  AND a.attnum > 0 AND NOT a.attisdropped
GROUP BY 1, 2 ORDER BY 2, 1;
SELECT conrelid::regclass AS copy, confrelid::regclass AS points_at
FROM pg_constraint WHERE conname IN ('patients_clinic_fkey', 'visits_referral') ORDER BY 1::text;
SELECT clinic_migrate.sync_now('t1') > 0 AS replayed;
SELECT id, insurance, clinic FROM tenant_t1.patients WHERE id IN (3, 6) ORDER BY id;
SELECT table_name, source_rows, match FROM clinic_migrate.validate_migration('t1') ORDER BY 1;

-- a volatile default: the copy of t1 takes the shared rows' values; t2 (cut
-- over) keeps its own schema's, where its rows live
ALTER TABLE patients ADD COLUMN registered timestamptz NOT NULL DEFAULT clock_timestamp();
SELECT count(*) AS differing FROM public.patients s JOIN tenant_t1.patients t USING (tenant_id, id)
WHERE s.registered IS DISTINCT FROM t.registered;
SELECT table_name, source_rows, match FROM clinic_migrate.validate_migration('t1') ORDER BY 1;

-- more of a deploy: types, defaults, NOT NULL, a CHECK, an index, renames
ALTER TABLE patients ALTER COLUMN insurance TYPE varchar(20),
                     ALTER COLUMN insurance SET DEFAULT 'basic',
                     ALTER COLUMN name SET NOT NULL,
                     ADD CONSTRAINT insurance_named CHECK (insurance <> '');
CREATE INDEX patients_insurance ON patients (insurance);
ALTER TABLE patients RENAME COLUMN insurance TO plan;
ALTER TABLE patients RENAME CONSTRAINT insurance_named TO plan_named;
ALTER TABLE patients DROP COLUMN registered;
SELECT n.nspname, format_type(a.atttypid, a.atttypmod) AS type,
       (SELECT attnotnull FROM pg_attribute WHERE attrelid = c.oid AND attname = 'name') AS name_not_null,
       pg_get_expr(d.adbin, d.adrelid) AS plan_default,
       (SELECT conname FROM pg_constraint WHERE conrelid = c.oid AND contype = 'c'
          AND conname <> 'clinic_migrate_tenant_check') AS "check",
       (SELECT count(*) FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
        WHERE i.indrelid = c.oid AND ic.relname = 'patients_insurance') AS index
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'plan'
LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
WHERE c.relname = 'patients' AND n.nspname IN ('public', 'tenant_t1', 'tenant_t2') ORDER BY 1;
SELECT count(*) AS registered_columns_left FROM pg_attribute
WHERE attname = 'registered' AND NOT attisdropped;

-- the application writes t2 where it lives, with the new columns; reverse
-- replay brings them to its shared rows; t1's copy follows its shared rows
BEGIN;
SELECT clinic_migrate.set_tenant('t2', true) IS NOT NULL AS routed;
UPDATE patients SET plan = 'silver' WHERE id = 4;
INSERT INTO patients (tenant_id, id, name, plan, clinic) VALUES ('t2', 100, 'new', 'gold', 'south');
COMMIT;
UPDATE public.patients SET plan = 'bronze' WHERE tenant_id = 't1' AND id = 6;
-- (two rounds in one statement: each takes only its own tenant's keys)
SELECT clinic_migrate.sync_now('t1') AS t1_keys, clinic_migrate.sync_now('t2') AS t2_keys;
SELECT tenant_id, id, plan, clinic FROM public.patients WHERE id IN (4, 6, 100) ORDER BY id;
SELECT tenant_id, id, plan FROM tenant_t1.patients WHERE id = 6;
SELECT table_name, source_rows, match FROM clinic_migrate.validate_migration('t1') ORDER BY 1;
SELECT table_name, source_rows, match FROM clinic_migrate.validate_migration('t2') ORDER BY 1;

-- refused while a tenant has a copy: the key, the tenant column, the table's name
\set VERBOSITY default
ALTER TABLE patients ALTER COLUMN id TYPE bigint;
-- (CASCADE, as PostgreSQL's hint about the capture triggers says, included)
ALTER TABLE visits DROP COLUMN tenant_id CASCADE;
ALTER TABLE patients RENAME COLUMN id TO patient_no;
ALTER TABLE patients RENAME TO people;
-- and by the relation's kind, whatever the statement calls it
ALTER INDEX patients RENAME TO people;
ALTER TABLE patients SET SCHEMA reports_not_here;
CREATE SCHEMA elsewhere;
ALTER TABLE patients SET SCHEMA elsewhere;
DROP SCHEMA elsewhere;
ALTER VIEW patients RENAME COLUMN name TO full_name;
SELECT count(*) AS full_name_columns FROM pg_attribute WHERE attname = 'full_name' AND NOT attisdropped;
ALTER TABLE patients RENAME COLUMN full_name TO name;
-- found by the relation PostgreSQL changed, not by its name looked up again:
-- a temporary table that now has the old name, a function that changes
-- search_path while the statement runs
CREATE TEMP TABLE p_old (x integer);
ALTER TABLE patients RENAME TO p_old;
DROP TABLE pg_temp.p_old;
CREATE FUNCTION path_changer(integer) RETURNS integer LANGUAGE plpgsql AS
$$BEGIN PERFORM set_config('search_path', 'pg_catalog', false); RETURN $1; END$$;
ALTER TABLE patients ALTER COLUMN id TYPE bigint USING path_changer(id);
DROP FUNCTION path_changer(integer);
-- a change that would recurse into inheritance children: refused; ONLY is carried
CREATE TABLE patients_history () INHERITS (patients);
ALTER TABLE patients ALTER COLUMN name SET STATISTICS 200;
ALTER TABLE ONLY patients ALTER COLUMN name SET STATISTICS 200;
SELECT c.relnamespace::regnamespace, a.attstattarget FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
WHERE c.relname = 'patients' AND a.attname = 'name' ORDER BY 1::text;
DROP TABLE patients_history;
-- a copy itself takes no column change before finalize (0.6): refused, and
-- the shared table's change reaches it
ALTER TABLE patients ADD COLUMN scratch integer;
ALTER TABLE tenant_t2.patients DROP COLUMN scratch;
ALTER TABLE patients DROP COLUMN scratch;
SELECT count(*) AS scratch_columns FROM pg_attribute WHERE attname = 'scratch' AND NOT attisdropped;
-- a copy the deploying role may not alter: PostgreSQL's refusal, naming the copy
CREATE ROLE regress_ddl_stranger;
ALTER TABLE tenant_t1.visits OWNER TO regress_ddl_stranger;
SET ROLE regress_ddl_owner;
ALTER TABLE visits ADD COLUMN note text;
RESET ROLE;
ALTER TABLE tenant_t1.visits OWNER TO regress_ddl_owner;
-- CREATE INDEX CONCURRENTLY cannot run again on the copies: a warning says so
CREATE INDEX CONCURRENTLY visits_referred ON visits (referred_by);
\set VERBOSITY terse
SELECT count(*) AS visits_note_columns FROM pg_attribute WHERE attname = 'note';
SELECT indrelid::regclass FROM pg_index WHERE indexrelid::regclass::text LIKE '%visits_referred%' ORDER BY 1::text;

-- what is the shared table's own is not carried
ALTER TABLE patients SET (fillfactor = 90);
SELECT n.nspname, c.reloptions FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relname = 'patients' ORDER BY 1;

-- the application's triggers come with the tenant's tables (firing mode and
-- all): they fire for the application's writes, in the shared tables before
-- cutover and in the schema after, never for the copy or the replay, which
-- write as a replica
CREATE TABLE audit (n serial PRIMARY KEY, tbl text, op text, who text, id integer);
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.name := NEW.name || ' (touched)'; RETURN NEW; END $$;
CREATE FUNCTION audit_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO public.audit (tbl, op, who, id)
  VALUES (TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, TG_OP, coalesce(NEW.tenant_id, OLD.tenant_id),
          coalesce(NEW.id, OLD.id));
  RETURN NULL;
END $$;
CREATE FUNCTION audit_batch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO public.audit (tbl, op, who, id)
  SELECT TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, 'batch of ' || TG_OP, min(tenant_id), count(*) FROM added;
  RETURN NULL;
END $$;
CREATE TRIGGER patients_touch BEFORE UPDATE OF name ON patients FOR EACH ROW
    WHEN (OLD.name IS DISTINCT FROM NEW.name) EXECUTE FUNCTION touch();
CREATE TRIGGER patients_audit AFTER INSERT OR UPDATE OR DELETE ON patients
    FOR EACH ROW EXECUTE FUNCTION audit_row();
CREATE TRIGGER patients_batch AFTER INSERT ON patients REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION audit_batch();
CREATE TRIGGER patients_off AFTER DELETE ON patients FOR EACH ROW EXECUTE FUNCTION audit_row();
ALTER TABLE patients DISABLE TRIGGER patients_off;
-- ALWAYS would fire for the copy and the replay: it comes as ENABLE
CREATE FUNCTION noop() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NULL; END$$;
CREATE TRIGGER patients_always AFTER INSERT ON patients FOR EACH ROW EXECUTE FUNCTION noop();
ALTER TABLE patients ENABLE ALWAYS TRIGGER patients_always;
-- and the views over its tables, options and all; a view of reference data only
-- stays shared
CREATE VIEW patient_names WITH (security_barrier) AS
    SELECT tenant_id, id, name FROM patients WHERE name IS NOT NULL;
CREATE VIEW early_patients AS SELECT * FROM patient_names WHERE id < 100 WITH LOCAL CHECK OPTION;
CREATE VIEW visit_counts AS
    SELECT p.tenant_id, p.id, count(v.id) AS visits
    FROM patients p LEFT JOIN visits v ON v.tenant_id = p.tenant_id AND v.patient_id = p.id GROUP BY 1, 2;
CREATE MATERIALIZED VIEW tenant_sizes AS SELECT tenant_id, count(*) AS patients FROM patients GROUP BY 1;
CREATE VIEW clinic_codes AS SELECT code FROM clinics;
COMMENT ON VIEW visit_counts IS 'visits per patient';
GRANT SELECT ON patient_names TO regress_ddl_owner;
-- a view whose function takes the shared table's row type cannot be made
-- again over the tenant's table: a WARNING, and the move goes on
CREATE FUNCTION named(p patients) RETURNS boolean LANGUAGE sql AS 'SELECT p.name IS NOT NULL';
CREATE VIEW named_patients AS SELECT p.id FROM patients p WHERE named(p);
-- a role with CREATE on the source schema: its materialized view is made again
-- as its own, never filled with the migrating superuser's rights
CREATE ROLE regress_ddl_mallory;
GRANT CREATE ON SCHEMA public TO regress_ddl_mallory;
SET ROLE regress_ddl_mallory;
CREATE FUNCTION escalate() RETURNS integer LANGUAGE plpgsql AS $$
BEGIN
  IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
    EXECUTE 'ALTER ROLE regress_ddl_mallory SUPERUSER';
  END IF;
  RETURN 1;
END $$;
CREATE MATERIALIZED VIEW mallory_stats AS SELECT count(*) AS n, escalate() AS x FROM patients WITH NO DATA;
RESET ROLE;
-- what the copy cannot carry is said before the move, and listed
CREATE SCHEMA reports;
CREATE VIEW reports.all_patients AS SELECT tenant_id, id FROM public.patients;
CREATE FUNCTION count_patients() RETURNS bigint LANGUAGE sql AS 'SELECT count(*) FROM public.patients';
CREATE RULE patients_keep_minus_one AS ON DELETE TO patients WHERE OLD.id = -1 DO INSTEAD NOTHING;
SELECT object, kind, shared_table FROM clinic_migrate.uncarried();
SELECT schema_name FROM clinic_migrate.migrate_tenant('t3');
SELECT rolsuper AS mallory_escalated FROM pg_roles WHERE rolname = 'regress_ddl_mallory';
SELECT relname, relowner::regrole, relispopulated FROM pg_class
WHERE relnamespace = 'tenant_t3'::regnamespace AND relname = 'mallory_stats';
SELECT c.relname, c.relkind, c.reloptions, obj_description(c.oid, 'pg_class') AS comment,
       has_table_privilege('regress_ddl_owner', c.oid, 'SELECT') AS owner_reads
FROM pg_class c WHERE c.relnamespace = 'tenant_t3'::regnamespace AND c.relkind IN ('v', 'm') ORDER BY 1;
SELECT tgname, tgenabled, pg_get_triggerdef(oid) LIKE '%WHEN ((old.name IS DISTINCT FROM new.name))%' AS "when",
       tgnewtable FROM pg_trigger
WHERE tgrelid = 'tenant_t3.patients'::regclass AND NOT tgisinternal AND tgname NOT LIKE 'clinic\_migrate\_%'
ORDER BY 1;
SELECT count(*) AS audited_by_the_copy FROM audit;
UPDATE patients SET name = 'renamed' WHERE tenant_id = 't3' AND id = 2;
SELECT clinic_migrate.sync_now('t3') AS keys;
SELECT tbl, op, who, id FROM audit ORDER BY n;
SELECT name FROM tenant_t3.patients WHERE id = 2;
SELECT schema_name FROM clinic_migrate.cutover('t3');
BEGIN;
SELECT clinic_migrate.set_tenant('t3', true) IS NOT NULL AS routed;
UPDATE patients SET name = 'again' WHERE id = 5;
INSERT INTO patients (tenant_id, id, name) VALUES ('t3', 200, 'new');
COMMIT;
SELECT clinic_migrate.sync_now('t3') AS keys;
SELECT tbl, op, who, id FROM audit ORDER BY n;
SELECT tenant_id, id, name FROM public.patients WHERE id IN (5, 200) ORDER BY id;
SELECT table_name, source_rows, match FROM clinic_migrate.validate_migration('t3') ORDER BY 1;
-- a routed session reads its own rows through the views, written in its schema
BEGIN;
SELECT clinic_migrate.set_tenant('t3', true) IS NOT NULL AS routed;
SELECT count(*) AS names, count(DISTINCT tenant_id) AS tenants FROM patient_names;
SELECT tenant_id, id, name FROM early_patients WHERE id IN (5, 200) ORDER BY id;
SELECT sum(visits) AS visits FROM visit_counts;
SELECT * FROM tenant_sizes;
SELECT count(*) AS codes FROM clinic_codes;
SAVEPOINT s;
INSERT INTO early_patients (tenant_id, id, name) VALUES ('t3', 500, 'too late');
ROLLBACK TO s;
COMMIT;

-- a finalized tenant's schema is its own: later changes are not carried there
SELECT * FROM clinic_migrate.finalize_tenant('t2');
ALTER TABLE patients ADD COLUMN phone text;
SELECT n.nspname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE a.attname = 'phone' ORDER BY 1;

\c :regress_db
SET client_min_messages = warning;
DROP DATABASE regress_clinic_ddl WITH (FORCE);
DROP ROLE regress_ddl_owner, regress_ddl_stranger, regress_ddl_mallory;
