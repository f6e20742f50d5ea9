--
-- upgrade_0_4: a tenant moved half-way under version 0.4 finishes its move after
-- ALTER EXTENSION clinic_migrate UPDATE (0.4 -> 0.5), in a database of its own.
--
\set from '0.4'
\ir sql/upgrade_start.psql
-- what 0.5 added: the event trigger that carries schema changes to the copies,
-- its function not open to PUBLIC
SELECT evtname, evtevent, evtenabled, evttags, evtfoid::regprocedure,
       has_function_privilege('public', evtfoid, 'EXECUTE') AS public_may_call
FROM pg_event_trigger WHERE evtname LIKE 'clinic\_migrate%';
-- the deploy that reached u1 half-way: its copy follows, the move finishes with it
ALTER TABLE patients ADD COLUMN phone text DEFAULT 'unknown';
UPDATE patients SET phone = '555-0102' WHERE id = 2;
SELECT clinic_migrate.sync_now('u1') >= 0 AS replayed;
SELECT id, phone FROM tenant_u1.patients WHERE id IN (2, 4) ORDER BY id;
-- and the fan-out's tables and function, the new status column
SELECT p.oid::regprocedure AS function, has_function_privilege('public', p.oid, 'EXECUTE') AS public_may_call
FROM pg_proc p WHERE p.pronamespace = 'clinic_migrate'::regnamespace AND p.proname IN ('fan_out', 'follow_ddl')
ORDER BY 1::text;
SELECT tenant_id, state, schema_version FROM clinic_migrate.status ORDER BY tenant_id;
\ir sql/upgrade_finish.psql
