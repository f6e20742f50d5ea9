/* clinic_migrate--0.1.sql: state, views and functions of clinic_migrate */

\echo Use "CREATE EXTENSION clinic_migrate" to load this file. \quit

-- Tables the user keeps out of the plan (they stay shared, like reference tables).
CREATE TABLE clinic_migrate.excluded_tables (
    table_name  regclass PRIMARY KEY,
    reason      text,
    excluded_by name NOT NULL DEFAULT current_user,
    excluded_at timestamptz NOT NULL DEFAULT now()
);

-- One row per tenant clinic_migrate has made a schema for.
CREATE TABLE clinic_migrate.tenants (
    tenant_id       text PRIMARY KEY,
    schema_name     name NOT NULL UNIQUE,
    schema_oid      oid NOT NULL UNIQUE,
    source_schema   name NOT NULL,
    tenant_column   name NOT NULL,
    state           text NOT NULL DEFAULT 'schema_created'
                    CHECK (state IN ('schema_created', 'copying', 'copied', 'failed', 'cut_over',
                                     'rolling_back', 'finalizing', 'finalized')),
    structure_done  boolean NOT NULL DEFAULT false,
    rows_copied     bigint NOT NULL DEFAULT 0,
    rows_archived   bigint,
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    completed_at    timestamptz,
    cut_over_at     timestamptz,
    finalized_at    timestamptz,
    last_error      text
);

-- The tenant's copy of the plan, with a checkpoint per table.
CREATE TABLE clinic_migrate.tenant_tables (
    tenant_id     text NOT NULL REFERENCES clinic_migrate.tenants ON DELETE CASCADE,
    position      integer NOT NULL,
    source_table  oid NOT NULL,
    target_table  oid NOT NULL,
    table_name    name NOT NULL,
    kind          text NOT NULL CHECK (kind IN ('tenant', 'child')),
    rows_total    bigint,
    rows_copied   bigint NOT NULL DEFAULT 0,
    checkpoint    text[],
    copied        boolean NOT NULL DEFAULT false,
    indexed       boolean NOT NULL DEFAULT false,
    copy_time     interval NOT NULL DEFAULT '0',
    index_time    interval NOT NULL DEFAULT '0',
    PRIMARY KEY (tenant_id, source_table)
);

-- Every run of every action, as seed 000's schema_migrations table records them.
CREATE TABLE clinic_migrate.runs (
    run_id        bigserial PRIMARY KEY,
    tenant_id     text NOT NULL,
    schema_name   name,
    action        text NOT NULL CHECK (action IN ('create_schema', 'migrate', 'validate', 'cutover',
                                                  'rollback', 'finalize')),
    status        text NOT NULL CHECK (status IN ('running', 'completed', 'failed', 'interrupted')),
    started_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    completed_at  timestamptz,
    rows_copied   bigint NOT NULL DEFAULT 0,
    error         text,
    sqlstate      text,
    started_by    name NOT NULL,
    worker_pid    integer
);
CREATE INDEX ON clinic_migrate.runs (tenant_id, run_id);

-- Every pause of a tenant's writes: cutover, rollback after cutover, finalize.
CREATE TABLE clinic_migrate.cutovers (
    cutover_id      bigserial PRIMARY KEY,
    tenant_id       text NOT NULL,
    direction       text NOT NULL CHECK (direction IN ('cutover', 'rollback', 'finalize')),
    attempt         integer NOT NULL,
    outcome         text NOT NULL CHECK (outcome IN ('done', 'retried', 'failed')),
    started_at      timestamptz NOT NULL,
    pause_ms        numeric NOT NULL,   -- the tenant's writes were held this long
    lock_wait_ms    numeric NOT NULL,   -- of which waiting for its transactions in flight
    keys_drained    bigint NOT NULL,    -- changes replayed during the pause
    rows_validated  bigint NOT NULL,    -- rows compared before and during the pause
    error           text                -- why a pause was given up
);
CREATE INDEX ON clinic_migrate.cutovers (tenant_id, cutover_id);

CREATE FUNCTION clinic_migrate.plan()
RETURNS TABLE (
    "position"   integer,
    table_name   regclass,
    kind         text,
    key_columns  name[],
    tenant_path  text,
    batch_index  regclass,
    note         text)
