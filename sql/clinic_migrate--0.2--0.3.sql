-- clinic_migrate 0.2 -> 0.3: a database dumped with pg_dump and restored, at any
-- state of a move, carries on (issue "clinic_migrate 4").
\echo Use "ALTER EXTENSION clinic_migrate UPDATE TO '0.3'" to load this file. \quit

-- No OID in persistent state.  OIDs change when a dump is restored; the reg*
-- types are OIDs that pg_dump writes as names and the restore reads back as
-- the new OIDs.
ALTER TABLE clinic_migrate.tenants
    ALTER COLUMN schema_oid TYPE regnamespace USING schema_oid::regnamespace;
ALTER TABLE clinic_migrate.tenant_tables
    ALTER COLUMN source_table TYPE regclass USING source_table::regclass,
    ALTER COLUMN target_table TYPE regclass USING target_table::regclass;
ALTER TABLE clinic_migrate.job_queue
    ALTER COLUMN run_as TYPE regrole USING run_as::regrole;

-- Which log holds the captured keys of which shared table.  Before 0.3 a log
-- was found by its name, log_<OID of the shared table>, which a restore
-- breaks; the capture triggers now find it here, from the table they fire on.
CREATE TABLE clinic_migrate.capture_logs (
    source_table  regclass PRIMARY KEY,
    log_table     regclass NOT NULL UNIQUE
);
COMMENT ON TABLE clinic_migrate.capture_logs IS
    'the capture log of each shared table (one for all its tenants)';
INSERT INTO clinic_migrate.capture_logs (source_table, log_table)
SELECT substr(c.relname, 5)::oid::regclass, c.oid::regclass
FROM pg_catalog.pg_class c
WHERE c.relnamespace OPERATOR(pg_catalog.=) 'clinic_migrate'::regnamespace
  AND c.relkind OPERATOR(pg_catalog.=) 'r'
  AND c.relname OPERATOR(pg_catalog.~) '^log_[0-9]+$'
  AND EXISTS (SELECT FROM pg_catalog.pg_class s
              WHERE s.oid OPERATOR(pg_catalog.=) substr(c.relname, 5)::oid);

-- pg_dump dumps the rows of these tables (and their sequences' positions):
-- status, history and the queue come back with a restore.  queue_control's
-- one row is made by CREATE EXTENSION itself; a restored queue is not paused.
SELECT pg_catalog.pg_extension_config_dump('clinic_migrate.excluded_tables', '');
SELECT pg_catalog.pg_extension_config_dump('clinic_migrate.tenants', '');
SELECT pg_catalog.pg_extension_config_dump('clinic_migrate.tenant_tables', '');
SELECT pg_catalog.pg_extension_config_dump('clinic_migrate.runs', '');
SELECT pg_catalog.pg_extension_config_dump('clinic_migrate.runs_run_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('clinic_migrate.cutovers', '');
SELECT pg_catalog.pg_extension_config_dump('clinic_migrate.cutovers_cutover_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('clinic_migrate.job_queue', '');
SELECT pg_catalog.pg_extension_config_dump('clinic_migrate.job_queue_job_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('clinic_migrate.capture_logs', '');

-- Every function that runs in the calling session, with the caller's rights,
-- runs with search_path = pg_catalog, pg_temp: its catalog queries must not
-- find an operator or function a role put in a schema on the caller's
-- search_path (as in public, CVE-2018-1058), which would run with the
-- caller's rights, a superuser's say.  Not the routing functions (set_tenant
-- sets the caller's search_path; tenant_schema and identity_nextval run in
-- the application's statements), nor the triggers and their WHEN functions
-- (they pin it themselves where they run SQL).
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN
        SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p
        WHERE p.pronamespace OPERATOR(pg_catalog.=) 'clinic_migrate'::regnamespace
          AND p.proname OPERATOR(pg_catalog.<>) ALL (ARRAY['set_tenant', 'tenant_schema', 'identity_nextval',
                                     'capture', 'capture_reverse', 'guard_truncate', 'tenants_changed',
                                     'capturing', 'capturing_any', 'prometheus_label']::name[])
    LOOP
        EXECUTE pg_catalog.format('ALTER FUNCTION %s SET search_path = pg_catalog, pg_temp', f);
    END LOOP;
END $$;
