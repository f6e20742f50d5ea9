-- clinic_migrate 0.7 -> 0.8: capture from the WAL.
\echo Use "ALTER EXTENSION clinic_migrate UPDATE TO '0.8'" to load this file. \quit

-- How each move captures its tenant's changes while it copies and syncs:
-- 'trigger' (the capture triggers) or 'wal' (logical decoding through the
-- slot clinic_migrate_<database OID> and clinic_migrate's output plugin).
-- Set when the copy starts; cutover sets it to 'trigger'.  NULL: a move
-- started before 0.8, by triggers.
ALTER TABLE clinic_migrate.tenants ADD COLUMN capture_method text
    CHECK (capture_method IN ('trigger', 'wal'));

-- The output plugin reads which tenants are captured and which tables have
-- a log in the decoding snapshot: each change is judged by the state its
-- own commit saw.  A table read there must be a user catalog table.
ALTER TABLE clinic_migrate.tenants SET (user_catalog_table = true);
ALTER TABLE clinic_migrate.capture_logs SET (user_catalog_table = true);

-- The slot of capture from the WAL, if it exists: how much WAL it keeps.
CREATE VIEW clinic_migrate.capture_slot AS
SELECT s.slot_name::text, s.active, s.wal_status, s.confirmed_flush_lsn,
       CASE WHEN s.restart_lsn IS NULL THEN NULL
            ELSE pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_insert_lsn(), s.restart_lsn)::bigint
       END AS retained_bytes
FROM pg_catalog.pg_replication_slots s
WHERE s.slot_name = 'clinic_migrate_' || (SELECT oid FROM pg_catalog.pg_database
                                          WHERE datname = pg_catalog.current_database());
COMMENT ON VIEW clinic_migrate.capture_slot IS
'the replication slot of capture from the WAL (none while no tenant is captured that way), with the WAL it keeps';
REVOKE ALL ON clinic_migrate.capture_slot FROM PUBLIC;

CREATE OR REPLACE VIEW clinic_migrate.dashboard AS
WITH t AS (
    SELECT count(*) AS known,
           count(*) FILTER (WHERE state IN ('copied', 'cut_over', 'finalizing', 'finalized')) AS migrated,
           count(*) FILTER (WHERE state IN ('cut_over', 'finalizing', 'finalized')) AS cut_over,
           count(*) FILTER (WHERE state = 'finalized') AS finalized,
           count(*) FILTER (WHERE state = 'copying') AS copying,
           count(*) FILTER (WHERE state = 'failed') AS failed_copies,
           coalesce(sum(rows_copied), 0) AS rows_copied
    FROM clinic_migrate.tenants),
j AS (
    SELECT count(*) FILTER (WHERE state = 'queued') AS queued,
           count(*) FILTER (WHERE state = 'running') AS running,
           count(DISTINCT tenant_id) FILTER (WHERE state = 'failed' AND NOT EXISTS (
               SELECT 1 FROM clinic_migrate.job_queue k WHERE k.tenant_id = job_queue.tenant_id
                 AND k.job_id > job_queue.job_id)) AS failed
    FROM clinic_migrate.job_queue),
r AS (
    SELECT coalesce(sum(rows_copied), 0) AS rows_now,
           coalesce(sum(rows_copied) / nullif(extract(epoch FROM max(clock_timestamp() - started_at)), 0), 0)
             AS rows_per_second
    FROM clinic_migrate.runs WHERE action = 'migrate' AND status = 'running'),
todo AS (
    SELECT coalesce(sum(greatest(tt.rows_total - tt.rows_copied, 0)), 0) AS rows_left
    FROM clinic_migrate.tenant_tables tt JOIN clinic_migrate.tenants x USING (tenant_id)
    WHERE x.state IN ('schema_created', 'copying', 'failed') AND NOT tt.copied),
c AS (
    SELECT count(*) FILTER (WHERE outcome = 'done') AS switches,
           max(pause_ms) FILTER (WHERE outcome = 'done') AS max_pause_ms,
           (array_agg(pause_ms ORDER BY cutover_id DESC) FILTER (WHERE outcome = 'done'))[1] AS last_pause_ms
    FROM clinic_migrate.cutovers)
