-- clinic_migrate 0.6 -> 0.7: partitioned tables move with the tenant.
\echo Use "ALTER EXTENSION clinic_migrate UPDATE TO '0.7'" to load this file. \quit

-- A partition made or attached under a partitioned table gets the table's
-- row triggers, ours included; PostgreSQL checks that the role making the
-- partition may execute their functions.  Open to every role so that the
-- application's own deploys may add partitions while a tenant moves.  They
-- run only as triggers, and only on the tables clinic_migrate records:
-- anywhere else they raise an error.
GRANT EXECUTE ON FUNCTION clinic_migrate.capture() TO PUBLIC;
GRANT EXECUTE ON FUNCTION clinic_migrate.capture_reverse() TO PUBLIC;
GRANT EXECUTE ON FUNCTION clinic_migrate.guard_truncate() TO PUBLIC;
