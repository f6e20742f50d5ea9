-- clinic_migrate 0.3 -> 0.4: the tenants that stay in the shared tables: row
-- level security, and which tenants to move next (issue "clinic_migrate 9").
\echo Use "ALTER EXTENSION clinic_migrate UPDATE TO '0.4'" to load this file. \quit

-- What enable_tenant_rls changed, table by table, so that disable_tenant_rls
-- restores each table's own flags and the clone copies the table's own
-- policies, not clinic_migrate's.
CREATE TABLE clinic_migrate.tenant_rls (
    table_name    regclass PRIMARY KEY,
    source_schema name NOT NULL,
    mode          text NOT NULL CHECK (mode IN ('permissive', 'enforce')),
    roles         regrole[] NOT NULL,
    rls_before    boolean NOT NULL,
    force_before  boolean NOT NULL,
    since         timestamptz NOT NULL,
    enabled_by    name NOT NULL
);
COMMENT ON TABLE clinic_migrate.tenant_rls IS
    'the shared tables that carry the tenant policies of enable_tenant_rls, and their own row level security flags before';
SELECT pg_catalog.pg_extension_config_dump('clinic_migrate.tenant_rls', '');
REVOKE ALL ON clinic_migrate.tenant_rls FROM PUBLIC;

CREATE FUNCTION clinic_migrate.enable_tenant_rls(roles name[], mode text DEFAULT 'enforce')
RETURNS integer
AS 'MODULE_PATHNAME', 'cm_enable_tenant_rls'
LANGUAGE C VOLATILE
SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION clinic_migrate.enable_tenant_rls(name[], text) IS
'row level security on every planned shared table: the roles see and write only the rows of the session''s tenant (app.current_tenant); mode permissive counts instead of hiding';

CREATE FUNCTION clinic_migrate.disable_tenant_rls()
RETURNS integer
AS 'MODULE_PATHNAME', 'cm_disable_tenant_rls'
LANGUAGE C VOLATILE
SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION clinic_migrate.disable_tenant_rls() IS
'take the tenant policies off and restore each table''s own row level security flags';

-- The session's tenant as the tenant column's type (the argument's), NULL when
-- none is set: what the tenant policies compare with.  No SET clause: it runs
-- in the application's statements and names nothing.
CREATE FUNCTION clinic_migrate.current_tenant(type_of anyelement)
RETURNS anyelement
AS 'MODULE_PATHNAME', 'cm_current_tenant'
LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION clinic_migrate.current_tenant(anyelement) IS
'the session''s tenant (app.current_tenant, set by set_tenant) as the argument''s type; NULL when none is set';

-- Called by the permissive mode's policy, as the application's role, for a
-- row that enforcing would hide: counts it and admits it.  No SET clause:
-- it runs in the application's statements and names nothing.
CREATE FUNCTION clinic_migrate.tenant_rls_audit(table_name regclass)
RETURNS boolean
AS 'MODULE_PATHNAME', 'cm_tenant_rls_audit'
LANGUAGE C VOLATILE PARALLEL SAFE;

CREATE FUNCTION clinic_migrate.tenant_rls_report()
RETURNS TABLE (role name, table_name regclass, rows_of_other_tenants bigint,
               rows_without_tenant bigint, last_seen timestamptz)
AS 'MODULE_PATHNAME', 'cm_tenant_rls_report'
LANGUAGE C VOLATILE
SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION clinic_migrate.tenant_rls_report() IS
'in permissive mode: per role and table, the rows the enforcing policy would have hidden since the mode was set';

CREATE FUNCTION clinic_migrate.tenant_estimates()
RETURNS TABLE (tenant text, state text, estimated_rows bigint, estimated_bytes bigint,
               from_statistics boolean)
AS 'MODULE_PATHNAME', 'cm_tenant_estimates'
LANGUAGE C STABLE
SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION clinic_migrate.tenant_estimates() IS
'every tenant with an estimate of its rows and bytes in the planned tables, from the statistics of the last ANALYZE';

CREATE VIEW clinic_migrate.candidates AS
SELECT pg_catalog.rank() OVER (ORDER BY e.estimated_rows DESC) AS rank,
       e.tenant, e.state, e.estimated_rows, e.estimated_bytes, e.from_statistics
FROM clinic_migrate.tenant_estimates() e;
COMMENT ON VIEW clinic_migrate.candidates IS
'tenants ranked by their estimated rows in the planned tables (statistics, nothing counted): which to move next';
REVOKE ALL ON clinic_migrate.candidates FROM PUBLIC;

CREATE FUNCTION clinic_migrate.enqueue_candidates(min_rows bigint, how_many integer)
RETURNS SETOF bigint
LANGUAGE sql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT clinic_migrate.enqueue(ARRAY(
        SELECT e.tenant FROM clinic_migrate.tenant_estimates() e
        WHERE e.state IN ('shared', 'schema_created')
          AND e.estimated_rows >= enqueue_candidates.min_rows
          AND NOT EXISTS (SELECT FROM clinic_migrate.job_queue j
                          WHERE j.tenant_id = e.tenant
                            AND (j.state IN ('queued', 'running')
                                 OR (j.action = 'migrate' AND j.state = 'failed')))
        ORDER BY e.estimated_rows DESC, e.tenant
        LIMIT enqueue_candidates.how_many), 'migrate')
$$;
COMMENT ON FUNCTION clinic_migrate.enqueue_candidates(bigint, integer) IS
'queue the migration of the biggest tenants still shared, of at least min_rows estimated rows, how_many at most (for pg_cron)';

REVOKE ALL ON FUNCTION clinic_migrate.enable_tenant_rls(name[], text), clinic_migrate.disable_tenant_rls(),
    clinic_migrate.tenant_rls_report(), clinic_migrate.tenant_estimates(),
    clinic_migrate.enqueue_candidates(bigint, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION clinic_migrate.tenant_rls_audit(regclass), clinic_migrate.current_tenant(anyelement)
    TO PUBLIC;
