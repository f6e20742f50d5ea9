-- clinic_migrate 0.6 -> 0.7: partitioned tables move with the tenant.
\echo Use "ALTER EXTENSION clinic_migrate UPDATE TO '0.7'" to load this file. \quit

-- What the end of a statement could not undo, refused at its start while a
-- tenant has a copy: DETACH PARTITION (CONCURRENTLY commits its first
-- transaction before the statement ends), RENAME or SET SCHEMA of a
-- partition; and a DROP TABLE of a partition, whose parent is gone from the
-- catalogs by sql_drop, is recorded here for clinic_migrate_follow_drop.
CREATE FUNCTION clinic_migrate.guard_ddl()
RETURNS event_trigger
AS 'MODULE_PATHNAME', 'cm_guard_ddl'
LANGUAGE C;
COMMENT ON FUNCTION clinic_migrate.guard_ddl() IS
'event trigger: at the start of ALTER TABLE and DROP TABLE, refuses DETACH, RENAME and SET SCHEMA of a partition of a table a tenant has a copy of, and notes the partitions a DROP TABLE drops';
REVOKE ALL ON FUNCTION clinic_migrate.guard_ddl() FROM PUBLIC;
CREATE EVENT TRIGGER clinic_migrate_guard_ddl ON ddl_command_start
    WHEN TAG IN ('ALTER TABLE', 'DROP TABLE')
    EXECUTE FUNCTION clinic_migrate.guard_ddl();
ALTER EVENT TRIGGER clinic_migrate_guard_ddl ENABLE ALWAYS;
