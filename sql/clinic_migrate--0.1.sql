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
    action        text NOT NULL CHECK (action IN ('create_schema', 'migrate', 'cutover', 'rollback',
                                                  'finalize')),
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
