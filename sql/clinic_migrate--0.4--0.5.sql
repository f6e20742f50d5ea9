-- clinic_migrate 0.4 -> 0.5: the application's schema changes follow the
-- tenants that are moving (an event trigger at ddl_command_end).
\echo Use "ALTER EXTENSION clinic_migrate UPDATE TO '0.5'" to load this file. \quit

CREATE FUNCTION clinic_migrate.follow_ddl()
RETURNS event_trigger
AS 'MODULE_PATHNAME', 'cm_follow_ddl'
LANGUAGE C;
COMMENT ON FUNCTION clinic_migrate.follow_ddl() IS
'event trigger: ALTER TABLE, RENAME and CREATE INDEX of a shared table run again on the copies of the tenants moving';
REVOKE ALL ON FUNCTION clinic_migrate.follow_ddl() FROM PUBLIC;

-- ALWAYS: a schema change made with session_replication_role = replica
-- (a restore, a replica's apply) must reach the copies too
CREATE EVENT TRIGGER clinic_migrate_follow_ddl ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE', 'CREATE INDEX', 'ALTER INDEX', 'ALTER VIEW', 'ALTER MATERIALIZED VIEW',
                 'ALTER FOREIGN TABLE', 'ALTER SEQUENCE')
    EXECUTE FUNCTION clinic_migrate.follow_ddl();
ALTER EVENT TRIGGER clinic_migrate_follow_ddl ENABLE ALWAYS;

-- The fan-out: one schema change for every tenant (issue "clinic_migrate 5").
CREATE TABLE clinic_migrate.schema_changes (
    version         text PRIMARY KEY CHECK (version <> ''),
    ddl             text NOT NULL,
    position        bigserial NOT NULL UNIQUE,
    created_by      name NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    shared_done_at  timestamptz
);
COMMENT ON TABLE clinic_migrate.schema_changes IS
    'the schema changes of fan_out, in the order they are applied; shared_done_at: when the shared tables took it';
CREATE TABLE clinic_migrate.tenant_schema_versions (
    tenant_id   text NOT NULL,
    version     text NOT NULL REFERENCES clinic_migrate.schema_changes ON DELETE CASCADE,
    applied_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    job_id      bigint,
    PRIMARY KEY (tenant_id, version)
);
COMMENT ON TABLE clinic_migrate.tenant_schema_versions IS
    'the fan_out versions each finalized tenant''s schema has taken';
SELECT pg_catalog.pg_extension_config_dump('clinic_migrate.schema_changes', '');
SELECT pg_catalog.pg_extension_config_dump('clinic_migrate.schema_changes_position_seq', '');
SELECT pg_catalog.pg_extension_config_dump('clinic_migrate.tenant_schema_versions', '');
REVOKE ALL ON clinic_migrate.schema_changes, clinic_migrate.tenant_schema_versions FROM PUBLIC;

ALTER TABLE clinic_migrate.job_queue ADD COLUMN schema_version text;
COMMENT ON COLUMN clinic_migrate.job_queue.schema_version IS
    'schema_change jobs: the fan_out version they apply';
ALTER TABLE clinic_migrate.job_queue DROP CONSTRAINT job_queue_action_check;
ALTER TABLE clinic_migrate.job_queue ADD CONSTRAINT job_queue_action_check
    CHECK (action IN ('migrate', 'validate', 'cutover', 'rollback', 'finalize', 'schema_change'));

