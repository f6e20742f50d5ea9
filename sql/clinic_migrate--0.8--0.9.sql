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
ALTER FUNCTION clinic_migrate.uncarried() SET jit = off;
