-- clinic_migrate 0.8 -> 0.9: a tenant costs the same at the 5,000th as at the first.
\echo Use "ALTER EXTENSION clinic_migrate UPDATE TO '0.9'" to load this file. \quit

-- The registry guard: a tenant table's foreign key to the registry by its
-- tenant column is not made again on the tenant's copy (two triggers on the
-- registry per table per tenant); one pair of triggers on the registry,
-- calling this function, refuses to delete, re-key or truncate the registry
-- rows of tenants whose schemas exist.  Made by the migration that first
-- needs it; goes with DROP EXTENSION.
CREATE FUNCTION clinic_migrate.registry_guard()
RETURNS trigger
LANGUAGE c
AS 'MODULE_PATHNAME', 'cm_registry_guard';
COMMENT ON FUNCTION clinic_migrate.registry_guard() IS
'trigger of the registry: its rows of tenants whose schemas exist stay (in place of the copies'' foreign keys to it)';
REVOKE ALL ON FUNCTION clinic_migrate.registry_guard() FROM PUBLIC;

-- uncarried() (said by every migrate_tenant) joins the plan with catalogs:
-- with plan()'s default estimate of 1,000 rows the join looked big enough
-- to JIT-compile, which took 60 ms of a small tenant's 150.
ALTER FUNCTION clinic_migrate.plan() ROWS 50;

-- uncarried_in()'s test of a schema: the system's, clinic_migrate's, or a
-- tenant's (found through the indexes, however many tenants there are)
CREATE FUNCTION clinic_migrate.uncarried_ours(nsp oid)
RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
SELECT EXISTS (SELECT 1 FROM pg_namespace n
               WHERE n.oid = nsp
                 AND (n.nspname IN ('pg_catalog', 'information_schema', 'clinic_migrate')
                      OR n.nspname LIKE 'pg\_toast%'
                      OR EXISTS (SELECT 1 FROM clinic_migrate.tenants t WHERE t.schema_name = n.nspname)))
$$;
REVOKE ALL ON FUNCTION clinic_migrate.uncarried_ours(oid) FROM PUBLIC;

-- uncarried() for given tables: migrate_tenant passes its plan's tables (the
-- plan is not built again), and every catalog is reached through an index
-- on those tables (pg_depend, pg_trigger and pg_constraint grow with every
-- tenant's schema: read whole, they made the 5,000th tenant slower).
CREATE FUNCTION clinic_migrate.uncarried_in(tables regclass[])
RETURNS TABLE (object text, kind text, shared_table regclass, reason text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
WITH planned AS (
    SELECT t::oid AS relid, t AS table_name FROM unnest(tables) t
)
SELECT format('rule %I on %s', r.rulename, pl.table_name), 'rule', pl.table_name,
       'rules are not made again on the tenant''s table'
FROM planned pl JOIN pg_rewrite r ON r.ev_class = pl.relid
WHERE r.rulename <> '_RETURN'
UNION ALL
SELECT format('constraint trigger %I on %s', t.tgname, pl.table_name), 'constraint trigger', pl.table_name,
       'constraint triggers are not made again on the tenant''s table'
FROM planned pl JOIN pg_trigger t ON t.tgrelid = pl.relid
WHERE NOT t.tgisinternal AND t.tgconstraint <> 0
UNION ALL
SELECT format('publication %I', pub.pubname), 'publication', pl.table_name,
       'the tenant''s table is not added to the publication'
FROM planned pl JOIN pg_publication_rel pr ON pr.prrelid = pl.relid
JOIN pg_publication pub ON pub.oid = pr.prpubid
UNION ALL
SELECT DISTINCT format('%s %s', CASE c.relkind WHEN 'm' THEN 'materialized view' ELSE 'view' END, c.oid::regclass),
       'view of another schema', pl.table_name,
       'it keeps reading the shared table: after finalize it no longer sees the tenant''s rows'
FROM planned pl
JOIN pg_depend d ON d.refclassid = 'pg_class'::regclass AND d.refobjid = pl.relid
                AND d.classid = 'pg_rewrite'::regclass
JOIN pg_rewrite r ON r.oid = d.objid
JOIN pg_class c ON c.oid = r.ev_class
WHERE c.oid <> pl.relid
  AND c.relnamespace <> (SELECT relnamespace FROM pg_class WHERE oid = pl.relid)
  AND NOT clinic_migrate.uncarried_ours(c.relnamespace)
UNION ALL
SELECT DISTINCT format('foreign key %I on %s', con.conname, con.conrelid::regclass), 'foreign key of another schema',
       pl.table_name, 'it keeps pointing at the shared table, whose tenant rows go at finalize'
FROM planned pl
JOIN pg_depend d ON d.refclassid = 'pg_class'::regclass AND d.refobjid = pl.relid
                AND d.classid = 'pg_constraint'::regclass
JOIN pg_constraint con ON con.oid = d.objid AND con.contype = 'f' AND con.confrelid = pl.relid
JOIN pg_class c ON c.oid = con.conrelid
WHERE c.relnamespace <> (SELECT relnamespace FROM pg_class WHERE oid = pl.relid)
  AND NOT clinic_migrate.uncarried_ours(c.relnamespace)
UNION ALL
SELECT format('function %s', f.oid::regprocedure), 'function', f.table_name,
       'its body names the shared table with its schema: after cutover it still reads and writes there'
FROM (SELECT p.oid, p.pronamespace, pl.table_name
      FROM pg_proc p JOIN planned pl ON strpos(lower(p.prosrc), lower(pl.table_name::text)) > 0
      WHERE p.pronamespace <> 'pg_catalog'::regnamespace
        AND p.prolang <> (SELECT oid FROM pg_language WHERE lanname = 'c')
      OFFSET 0) f
WHERE NOT clinic_migrate.uncarried_ours(f.pronamespace)
ORDER BY 2, 1
$$;
COMMENT ON FUNCTION clinic_migrate.uncarried_in(regclass[]) IS
'uncarried() for the given tables (migrate_tenant passes those of its plan)';
REVOKE ALL ON FUNCTION clinic_migrate.uncarried_in(regclass[]) FROM PUBLIC;

CREATE OR REPLACE FUNCTION clinic_migrate.uncarried()
RETURNS TABLE (object text, kind text, shared_table regclass, reason text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
SELECT * FROM clinic_migrate.uncarried_in(ARRAY(SELECT p.table_name FROM clinic_migrate.plan() p
                                                WHERE p."position" IS NOT NULL))
$$;

-- uncarried() calls them with its caller's rights: whoever may execute it
-- (the README's migration role) may execute them
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT DISTINCT a.grantee::regrole AS grantee
        FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
        WHERE p.oid = 'clinic_migrate.uncarried()'::pg_catalog.regprocedure
          AND a.privilege_type = 'EXECUTE' AND a.grantee <> 0 AND a.grantee <> p.proowner
    LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION clinic_migrate.uncarried_in(regclass[]), '
                                  'clinic_migrate.uncarried_ours(oid) TO %s', r.grantee);
    END LOOP;
END
$$;

-- Lookups that ran for every move (and for every schema change in the
-- database) read every tenant's row: with thousands of tenants, by index.
CREATE INDEX tenants_source_schema ON clinic_migrate.tenants (source_schema);
CREATE INDEX tenants_capture_wal ON clinic_migrate.tenants (state) WHERE capture_method = 'wal';
CREATE INDEX tenant_tables_source_table ON clinic_migrate.tenant_tables (source_table);
