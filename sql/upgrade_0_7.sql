--
-- upgrade_0_7: a tenant moved half-way under version 0.7 finishes its move after
-- ALTER EXTENSION clinic_migrate UPDATE (0.7 -> 0.8), in a database of its own.
--
\set from '0.7'
\ir sql/upgrade_start.psql
-- what 0.8 added: the capture method of each move (u1's, begun under 0.7, is by
-- triggers), the state tables the WAL's decoding reads, the slot's view, and
-- DROP EXTENSION among the guard's tags
SELECT tenant_id, state, capture_method FROM clinic_migrate.tenants ORDER BY 1;
SELECT c.relname, c.reloptions FROM pg_class c
WHERE c.relnamespace = 'clinic_migrate'::regnamespace AND c.relname IN ('tenants', 'capture_logs')
ORDER BY 1;
SELECT count(*) AS slots FROM clinic_migrate.capture_slot;
SELECT evttags FROM pg_event_trigger WHERE evtname = 'clinic_migrate_guard_ddl';
\ir sql/upgrade_finish.psql