SELECT coalesce(clinic_migrate.registry_count(), t.known) AS tenants_total,
       t.migrated AS tenants_migrated,
       t.cut_over AS tenants_cut_over,
       t.finalized AS tenants_finalized,
       t.copying + j.running AS in_progress,
       greatest(t.failed_copies, j.failed) AS failed,
       j.queued AS jobs_queued,
       j.running AS jobs_running,
       t.rows_copied,
       round(r.rows_per_second::numeric, 0) AS rows_per_second,
       CASE WHEN r.rows_per_second > 0
            THEN make_interval(secs => todo.rows_left / r.rows_per_second) END AS eta,
       (SELECT coalesce(jsonb_agg(jsonb_build_object('tenant', tenant_id, 'direction', direction,
                                                     'changes', pending_changes, 'seconds', lag_seconds)
                                  ORDER BY tenant_id), '[]')
        FROM clinic_migrate.capture) AS capture_lag,
       c.switches AS pauses,
       c.max_pause_ms,
       c.last_pause_ms,
       (SELECT s.retained_bytes FROM clinic_migrate.capture_slot s) AS slot_retained_bytes
FROM t, j, r, todo, c;

CREATE OR REPLACE FUNCTION clinic_migrate.alerts()
RETURNS TABLE (severity text, alert text, tenant_id text, message text)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
SELECT 'critical', 'MigrationFailure', j.tenant_id,
       format('job %s (%s) failed after %s attempt(s): %s', j.job_id, j.action, j.attempts, j.error)
FROM clinic_migrate.job_queue j
WHERE j.state = 'failed'
  AND NOT EXISTS (SELECT 1 FROM clinic_migrate.job_queue k
                  WHERE k.tenant_id = j.tenant_id AND k.job_id > j.job_id)
UNION ALL
SELECT 'critical', 'MigrationFailure', t.tenant_id, format('the copy failed: %s', t.last_error)
FROM clinic_migrate.tenants t WHERE t.state = 'failed'
UNION ALL
SELECT 'warning', 'SlowMigration', r.tenant_id,
       format('%s running for %s', r.action, date_trunc('second', clock_timestamp() - r.started_at))
FROM clinic_migrate.runs r
WHERE r.status = 'running'
  AND r.started_at < clock_timestamp() - current_setting('clinic_migrate.alert_migration_time')::interval
UNION ALL
SELECT 'warning', 'CaptureLag', c.tenant_id,
       format('%s changes (%s) not replayed, the oldest %s s old', c.pending_changes, c.direction,
              c.lag_seconds)
FROM clinic_migrate.capture c
WHERE c.pending_changes > current_setting('clinic_migrate.alert_lag_changes')::bigint
   OR c.lag_seconds > extract(epoch FROM current_setting('clinic_migrate.alert_lag_seconds')::interval)
UNION ALL
SELECT 'warning', 'QueueStalled', NULL,
       format('%s job(s) queued for over a minute and none is running', count(*))
FROM clinic_migrate.job_queue j
WHERE j.state = 'queued' AND j.not_before < clock_timestamp() - interval '1 minute'
  AND NOT EXISTS (SELECT 1 FROM clinic_migrate.job_queue k WHERE k.state = 'running')
  AND NOT (SELECT paused FROM clinic_migrate.queue_control)
HAVING count(*) > 0
UNION ALL
SELECT 'critical', 'CaptureSlotLost', NULL,
       format('the replication slot %s lost WAL it needed: roll back the tenants captured from the WAL and migrate them again',
              s.slot_name)
FROM clinic_migrate.capture_slot s WHERE s.wal_status = 'lost'
UNION ALL
SELECT 'critical', 'CaptureSlotMissing', t.tenant_id,
       'captured from the WAL, but the replication slot is gone: roll it back and migrate it again'
FROM clinic_migrate.tenants t
WHERE t.capture_method = 'wal' AND t.state IN ('copying', 'copied', 'failed')
  AND NOT EXISTS (SELECT 1 FROM clinic_migrate.capture_slot)
UNION ALL
SELECT 'warning', 'CaptureSlotWal', NULL,
       format('the replication slot %s keeps %s of WAL', s.slot_name, pg_size_pretty(s.retained_bytes))
FROM clinic_migrate.capture_slot s
WHERE s.retained_bytes > pg_size_bytes(current_setting('clinic_migrate.alert_slot_wal'))
$$;

CREATE OR REPLACE FUNCTION clinic_migrate.metrics()
RETURNS SETOF text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
WITH tenants AS (
    SELECT s.state, count(t.tenant_id) AS n
    FROM unnest(ARRAY['schema_created', 'copying', 'copied', 'failed', 'cut_over', 'rolling_back',
                      'finalizing', 'finalized']) s(state)
    LEFT JOIN clinic_migrate.tenants t ON t.state = s.state
    GROUP BY s.state),
jobs AS (
    SELECT s.state, count(j.job_id) AS n
    FROM unnest(ARRAY['queued', 'running', 'done', 'failed', 'cancelled']) s(state)
    LEFT JOIN clinic_migrate.job_queue j ON j.state = s.state
    GROUP BY s.state),
