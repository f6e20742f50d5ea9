--
-- upgrade_0_2: a tenant moved half-way under version 0.2 finishes its move after
-- ALTER EXTENSION clinic_migrate UPDATE (0.2 -> 0.3 -> 0.4), in a database of its own.
--
\set from '0.2'
\ir sql/upgrade_start.psql
-- what 0.3 changed: no OID in the state (reg* types), the logs found through
-- capture_logs (filled from the log_<oid> names), the state dumped by pg_dump
SELECT c.relname, a.attname, a.atttypid::regtype
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
WHERE c.relnamespace = 'clinic_migrate'::regnamespace AND c.relkind = 'r'
  AND a.atttypid IN ('oid'::regtype, 'regclass'::regtype, 'regnamespace'::regtype, 'regrole'::regtype)
  AND a.attnum > 0 AND c.relname NOT LIKE 'log\_%'
ORDER BY 1, 2;
SELECT source_table, log_table::text ~ '^clinic_migrate\.log_[0-9]+$' AS named_by_oid
FROM clinic_migrate.capture_logs ORDER BY 1::text;
SELECT array_agg(c.relname ORDER BY c.relname)
FROM pg_extension e, unnest(e.extconfig) x JOIN pg_class c ON c.oid = x
WHERE e.extname = 'clinic_migrate';
SELECT tenant_id, state, run_as FROM clinic_migrate.job_queue ORDER BY job_id;
\ir sql/upgrade_finish.psql
