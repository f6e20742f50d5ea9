--
-- errors: bad input, bad settings, tables that cannot be copied, schemas that are
-- not clinic_migrate's, and callers without privileges.  Each error comes with
-- its SQLSTATE and a hint, and changes nothing: no schema, no state, no run,
-- no change to the shared tables.
--
\pset null '(null)'
SET clinic_migrate.progress_interval = 0;

-- everything an error must leave alone
CREATE FUNCTION cm_regress.snapshot() RETURNS TABLE (what text, item text)
LANGUAGE sql STABLE AS $$
    SELECT 'schema', nspname::text FROM cm_regress.schemas
    UNION ALL
    SELECT 'tenant', concat_ws(' ', tenant_id, schema_name, state, rows_copied, last_error)
    FROM clinic_migrate.tenants
    UNION ALL
    SELECT 'tenant_table', concat_ws(' ', tenant_id, table_name, rows_copied, checkpoint, copied)
    FROM clinic_migrate.tenant_tables
    UNION ALL
    SELECT 'run', concat_ws(' ', tenant_id, action, status, rows_copied, error) FROM clinic_migrate.runs
    UNION ALL
    SELECT 'shared table', concat_ws(' ', table_name, row_count, content_md5)
    FROM cm_regress.public_fingerprint()
$$;
CREATE TEMP TABLE snap AS SELECT * FROM cm_regress.snapshot();
-- :changes lists what changed since the snapshot (nothing, after an error)
\set changes 'SELECT * FROM (SELECT ''new'' AS change, * FROM (SELECT * FROM cm_regress.snapshot() EXCEPT ALL SELECT * FROM snap) n UNION ALL SELECT ''gone'', * FROM (SELECT * FROM snap EXCEPT ALL SELECT * FROM cm_regress.snapshot()) g) c ORDER BY change, what, item COLLATE "C";'
\set resnap 'DROP TABLE snap; CREATE TEMP TABLE snap AS SELECT * FROM cm_regress.snapshot();'

