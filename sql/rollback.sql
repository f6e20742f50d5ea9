--
-- rollback: rollback_tenant drops the tenant's schema and clinic_migrate's state
-- of it, never the shared rows; it is idempotent and recorded in runs, and the
-- tenant can be migrated again afterwards.
--
\pset null '(null)'
SET clinic_migrate.progress_interval = 0;
-- DROP SCHEMA ... CASCADE names every table it drops in a NOTICE
SET client_min_messages = warning;

-- t7: a tenant whose migration failed half-way
INSERT INTO public.tenants VALUES ('t7', 'Mountain clinic');
INSERT INTO public.patients (tenant_id, patient_id, name) VALUES ('t7', 1, 'Oz'), ('t7', 2, 'Pia');
INSERT INTO public.staff VALUES ('t7', 1, NULL, 'Quinn');
SELECT clinic_migrate.create_tenant_schema('t7');
ALTER TABLE tenant_t7.staff ADD CHECK (name <> 'Quinn');
SELECT * FROM clinic_migrate.migrate_tenant('t7');

-- the shared tables before any rollback
CREATE TEMP TABLE shared_before AS SELECT * FROM cm_regress.public_fingerprint();
SELECT table_name, row_count FROM shared_before ORDER BY 1;
SELECT tenant_id, schema_name, state FROM clinic_migrate.tenants ORDER BY 1;
SELECT * FROM cm_regress.schemas ORDER BY 1;

-- a migrated tenant: its schema and state go, true
SELECT clinic_migrate.rollback_tenant('t2');
SELECT count(*) AS schema_left FROM pg_namespace WHERE nspname = 'tenant_t2';
SELECT count(*) AS tenants_rows FROM clinic_migrate.tenants WHERE tenant_id = 't2';
SELECT count(*) AS tenant_tables_rows FROM clinic_migrate.tenant_tables WHERE tenant_id = 't2';
SELECT count(*) AS status_rows FROM clinic_migrate.status WHERE tenant_id = 't2';
-- again: nothing left to do, false
SELECT clinic_migrate.rollback_tenant('t2');
-- a tenant that was never migrated: false
SELECT clinic_migrate.rollback_tenant('t8');
SELECT clinic_migrate.rollback_tenant('nobody');
-- every call is in runs
SELECT tenant_id, schema_name, action, status, rows_copied, error, started_by = current_user AS by_me
FROM clinic_migrate.runs WHERE tenant_id IN ('t2', 't8', 'nobody') ORDER BY run_id;

-- the failed, half-copied t7 rolls back the same way
SELECT tenant_id, state, rows_copied, last_error FROM clinic_migrate.status WHERE tenant_id = 't7';
SELECT clinic_migrate.rollback_tenant('t7');
SELECT count(*) AS schema_left FROM pg_namespace WHERE nspname = 'tenant_t7';
SELECT action, status, error, sqlstate FROM clinic_migrate.runs WHERE tenant_id = 't7' ORDER BY run_id;

-- the role that migrated t6 may roll it back
SET ROLE regress_migrator;
SELECT clinic_migrate.rollback_tenant('t6');
RESET ROLE;
SELECT count(*) AS schema_left FROM pg_namespace WHERE nspname = 'tenant_t6';

-- a schema dropped by hand: migrate_tenant refuses, rollback_tenant clears the state
DROP SCHEMA tenant_t3 CASCADE;
SELECT * FROM clinic_migrate.migrate_tenant('t3');
SELECT clinic_migrate.rollback_tenant('t3');
SELECT count(*) AS tenants_rows FROM clinic_migrate.tenants WHERE tenant_id = 't3';
SELECT * FROM clinic_migrate.migrate_tenant('t3');

-- a schema renamed by hand is not clinic_migrate's any more: it is kept
ALTER SCHEMA tenant_t4 RENAME TO kept_t4;
SELECT clinic_migrate.rollback_tenant('t4');
SELECT count(*) AS tenants_rows FROM clinic_migrate.tenants WHERE tenant_id = 't4';
SELECT count(*) AS kept_tables FROM pg_tables WHERE schemaname = 'kept_t4';
DROP SCHEMA kept_t4 CASCADE;

-- the shared tables are exactly as they were: same rows, same content
SELECT b.table_name, a.row_count = b.row_count AS same_rows, a.content_md5 = b.content_md5 AS same_content
FROM shared_before b FULL JOIN cm_regress.public_fingerprint() a USING (table_name) ORDER BY 1;
SELECT table_name FROM cm_regress.public_fingerprint()
EXCEPT SELECT table_name FROM shared_before;
DROP TABLE shared_before;

-- after a rollback the tenant migrates again, and validates
SET clinic_migrate.batch_size = 4;
SELECT * FROM clinic_migrate.migrate_tenant('t2');
SELECT table_name, source_rows, target_rows, source_checksum = target_checksum AS same_checksum,
       fk_orphans, sequences_ok, match
FROM clinic_migrate.validate_migration('t2');
SELECT tenant_id, schema_name, state, rows_copied, rows_total, tables_copied, tables
FROM clinic_migrate.status WHERE tenant_id = 't2';
SELECT action, status, rows_copied, error FROM clinic_migrate.runs WHERE tenant_id = 't2' ORDER BY run_id;

-- roll everything back: no schema is left, no state
SELECT tenant_id, clinic_migrate.rollback_tenant(tenant_id) AS rolled_back
FROM clinic_migrate.tenants ORDER BY 1;
SELECT * FROM cm_regress.schemas ORDER BY 1;
SELECT count(*) AS tenants FROM clinic_migrate.tenants;
SELECT count(*) AS tenant_tables FROM clinic_migrate.tenant_tables;
SELECT action, status, count(*) FROM clinic_migrate.runs GROUP BY 1, 2 ORDER BY 1, 2;
RESET client_min_messages;