lines(n, line) AS (
    SELECT 1, '# HELP clinic_migrate_tenants Tenants clinic_migrate knows, by state.'
    UNION ALL SELECT 2, '# TYPE clinic_migrate_tenants gauge'
    UNION ALL SELECT 3, format('clinic_migrate_tenants{state="%s"} %s', state, n) FROM tenants
    UNION ALL SELECT 10, '# HELP clinic_migrate_jobs Jobs of the queue, by state.'
    UNION ALL SELECT 11, '# TYPE clinic_migrate_jobs gauge'
    UNION ALL SELECT 12, format('clinic_migrate_jobs{state="%s"} %s', state, n) FROM jobs
    UNION ALL SELECT 20, '# HELP clinic_migrate_rows_copied Rows copied into tenant schemas.'
    UNION ALL SELECT 21, '# TYPE clinic_migrate_rows_copied counter'
    UNION ALL SELECT 22, format('clinic_migrate_rows_copied %s', coalesce(sum(rows_copied), 0))
              FROM clinic_migrate.tenants
    UNION ALL SELECT 30, '# HELP clinic_migrate_capture_lag_changes Changes captured and not replayed yet.'
    UNION ALL SELECT 31, '# TYPE clinic_migrate_capture_lag_changes gauge'
    UNION ALL SELECT 32, format('clinic_migrate_capture_lag_changes{tenant="%s",direction="%s"} %s',
                                clinic_migrate.prometheus_label(tenant_id),
                                direction, pending_changes)
              FROM clinic_migrate.capture
    UNION ALL SELECT 40, '# HELP clinic_migrate_capture_lag_seconds Age of the oldest change not replayed yet.'
    UNION ALL SELECT 41, '# TYPE clinic_migrate_capture_lag_seconds gauge'
    UNION ALL SELECT 42, format('clinic_migrate_capture_lag_seconds{tenant="%s",direction="%s"} %s',
                                clinic_migrate.prometheus_label(tenant_id),
                                direction, lag_seconds)
              FROM clinic_migrate.capture
    UNION ALL SELECT 50, '# HELP clinic_migrate_last_pause_ms The last pause of a tenant''s writes, by tenant and direction.'
    UNION ALL SELECT 51, '# TYPE clinic_migrate_last_pause_ms gauge'
    UNION ALL SELECT 52, format('clinic_migrate_last_pause_ms{tenant="%s",direction="%s"} %s',
                                clinic_migrate.prometheus_label(tenant_id),
                                direction, pause_ms)
              FROM (SELECT DISTINCT ON (tenant_id, direction) tenant_id, direction, pause_ms
                    FROM clinic_migrate.cutovers WHERE outcome = 'done'
                    ORDER BY tenant_id, direction, cutover_id DESC) p
    UNION ALL SELECT 60, '# HELP clinic_migrate_alerts Alerts by severity (clinic_migrate.alerts()).'
    UNION ALL SELECT 61, '# TYPE clinic_migrate_alerts gauge'
    UNION ALL SELECT 62, format('clinic_migrate_alerts{severity="%s"} %s', s.severity, count(a.alert))
              FROM unnest(ARRAY['critical', 'warning']) s(severity)
              LEFT JOIN clinic_migrate.alerts() a ON a.severity = s.severity
              GROUP BY s.severity
    UNION ALL SELECT 70, '# HELP clinic_migrate_slot_retained_bytes WAL kept by the replication slot of capture from the WAL.'
    UNION ALL SELECT 71, '# TYPE clinic_migrate_slot_retained_bytes gauge'
    UNION ALL SELECT 72, format('clinic_migrate_slot_retained_bytes %s', coalesce(retained_bytes, 0))
              FROM clinic_migrate.capture_slot)
SELECT line FROM lines ORDER BY n, line
$$;

-- DROP EXTENSION (or DROP SCHEMA clinic_migrate CASCADE, DROP OWNED) drops the
-- slot too, at its commit: a slot left behind keeps WAL for ever.
-- An event trigger's tags cannot be altered: made again, with DROP EXTENSION.
DROP EVENT TRIGGER clinic_migrate_guard_ddl;
CREATE EVENT TRIGGER clinic_migrate_guard_ddl ON ddl_command_start
    WHEN TAG IN ('ALTER TABLE', 'DROP TABLE', 'DROP TRIGGER', 'ALTER TRIGGER', 'ALTER VIEW', 'ALTER MATERIALIZED VIEW',
                 'DROP EXTENSION', 'DROP SCHEMA', 'DROP OWNED')
    EXECUTE FUNCTION clinic_migrate.guard_ddl();
ALTER EVENT TRIGGER clinic_migrate_guard_ddl ENABLE ALWAYS;
