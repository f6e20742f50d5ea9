--
-- queue: the job queue's functions, views and alerts.  No scheduler serves the
-- regression database (clinic_migrate.databases is empty), so jobs stay where
-- these functions put them; the scheduler's work is tested in test/t/004_queue.pl.
--
SET client_min_messages = warning;

-- bad input: nothing is queued
SELECT * FROM clinic_migrate.enqueue(NULL);
SELECT * FROM clinic_migrate.enqueue(ARRAY['t1'], NULL);
SELECT * FROM clinic_migrate.enqueue(ARRAY['t1'], 'move');
SELECT * FROM clinic_migrate.enqueue(ARRAY['t1', NULL]);
SELECT * FROM clinic_migrate.enqueue(ARRAY['t1', '']);
SELECT * FROM clinic_migrate.enqueue(ARRAY['t1', 't1']);
SELECT * FROM clinic_migrate.enqueue_pending(-1);
SELECT * FROM clinic_migrate.enqueue_pending(1, 'rollback');
SELECT * FROM clinic_migrate.wait(NULL);
SELECT * FROM clinic_migrate.wait(424242);
SELECT count(*) AS jobs FROM clinic_migrate.job_queue;

-- one job per tenant: all of them, or none
SELECT min(j) AS job1, count(*) AS queued FROM clinic_migrate.enqueue(ARRAY['t1', 't2'], 'migrate') j
\gset
SELECT :queued AS queued;
SELECT * FROM clinic_migrate.enqueue(ARRAY['t4', 't2'], 'validate');
SELECT job_id, tenant_id, action, state, attempts, max_attempts, priority, enqueued_by = current_user AS mine,
       started_at IS NULL AS not_started
FROM clinic_migrate.jobs ORDER BY job_id;
-- a tenant id is taken as the tenant column reads it
SELECT count(*) AS queued FROM clinic_migrate.enqueue(ARRAY['t4'], 'cutover', priority => 5,
                                                      not_before => now() + interval '1 hour');

-- the registry's next tenants that are due: in its order, not those with a job
SELECT count(*) AS queued FROM clinic_migrate.enqueue_pending(2);
SELECT tenant_id, action FROM clinic_migrate.jobs WHERE state = 'queued' ORDER BY job_id;
SELECT count(*) AS queued FROM clinic_migrate.enqueue_pending(5);
SELECT count(*) AS queued FROM clinic_migrate.enqueue_pending(5, 'cutover');

-- wait: for the end, or the timeout
SELECT clinic_migrate.wait(:job1, interval '50 milliseconds');
SELECT clinic_migrate.cancel(:job1);
SELECT clinic_migrate.wait(:job1);
SELECT clinic_migrate.cancel(:job1);
SELECT clinic_migrate.cancel(424242);
SELECT tenant_id, state, error, finished_at IS NOT NULL AS finished FROM clinic_migrate.jobs
WHERE job_id = :job1;
-- a cancelled job frees its tenant
SELECT count(*) AS queued_again FROM clinic_migrate.enqueue(ARRAY['t1']);

-- pause and resume (true when the call changed something)
SELECT clinic_migrate.pause_queue();
SELECT clinic_migrate.pause_queue();
SELECT paused, paused_by = session_user AS by_me FROM clinic_migrate.queue_control;
SELECT clinic_migrate.resume_queue();
SELECT paused, paused_by FROM clinic_migrate.queue_control;

-- alerts: a failure, and jobs that nothing runs
UPDATE clinic_migrate.job_queue SET state = 'failed', error = 'disk full', attempts = 5,
                                    finished_at = now()
WHERE tenant_id = 't2';
UPDATE clinic_migrate.job_queue SET not_before = now() - interval '2 minutes'
WHERE state = 'queued';
SELECT severity, alert, tenant_id, message FROM clinic_migrate.alerts() ORDER BY 1, 2, 3;
SELECT m FROM clinic_migrate.metrics() m WHERE m LIKE 'clinic\_migrate\_jobs{%'
                                            OR m LIKE 'clinic\_migrate\_alerts{%';
SELECT tenants_total, tenants_migrated, in_progress, failed, jobs_queued, jobs_running,
       rows_copied, capture_lag
FROM clinic_migrate.dashboard;
SELECT clinic_migrate.prometheus_label(E'a"b\\c\nd') AS escaped;

-- a migration recorded in the dashboard and the metrics
SELECT schema_name FROM clinic_migrate.migrate_tenant('t4');
SELECT tenants_migrated, rows_copied > 0 AS copied, pauses FROM clinic_migrate.dashboard;
SELECT tenant_id, state, direction, pending_changes, lag_seconds, syncing IS NOT NULL AS known
FROM clinic_migrate.capture;
SELECT m FROM clinic_migrate.metrics() m WHERE m LIKE 'clinic\_migrate\_tenants{state="copied"}%'
                                            OR m LIKE 'clinic\_migrate\_capture\_lag\_changes{%';
SELECT clinic_migrate.rollback_tenant('t4');

-- fan_out: its errors, and a change the shared tables refuse leaves nothing
-- behind (no scheduler runs its jobs here: test/t/009_fan_out.pl)
SELECT clinic_migrate.fan_out(NULL, 'SELECT 1');
SELECT clinic_migrate.fan_out('', 'SELECT 1');
SELECT clinic_migrate.fan_out('v1');
SELECT clinic_migrate.fan_out('v1', 'ALTER TABLE no_such_table ADD COLUMN x integer');
SELECT count(*) AS versions FROM clinic_migrate.schema_changes;
SELECT * FROM clinic_migrate.enqueue(ARRAY['t1'], 'schema_change');

-- a SECURITY DEFINER function of another role, run by this session: its
-- worker would act in this session's name (RESET ROLE reaches it): refused
CREATE ROLE regress_queue_definer;
GRANT USAGE ON SCHEMA clinic_migrate TO regress_queue_definer;
GRANT EXECUTE ON FUNCTION clinic_migrate.enqueue(text[], text, integer, timestamp with time zone, boolean)
    TO regress_queue_definer;
CREATE FUNCTION public.regress_definer_enqueue() RETURNS bigint LANGUAGE sql SECURITY DEFINER
    AS $$SELECT * FROM clinic_migrate.enqueue(ARRAY['t3'])$$;
ALTER FUNCTION public.regress_definer_enqueue() OWNER TO regress_queue_definer;
\set VERBOSITY default
SELECT public.regress_definer_enqueue();
\set VERBOSITY terse
DROP FUNCTION public.regress_definer_enqueue();
REVOKE ALL ON SCHEMA clinic_migrate FROM regress_queue_definer;
REVOKE ALL ON FUNCTION clinic_migrate.enqueue(text[], text, integer, timestamp with time zone, boolean)
    FROM regress_queue_definer;
DROP ROLE regress_queue_definer;

DELETE FROM clinic_migrate.job_queue;
RESET client_min_messages;
