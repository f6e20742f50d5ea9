-- test/readme_session.sql: the session of the README ("A session"), run by
-- test/readme_session.sh against a generated clinic database (20 tenants,
-- 100,000 rows) whose server runs the scheduler (clinic_migrate.databases).
\pset footer off
SET clinic_migrate.progress_interval = 0;

-- What moves: tables with tenant_id, and the notes that reach a tenant through an appointment.
SELECT "position", table_name, kind, tenant_path FROM clinic_migrate.plan();

-- Copy tenant t3. Every write of its shared rows is captured from the start.
SELECT * FROM clinic_migrate.migrate_tenant('t3');
SELECT table_name, source_rows, target_rows, match FROM clinic_migrate.validate_migration('t3');

-- The application writes the shared table meanwhile; the copy follows.
SELECT min(id) AS pid FROM public.patients WHERE tenant_id = 't3' \gset
UPDATE public.patients SET first_name = 'Ada' WHERE id = :pid;
SELECT clinic_migrate.sync_now('t3') >= 0 AS replayed;
SELECT first_name FROM tenant_t3.patients WHERE id = :pid;

-- Cutover: only t3's writers pause, for the pause shown.
SELECT schema_name, attempts, pause_ms < 100 AS under_100_ms, rows_validated FROM clinic_migrate.cutover('t3');
SELECT clinic_migrate.tenant_schema('t3');

-- A write that still goes to the shared rows fails with a retryable error...
UPDATE public.patients SET first_name = 'Bob' WHERE id = :pid;
-- ...and the retry, routed by set_tenant, lands in the tenant's schema.
SELECT clinic_migrate.set_tenant('t3');
UPDATE patients SET first_name = 'Bob' WHERE id = :pid;
SHOW search_path;

-- Until finalize, the shared rows follow the tenant's schema (reverse sync)...
SELECT clinic_migrate.sync_now('t3') >= 0 AS replayed;
SELECT first_name FROM public.patients WHERE id = :pid;
-- ...so a rollback after cutover loses nothing.
RESET search_path;
SELECT clinic_migrate.rollback_tenant('t3');
SELECT clinic_migrate.tenant_schema('t3');

-- The queue: the next 5 tenants of the registry, worked by the scheduler's workers.
SELECT count(*) FROM clinic_migrate.enqueue_pending(5);
SELECT max(job_id) AS last_job FROM clinic_migrate.jobs \gset
SELECT clinic_migrate.wait(:last_job, interval '5 minutes');
SELECT job_id, tenant_id, action, state, attempts, result->>'rows' AS rows
FROM clinic_migrate.jobs ORDER BY job_id;

-- Cut t1 over, then end its rollback window: its shared rows go to the archive.
SELECT schema_name, attempts, pause_ms < 100 AS under_100_ms FROM clinic_migrate.cutover('t1');
SELECT * FROM clinic_migrate.finalize_tenant('t1');
SELECT tenant_id, state, lives_in, rows_copied, rows_archived FROM clinic_migrate.status ORDER BY tenant_id;
SELECT count(*) AS t1_rows_left_in_public FROM public.patients WHERE tenant_id = 't1';

-- Watching it.
\x on
SELECT tenants_total, tenants_migrated, tenants_cut_over, tenants_finalized, in_progress, failed,
       jobs_queued, jobs_running, rows_copied, pauses FROM clinic_migrate.dashboard;
\x off
SELECT tenant_id, direction, attempt, outcome, pause_ms < 100 AS under_100_ms FROM clinic_migrate.cutovers ORDER BY cutover_id;
SELECT * FROM clinic_migrate.alerts();
SELECT m FROM clinic_migrate.metrics() m WHERE m LIKE 'clinic_migrate_tenants%' OR m LIKE 'clinic_migrate_jobs{%';