-- NULL, empty and too long ids, for every function that takes one
SELECT * FROM clinic_migrate.migrate_tenant(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT clinic_migrate.create_tenant_schema(NULL);
SELECT * FROM clinic_migrate.validate_migration(NULL);
SELECT * FROM clinic_migrate.validate_differences(NULL);
SELECT clinic_migrate.rollback_tenant(NULL);
SELECT clinic_migrate.schema_name_for(NULL);
SELECT * FROM clinic_migrate.migrate_tenant('');
\echo :LAST_ERROR_SQLSTATE
SELECT clinic_migrate.create_tenant_schema('');
SELECT clinic_migrate.rollback_tenant('');
SELECT clinic_migrate.schema_name_for('');
-- 1024 bytes are accepted, 1025 are not (bytes, not characters)
SELECT octet_length(clinic_migrate.schema_name_for(repeat('x', 1024))) AS name_bytes;
SELECT * FROM clinic_migrate.migrate_tenant(repeat('x', 1025));
\echo :LAST_ERROR_SQLSTATE
SELECT clinic_migrate.create_tenant_schema(repeat('é', 513));
SELECT * FROM clinic_migrate.validate_migration(repeat('x', 2000));
SELECT clinic_migrate.rollback_tenant(repeat('x', 1025));
:changes

-- unknown tenants: no rows anywhere, not in the registry
SELECT * FROM clinic_migrate.migrate_tenant('nobody');
\echo :LAST_ERROR_SQLSTATE
SELECT clinic_migrate.create_tenant_schema('T1');
-- hostile ids are only ever values: nothing is injected, the tables are all there
SELECT * FROM clinic_migrate.migrate_tenant('x''; DROP TABLE patients; --');
\echo :LAST_ERROR_SQLSTATE
SELECT clinic_migrate.create_tenant_schema('t1''); DROP SCHEMA public CASCADE; --');
SELECT * FROM clinic_migrate.migrate_tenant('Zürich 東京');
SELECT * FROM clinic_migrate.migrate_tenant(repeat('a', 100));
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM clinic_migrate.validate_migration('x''; DROP TABLE patients; --');
SELECT count(*) AS shared_tables FROM pg_tables WHERE schemaname = 'public';
SELECT count(*) AS patients FROM public.patients;
:changes
-- a rollback of it has nothing to do, and is recorded
SELECT clinic_migrate.rollback_tenant('x''; DROP TABLE patients; --');
SELECT tenant_id, action, status, error FROM clinic_migrate.runs
WHERE tenant_id LIKE 'x%' ORDER BY run_id;
DELETE FROM clinic_migrate.runs WHERE tenant_id LIKE 'x%';

-- validating a tenant that was never migrated
SELECT * FROM clinic_migrate.validate_migration('t5');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM clinic_migrate.validate_differences('nobody');
SELECT * FROM clinic_migrate.validate_migration('t1', -1);
\echo :LAST_ERROR_SQLSTATE
:changes

-- t5: a new tenant, with a table in the plan that has no key
INSERT INTO public.tenants VALUES ('t5', 'West clinic');
INSERT INTO public.patients (tenant_id, patient_id, name) VALUES ('t5', 1, 'Lou');
INSERT INTO public.staff VALUES ('t5', 1, NULL, 'Max');
SELECT clinic_migrate.include_table('audit_log');
SELECT position, kind, note FROM clinic_migrate.plan() WHERE table_name = 'audit_log'::regclass;
:resnap
SELECT * FROM clinic_migrate.migrate_tenant('t5');
\echo :LAST_ERROR_SQLSTATE
SELECT clinic_migrate.create_tenant_schema('t5');
:changes
-- as the hint says: keep it shared, then t5 migrates
SELECT clinic_migrate.exclude_table('public.audit_log');
SELECT * FROM clinic_migrate.migrate_tenant('t5');
SELECT count(*) FILTER (WHERE match) AS matching, count(*) AS tables, sum(target_rows) AS rows
FROM clinic_migrate.validate_migration('t5');
:resnap

-- a schema of that name exists, made by hand: clinic_migrate does not touch it
INSERT INTO public.tenants VALUES ('t9', 'Hand-made clinic');
CREATE SCHEMA tenant_t9;
CREATE TABLE tenant_t9.keep_me (id int);
:resnap
SELECT * FROM clinic_migrate.migrate_tenant('t9');
\echo :LAST_ERROR_SQLSTATE
SELECT clinic_migrate.create_tenant_schema('t9');
SELECT * FROM clinic_migrate.validate_migration('t9');
SELECT clinic_migrate.rollback_tenant('t9');
SELECT relname FROM pg_class WHERE relnamespace = 'tenant_t9'::regnamespace ORDER BY 1;
DELETE FROM clinic_migrate.runs WHERE tenant_id = 't9';
:changes
-- another template keeps clear of it
SET clinic_migrate.schema_template = 'clinic_%s';
SELECT clinic_migrate.schema_name_for('t9');
SELECT schema_name, tables, rows_copied FROM clinic_migrate.migrate_tenant('t9');
RESET clinic_migrate.schema_template;
:resnap

-- bad settings
-- schema_template: exactly one %s, no other %, room for the id
SET clinic_migrate.schema_template = 'tenant_';
\echo :LAST_ERROR_SQLSTATE
SET clinic_migrate.schema_template = 'tenant_%s_%s';
SET clinic_migrate.schema_template = 'tenant_%d_%s';
SET clinic_migrate.schema_template = 'a_rather_long_schema_name_prefix_for_every_single_tenant_%s';
SHOW clinic_migrate.schema_template;
-- a template that gives a reserved name
INSERT INTO public.tenants VALUES ('pg_x', 'Reserved clinic');
:resnap
SET clinic_migrate.schema_template = '%s';
SELECT clinic_migrate.schema_name_for('pg_x');
SELECT * FROM clinic_migrate.migrate_tenant('pg_x');
\echo :LAST_ERROR_SQLSTATE
SELECT clinic_migrate.create_tenant_schema('pg_x');
RESET clinic_migrate.schema_template;
:changes
-- source_schema that does not exist
SET clinic_migrate.source_schema = 'no_such_schema';
SELECT * FROM clinic_migrate.plan();
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM clinic_migrate.migrate_tenant('t6');
SELECT clinic_migrate.create_tenant_schema('t6');
RESET clinic_migrate.source_schema;
-- a tenant column no table has
SET clinic_migrate.tenant_column = 'clinic_id';
SELECT * FROM clinic_migrate.migrate_tenant('t6');
\echo :LAST_ERROR_SQLSTATE
RESET clinic_migrate.tenant_column;
-- other settings are range-checked, and the prefix is reserved
SET clinic_migrate.batch_size = 0;
\echo :LAST_ERROR_SQLSTATE
SET clinic_migrate.progress_interval = -1;
SET clinic_migrate.batch_sise = 10;
\echo :LAST_ERROR_SQLSTATE
:changes
-- an integer tenant column and an id that is not an integer
CREATE SCHEMA int_src;
CREATE TABLE int_src.items (clinic_no integer, item_id integer, PRIMARY KEY (clinic_no, item_id));
INSERT INTO int_src.items VALUES (1, 1), (1, 2), (2, 1);
:resnap
SET clinic_migrate.source_schema = 'int_src';
SET clinic_migrate.tenant_column = 'clinic_no';
SET clinic_migrate.registry_table = '';
SELECT position, table_name, kind, key_columns FROM clinic_migrate.plan();
\set VERBOSITY terse
SELECT * FROM clinic_migrate.migrate_tenant('abc');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM clinic_migrate.migrate_tenant('99999999999');
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY default
:changes
-- an integer id works
SELECT * FROM clinic_migrate.migrate_tenant('2');
SELECT table_name, source_rows, target_rows, match FROM clinic_migrate.validate_migration('2');
SELECT tenant_id, schema_name, source_schema, tenant_column FROM clinic_migrate.tenants
WHERE tenant_id = '2';
RESET clinic_migrate.source_schema;
RESET clinic_migrate.tenant_column;
RESET clinic_migrate.registry_table;
-- the tenant keeps the source it was migrated from
SELECT table_name, match FROM clinic_migrate.validate_migration('2');
SET client_min_messages = warning;
SELECT clinic_migrate.rollback_tenant('2');
RESET client_min_messages;
DROP SCHEMA int_src CASCADE;
:resnap

-- A role without privileges: clinic_migrate grants nothing to PUBLIC
CREATE ROLE regress_migrator LOGIN;
INSERT INTO public.tenants VALUES ('t6', 'Harbour clinic');
INSERT INTO public.patients (tenant_id, patient_id, name, country) VALUES ('t6', 1, 'Ned', 'NL');
:resnap
SET ROLE regress_migrator;
SELECT * FROM clinic_migrate.plan();
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM clinic_migrate.migrate_tenant('t6');
\echo :LAST_ERROR_SQLSTATE
SELECT clinic_migrate.create_tenant_schema('t6');
SELECT clinic_migrate.schema_name_for('t6');
SELECT * FROM clinic_migrate.validate_migration('t1');
SELECT clinic_migrate.rollback_tenant('t1');
SELECT clinic_migrate.exclude_table('public.patients');
SELECT * FROM clinic_migrate.status;
SELECT * FROM clinic_migrate.runs;
RESET ROLE;
-- USAGE on the schema is not enough: EXECUTE is needed too
GRANT USAGE ON SCHEMA clinic_migrate TO regress_migrator;
SET ROLE regress_migrator;
SELECT * FROM clinic_migrate.migrate_tenant('t6');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM clinic_migrate.status;
RESET ROLE;
:changes
-- the grants a migration role needs: clinic_migrate's functions and tables,
-- SELECT on the shared tables, CREATE on the database, and REFERENCES on the
-- shared tables that the tenant's tables keep foreign keys to
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA clinic_migrate TO regress_migrator;
GRANT SELECT ON ALL TABLES IN SCHEMA clinic_migrate TO regress_migrator;
GRANT SELECT, TRIGGER ON ALL TABLES IN SCHEMA public TO regress_migrator;
GRANT REFERENCES ON public.tenants, public.countries TO regress_migrator;
DO $$ BEGIN EXECUTE format('GRANT CREATE ON DATABASE %I TO regress_migrator', current_database()); END $$;
SET ROLE regress_migrator;
SELECT current_user;
SELECT * FROM clinic_migrate.migrate_tenant('t6');
SELECT count(*) FILTER (WHERE match) AS matching, count(*) AS tables, sum(target_rows) AS rows
FROM clinic_migrate.validate_migration('t6');
SELECT tenant_id, state, rows_copied, tables_copied, tables FROM clinic_migrate.status
WHERE tenant_id = 't6';
SELECT action, status, rows_copied, started_by FROM clinic_migrate.runs
WHERE tenant_id = 't6' ORDER BY run_id;
-- its own tenants only: another role's schema cannot be rolled back
\set VERBOSITY terse
SELECT clinic_migrate.rollback_tenant('t1');
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY default
-- the state tables are read-only for it
DELETE FROM clinic_migrate.tenants WHERE tenant_id = 't6';
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
-- the schema and its tables belong to the role that migrated; the grants of
-- the shared table are kept
SELECT nspname, nspowner::regrole FROM pg_namespace WHERE nspname = 'tenant_t6';
SELECT relname, relowner::regrole, relacl FROM pg_class
WHERE relnamespace = 'tenant_t6'::regnamespace AND relname IN ('patients', 'staff') ORDER BY 1;
SELECT tenant_id, state FROM clinic_migrate.tenants WHERE tenant_id IN ('t1', 't6') ORDER BY 1;

-- all tenants now
SELECT tenant_id, schema_name, state, rows_copied, tables_copied, tables, last_error
FROM clinic_migrate.status ORDER BY tenant_id;
