--
-- upgrade: a tenant moved half-way under version 0.1 finishes its move after
-- ALTER EXTENSION clinic_migrate UPDATE (0.1 -> 0.2 -> 0.3 -> 0.4), in a database of its own.
--
\set from '0.1'
\ir sql/upgrade_start.psql
-- what 0.2 changed: the schema is reachable by application roles, jobs know their session
SELECT has_schema_privilege('public', 'clinic_migrate', 'USAGE') AS public_usage;
SELECT tenant_id, state, session_role IS NULL AS queued_before_upgrade
FROM clinic_migrate.job_queue ORDER BY job_id;
\ir sql/upgrade_finish.psql