AS 'MODULE_PATHNAME', 'cm_plan'
LANGUAGE C STABLE;
COMMENT ON FUNCTION clinic_migrate.plan() IS
'which tables of the source schema hold tenant rows, in copy order';

CREATE FUNCTION clinic_migrate.exclude_table(table_name regclass, reason text DEFAULT NULL)
RETURNS void
LANGUAGE sql
BEGIN ATOMIC
    INSERT INTO clinic_migrate.excluded_tables (table_name, reason)
    VALUES (exclude_table.table_name, exclude_table.reason)
    ON CONFLICT (table_name) DO UPDATE SET reason = EXCLUDED.reason;
END;

CREATE FUNCTION clinic_migrate.include_table(table_name regclass)
RETURNS boolean
LANGUAGE sql
BEGIN ATOMIC
    WITH d AS (DELETE FROM clinic_migrate.excluded_tables e
               WHERE e.table_name = include_table.table_name RETURNING 1)
    SELECT count(*) > 0 FROM d;
END;

CREATE FUNCTION clinic_migrate.schema_name_for(tenant text)
RETURNS name
AS 'MODULE_PATHNAME', 'cm_schema_name_for_sql'
LANGUAGE C STABLE;

CREATE FUNCTION clinic_migrate.create_tenant_schema(tenant text)
RETURNS name
AS 'MODULE_PATHNAME', 'cm_create_tenant_schema'
LANGUAGE C VOLATILE;

CREATE FUNCTION clinic_migrate.migrate_tenant(
    tenant text,
    OUT schema_name name,
    OUT tables integer,
    OUT rows_copied bigint,
    OUT resumed boolean)
RETURNS record
AS 'MODULE_PATHNAME', 'cm_migrate_tenant'
LANGUAGE C VOLATILE;

CREATE FUNCTION clinic_migrate.validate_migration(tenant text, max_keys integer DEFAULT 10)
RETURNS TABLE (
    table_name       name,
    source_rows      bigint,
    target_rows      bigint,
    source_checksum  text,
    target_checksum  text,
    missing_keys     text[],
    extra_keys       text[],
    different_keys   text[],
    fk_orphans       bigint,
    sequences_ok     boolean,
    match            boolean)
AS 'MODULE_PATHNAME', 'cm_validate_migration'
LANGUAGE C VOLATILE;

CREATE FUNCTION clinic_migrate.validate_differences(tenant text)
RETURNS TABLE (
    table_name  name,
    key         text,
    difference  text)
AS 'MODULE_PATHNAME', 'cm_validate_differences'
LANGUAGE C VOLATILE;

