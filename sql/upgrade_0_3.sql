--
-- upgrade_0_3: a tenant moved half-way under version 0.3 finishes its move after
-- ALTER EXTENSION clinic_migrate UPDATE (0.3 -> 0.4), in a database of its own.
--
\set from '0.3'
\ir sql/upgrade_start.psql
-- what 0.4 added: tenant row level security and the candidates, not open to PUBLIC
-- except the audit function the permissive policy calls
SELECT p.oid::regprocedure AS function,
       has_function_privilege('public', p.oid, 'EXECUTE') AS public_may_call,
       p.proconfig
FROM pg_proc p
WHERE p.pronamespace = 'clinic_migrate'::regnamespace
  AND p.proname IN ('enable_tenant_rls', 'disable_tenant_rls', 'tenant_rls_audit', 'tenant_rls_report',
                    'tenant_estimates', 'enqueue_candidates', 'current_tenant')
ORDER BY p.proname;
SELECT has_table_privilege('public', 'clinic_migrate.candidates', 'SELECT') AS public_reads_candidates,
       'clinic_migrate.tenant_rls'::regclass::oid = ANY (e.extconfig) AS tenant_rls_dumped
FROM pg_extension e WHERE e.extname = 'clinic_migrate';
-- the tenants that stay get their policies while u1 is half-way
CREATE ROLE regress_upgrade_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON patients, visits, rooms TO regress_upgrade_app;
SELECT clinic_migrate.enable_tenant_rls(ARRAY['regress_upgrade_app']) AS tables;
SET ROLE regress_upgrade_app;
BEGIN;
SELECT clinic_migrate.set_tenant('u2', true) IS NOT NULL AS routed;
SELECT DISTINCT tenant_id FROM patients;
COMMIT;
RESET ROLE;
\ir sql/upgrade_finish.psql
DROP ROLE regress_upgrade_app;