CREATE FUNCTION clinic_migrate.fan_out(version text, ddl text DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'cm_fan_out'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION clinic_migrate.fan_out(text, text) IS
'one schema change for every tenant: the shared tables now (and the copies of the tenants moving), a job per finalized tenant''s schema; again with NULL, the tenants that lack it';
REVOKE ALL ON FUNCTION clinic_migrate.fan_out(text, text) FROM PUBLIC;

-- status: the schema version of each tenant (the shared tables' one for a tenant
-- that is not finalized: its copy follows them)
CREATE OR REPLACE VIEW clinic_migrate.status AS
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
       t.last_error,
       CASE WHEN t.state = 'finalized'
            THEN (SELECT v.version FROM clinic_migrate.tenant_schema_versions v
                  JOIN clinic_migrate.schema_changes c ON c.version = v.version
                  WHERE v.tenant_id = t.tenant_id ORDER BY c.position DESC LIMIT 1)
            ELSE (SELECT c.version FROM clinic_migrate.schema_changes c
                  WHERE c.shared_done_at IS NOT NULL ORDER BY c.position DESC LIMIT 1)
       END AS schema_version
FROM clinic_migrate.tenants t
LEFT JOIN LATERAL (
    SELECT sum(tt.rows_total)::bigint AS rows_total,
           count(*) FILTER (WHERE tt.copied)::integer AS tables_copied,
           count(*)::integer AS tables,
           (array_agg(tt.table_name ORDER BY tt.position)
                FILTER (WHERE NOT tt.copied))[1] AS current_table
    FROM clinic_migrate.tenant_tables tt
    WHERE tt.tenant_id = t.tenant_id) p ON true;

-- What a tenant's copy cannot carry, listed before anything moves (also as a
-- WARNING of migrate_tenant): it stays with the shared tables.
CREATE FUNCTION clinic_migrate.uncarried()
RETURNS TABLE (object text, kind text, shared_table regclass, reason text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
WITH planned AS (
    SELECT p.table_name::oid AS relid, p.table_name
    FROM clinic_migrate.plan() p WHERE p."position" IS NOT NULL
), ours AS (
    SELECT n.oid FROM pg_namespace n
    WHERE n.nspname IN ('pg_catalog', 'information_schema', 'clinic_migrate')
       OR n.nspname LIKE 'pg\_toast%'
       OR n.oid IN (SELECT t.schema_oid::oid FROM clinic_migrate.tenants t)
)
SELECT format('rule %I on %s', r.rulename, pl.table_name), 'rule', pl.table_name,
       'rules are not made again on the tenant''s table'
FROM pg_rewrite r JOIN planned pl ON pl.relid = r.ev_class
WHERE r.rulename <> '_RETURN'
UNION ALL
SELECT format('constraint trigger %I on %s', t.tgname, pl.table_name), 'constraint trigger', pl.table_name,
       'constraint triggers are not made again on the tenant''s table'
FROM pg_trigger t JOIN planned pl ON pl.relid = t.tgrelid
WHERE NOT t.tgisinternal AND t.tgconstraint <> 0
UNION ALL
SELECT format('publication %I', pub.pubname), 'publication', pl.table_name,
       'the tenant''s table is not added to the publication'
FROM pg_publication_rel pr JOIN pg_publication pub ON pub.oid = pr.prpubid
JOIN planned pl ON pl.relid = pr.prrelid
UNION ALL
SELECT DISTINCT format('%s %s', CASE c.relkind WHEN 'm' THEN 'materialized view' ELSE 'view' END, c.oid::regclass),
       'view of another schema', pl.table_name,
       'it keeps reading the shared table: after finalize it no longer sees the tenant''s rows'
FROM pg_depend d JOIN planned pl ON pl.relid = d.refobjid
JOIN pg_rewrite r ON d.classid = 'pg_rewrite'::regclass AND r.oid = d.objid
JOIN pg_class c ON c.oid = r.ev_class
WHERE d.refclassid = 'pg_class'::regclass AND c.oid <> pl.relid
  AND c.relnamespace <> (SELECT relnamespace FROM pg_class WHERE oid = pl.relid)
  AND c.relnamespace NOT IN (SELECT oid FROM ours)
UNION ALL
SELECT DISTINCT format('foreign key %I on %s', con.conname, con.conrelid::regclass), 'foreign key of another schema',
       pl.table_name, 'it keeps pointing at the shared table, whose tenant rows go at finalize'
FROM pg_constraint con JOIN planned pl ON pl.relid = con.confrelid
JOIN pg_class c ON c.oid = con.conrelid
WHERE con.contype = 'f'
  AND c.relnamespace <> (SELECT relnamespace FROM pg_class WHERE oid = pl.relid)
  AND c.relnamespace NOT IN (SELECT oid FROM ours)
UNION ALL
SELECT format('function %s', p.oid::regprocedure), 'function', pl.table_name,
       'its body names the shared table with its schema: after cutover it still reads and writes there'
FROM pg_proc p JOIN planned pl ON strpos(lower(p.prosrc), lower(pl.table_name::text)) > 0
WHERE p.pronamespace NOT IN (SELECT oid FROM ours)
  AND p.prolang <> (SELECT oid FROM pg_language WHERE lanname = 'c')
ORDER BY 2, 1
$$;
COMMENT ON FUNCTION clinic_migrate.uncarried() IS
'what the tenants'' copies of the planned tables do not carry (rules, constraint triggers, publications, views and foreign keys of other schemas, functions naming a shared table with its schema)';
REVOKE ALL ON FUNCTION clinic_migrate.uncarried() FROM PUBLIC;