CREATE FUNCTION clinic_migrate.rollback_tenant(tenant text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'cm_rollback_tenant'
LANGUAGE C VOLATILE;

CREATE FUNCTION clinic_migrate.migration_active(tenant text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'cm_migration_active'
LANGUAGE C VOLATILE STRICT;

CREATE FUNCTION clinic_migrate.cutover(
    tenant text,
    OUT schema_name name,
    OUT attempts integer,
    OUT pause_ms numeric,
    OUT keys_drained bigint,
    OUT rows_validated bigint)
RETURNS record
AS 'MODULE_PATHNAME', 'cm_cutover'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION clinic_migrate.cutover(text) IS
'switch a copied tenant to its schema, pausing only its writes, briefly';

CREATE FUNCTION clinic_migrate.finalize_tenant(
    tenant text,
    archive boolean DEFAULT true,
    OUT schema_name name,
    OUT rows_archived bigint,
    OUT finalized boolean)
RETURNS record
AS 'MODULE_PATHNAME', 'cm_finalize'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION clinic_migrate.finalize_tenant(text, boolean) IS
'end the rollback window of a cut-over tenant: archive (or delete) its shared rows';

-- Routing: where a tenant's rows live, and a search_path to them.
CREATE FUNCTION clinic_migrate.tenant_schema(tenant text)
RETURNS name
AS 'MODULE_PATHNAME', 'cm_tenant_schema'
LANGUAGE C VOLATILE;

CREATE FUNCTION clinic_migrate.set_tenant(tenant text, is_local boolean DEFAULT false)
RETURNS name
AS 'MODULE_PATHNAME', 'cm_set_tenant'
LANGUAGE C VOLATILE;

CREATE FUNCTION clinic_migrate.sync_now(tenant text)
RETURNS bigint
AS 'MODULE_PATHNAME', 'cm_sync_now'
LANGUAGE C VOLATILE;

CREATE FUNCTION clinic_migrate.start_sync()
RETURNS boolean
AS 'MODULE_PATHNAME', 'cm_start_sync'
LANGUAGE C VOLATILE;

-- The default of a cut-over tenant's identity columns until finalize.
CREATE FUNCTION clinic_migrate.identity_nextval(tab regclass, col name)
RETURNS bigint
AS 'MODULE_PATHNAME', 'cm_identity_nextval'
LANGUAGE C VOLATILE STRICT;

-- Change capture: the trigger functions and the checks in their WHEN clauses.
CREATE FUNCTION clinic_migrate.capture()
RETURNS trigger
AS 'MODULE_PATHNAME', 'cm_capture'
LANGUAGE C;

CREATE FUNCTION clinic_migrate.capture_reverse()
RETURNS trigger
AS 'MODULE_PATHNAME', 'cm_capture_reverse'
LANGUAGE C;

CREATE FUNCTION clinic_migrate.guard_truncate()
RETURNS trigger
AS 'MODULE_PATHNAME', 'cm_guard_truncate'
LANGUAGE C;

CREATE FUNCTION clinic_migrate.capturing(tenant text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'cm_capturing'
LANGUAGE C STABLE STRICT PARALLEL SAFE;

CREATE FUNCTION clinic_migrate.capturing_any()
RETURNS boolean
AS 'MODULE_PATHNAME', 'cm_capturing_any'
LANGUAGE C STABLE PARALLEL SAFE;

CREATE FUNCTION clinic_migrate.capture_lag(tenant text)
RETURNS bigint
AS 'MODULE_PATHNAME', 'cm_capture_lag'
LANGUAGE C STABLE STRICT;

CREATE FUNCTION clinic_migrate.syncing(tenant text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'cm_syncing'
LANGUAGE C VOLATILE STRICT;

-- The capture triggers of every session cache the tenants' states; any change
-- of them, by clinic_migrate or by hand, tells every session to read them again.
CREATE FUNCTION clinic_migrate.tenants_changed()
RETURNS trigger
AS 'MODULE_PATHNAME', 'cm_tenants_changed'
LANGUAGE C;
CREATE TRIGGER tenants_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
ON clinic_migrate.tenants FOR EACH STATEMENT EXECUTE FUNCTION clinic_migrate.tenants_changed();

-- One row per tenant: where it is, how far, and what went wrong last.
CREATE VIEW clinic_migrate.status AS
SELECT t.tenant_id,
       t.schema_name,
       CASE WHEN t.state = 'copying' AND NOT clinic_migrate.migration_active(t.tenant_id)
            THEN 'interrupted' ELSE t.state END AS state,
       t.rows_copied,
       p.rows_total,
       CASE WHEN p.rows_total > 0
            THEN round(100.0 * least(t.rows_copied, p.rows_total) / p.rows_total, 1)
            WHEN p.tables > 0 AND p.tables_copied = p.tables THEN 100.0 END AS percent,
       p.tables_copied,
       p.tables,
       p.current_table,
       t.started_at,
       t.completed_at,
       coalesce(t.completed_at, now()) - t.started_at AS elapsed,
       t.cut_over_at,
       t.finalized_at,
       t.rows_archived,
       clinic_migrate.tenant_schema(t.tenant_id) AS lives_in,
       CASE WHEN t.state IN ('copying', 'copied', 'failed', 'cut_over')
            THEN clinic_migrate.capture_lag(t.tenant_id) END AS capture_lag,
       clinic_migrate.syncing(t.tenant_id) AS syncing,
       t.last_error
FROM clinic_migrate.tenants t
LEFT JOIN LATERAL (
    SELECT sum(tt.rows_total)::bigint AS rows_total,
           count(*) FILTER (WHERE tt.copied)::integer AS tables_copied,
           count(*)::integer AS tables,
           (array_agg(tt.table_name ORDER BY tt.position)
                FILTER (WHERE NOT tt.copied))[1] AS current_table
    FROM clinic_migrate.tenant_tables tt
    WHERE tt.tenant_id = t.tenant_id) p ON true;

-- One row per table of every tenant being or having been copied.
CREATE VIEW clinic_migrate.progress AS
SELECT tt.tenant_id,
       tt.position,
       tt.table_name,
       tt.kind,
       tt.rows_copied,
       tt.rows_total,
       CASE WHEN tt.rows_total > 0
            THEN round(100.0 * tt.rows_copied / tt.rows_total, 1)
            WHEN tt.copied THEN 100.0 END AS percent,
       tt.copied,
       tt.indexed,
       tt.copy_time,
       tt.index_time
FROM clinic_migrate.tenant_tables tt;

-- The queue: jobs for the database's scheduler (clinic_migrate.databases, with
-- clinic_migrate in shared_preload_libraries), worked by up to
-- clinic_migrate.max_workers workers at a time.
CREATE TABLE clinic_migrate.job_queue (
    job_id            bigserial PRIMARY KEY,
    tenant_id         text NOT NULL,
    action            text NOT NULL
                      CHECK (action IN ('migrate', 'validate', 'cutover', 'rollback', 'finalize')),
    priority          integer NOT NULL DEFAULT 0,
    not_before        timestamptz NOT NULL DEFAULT now(),
    state             text NOT NULL DEFAULT 'queued'
                      CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    attempts          integer NOT NULL DEFAULT 0,
    max_attempts      integer NOT NULL DEFAULT 5 CHECK (max_attempts > 0),
    cancel_requested  boolean NOT NULL DEFAULT false,
    archive           boolean NOT NULL DEFAULT true,   -- finalize: archive, or delete
    error             text,
    sqlstate          text,
    result            jsonb,                           -- what the action reported
    run_as            oid NOT NULL,                    -- the role it runs as: who enqueued it
    enqueued_by       name NOT NULL,
    enqueued_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    started_at        timestamptz,
    finished_at       timestamptz,
    worker_pid        integer
);
-- one job per tenant at a time
CREATE UNIQUE INDEX job_queue_one_active_per_tenant ON clinic_migrate.job_queue (tenant_id)
    WHERE state IN ('queued', 'running');
CREATE INDEX job_queue_next ON clinic_migrate.job_queue (priority DESC, job_id)
    WHERE state = 'queued';

CREATE TABLE clinic_migrate.queue_control (
    one        boolean PRIMARY KEY DEFAULT true CHECK (one),
    paused     boolean NOT NULL DEFAULT false,
    paused_by  name,
    paused_at  timestamptz
);
INSERT INTO clinic_migrate.queue_control DEFAULT VALUES;

CREATE VIEW clinic_migrate.jobs AS
SELECT j.job_id, j.tenant_id, j.action, j.state, j.attempts, j.max_attempts, j.priority,
       j.not_before, j.error, j.sqlstate, j.result, j.enqueued_by, j.enqueued_at,
       j.started_at, j.finished_at,
       coalesce(j.finished_at, CASE WHEN j.started_at IS NOT NULL THEN now() END)
         - j.started_at AS elapsed,
       j.worker_pid, j.cancel_requested
FROM clinic_migrate.job_queue j;

CREATE FUNCTION clinic_migrate.enqueue(
    tenants text[],
    action text DEFAULT 'migrate',
    priority integer DEFAULT 0,
    not_before timestamptz DEFAULT now(),
    archive boolean DEFAULT true)
RETURNS SETOF bigint
AS 'MODULE_PATHNAME', 'cm_enqueue'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION clinic_migrate.enqueue(text[], text, integer, timestamptz, boolean) IS
'queue one job per tenant; returns the job ids';

CREATE FUNCTION clinic_migrate.enqueue_pending(how_many integer, action text DEFAULT 'migrate')
RETURNS SETOF bigint
AS 'MODULE_PATHNAME', 'cm_enqueue_pending'
LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION clinic_migrate.enqueue_pending(integer, text) IS
'queue the next tenants of the registry that have not been migrated, in registry order';

CREATE FUNCTION clinic_migrate.cancel(job bigint)
RETURNS boolean
AS 'MODULE_PATHNAME', 'cm_cancel'
LANGUAGE C VOLATILE STRICT;

CREATE FUNCTION clinic_migrate.wait(job bigint, timeout interval DEFAULT NULL)
RETURNS text
AS 'MODULE_PATHNAME', 'cm_wait'
LANGUAGE C VOLATILE;

CREATE FUNCTION clinic_migrate.pause_queue()
RETURNS boolean
AS 'MODULE_PATHNAME', 'cm_pause_queue'
LANGUAGE C VOLATILE;

CREATE FUNCTION clinic_migrate.resume_queue()
RETURNS boolean
AS 'MODULE_PATHNAME', 'cm_resume_queue'
LANGUAGE C VOLATILE;

CREATE FUNCTION clinic_migrate.capture_lag_seconds(tenant text)
RETURNS double precision
AS 'MODULE_PATHNAME', 'cm_capture_lag_seconds'
LANGUAGE C STABLE STRICT;

-- Tenants in the registry (clinic_migrate.registry_table of source_schema),
-- NULL when there is none.
CREATE FUNCTION clinic_migrate.registry_count()
RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
DECLARE
    n bigint;
BEGIN
    IF current_setting('clinic_migrate.registry_table') = '' OR to_regclass(format('%I.%I',
           current_setting('clinic_migrate.source_schema'),
           current_setting('clinic_migrate.registry_table'))) IS NULL THEN
        RETURN NULL;
    END IF;
    EXECUTE format('SELECT count(*) FROM %I.%I', current_setting('clinic_migrate.source_schema'),
                   current_setting('clinic_migrate.registry_table')) INTO n;
    RETURN n;
END $$;

-- The tenants that capture or replay now, with their lag.
CREATE VIEW clinic_migrate.capture AS
SELECT t.tenant_id, t.state,
       CASE WHEN t.state = 'cut_over' THEN 'reverse' ELSE 'forward' END AS direction,
       clinic_migrate.capture_lag(t.tenant_id) AS pending_changes,
       round(clinic_migrate.capture_lag_seconds(t.tenant_id)::numeric, 1) AS lag_seconds,
       clinic_migrate.syncing(t.tenant_id) AS syncing
FROM clinic_migrate.tenants t
WHERE t.state IN ('copying', 'copied', 'failed', 'cut_over');

-- One row: where the whole migration stands.
CREATE VIEW clinic_migrate.dashboard AS
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
       c.last_pause_ms
FROM t, j, r, todo, c;

-- What needs a person, with seed 000's rules: any failure (critical); a migration
-- running longer than alert_migration_time; a tenant whose changes wait longer than
-- alert_lag_seconds or number more than alert_lag_changes; jobs that no scheduler takes.
CREATE FUNCTION clinic_migrate.alerts()
RETURNS TABLE (severity text, alert text, tenant_id text, message text)
LANGUAGE sql STABLE AS $$
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
$$;

-- A label value as Prometheus' text format writes it (\, " and newline escaped).
CREATE FUNCTION clinic_migrate.prometheus_label(v text)
RETURNS text
LANGUAGE sql IMMUTABLE STRICT
RETURN replace(replace(replace(v, '\', '\\'), '"', '\"'), E'\n', '\n');

-- The same in Prometheus' text format (for a textfile collector, or scraped
-- through postgres_exporter with monitoring/postgres_exporter.yaml).
CREATE FUNCTION clinic_migrate.metrics()
RETURNS SETOF text
LANGUAGE sql STABLE AS $$
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
              GROUP BY s.severity)
SELECT line FROM lines ORDER BY n, line
$$;

-- Nothing is granted to PUBLIC: a DBA grants the migration role what it needs
-- (see the README, "Privileges").
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA clinic_migrate FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA clinic_migrate FROM PUBLIC;
-- except what the capture triggers' WHEN clauses call on every write of the
-- shared tables: application roles must need no grant for capture to work
GRANT EXECUTE ON FUNCTION clinic_migrate.capturing(text), clinic_migrate.capturing_any() TO PUBLIC;
-- routing, for the application's roles; identity_nextval checks INSERT itself
GRANT EXECUTE ON FUNCTION clinic_migrate.tenant_schema(text), clinic_migrate.set_tenant(text, boolean),
    clinic_migrate.identity_nextval(regclass, name) TO PUBLIC;
