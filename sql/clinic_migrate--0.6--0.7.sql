-- clinic_migrate 0.6 -> 0.7: partitioned tables move with the tenant.
\echo Use "ALTER EXTENSION clinic_migrate UPDATE TO '0.7'" to load this file. \quit

-- What the end of a statement could not undo, refused at its start while a
-- tenant has a copy: DETACH PARTITION (CONCURRENTLY commits its first
-- transaction before the statement ends), RENAME or SET SCHEMA of a
-- partition or of a view the tenants have; DROP, ENABLE or DISABLE of
-- clinic_migrate's capture triggers while a tenant's changes are captured;
-- and a DROP TABLE of a partition, whose parent is gone from the catalogs by
-- sql_drop, is recorded here for clinic_migrate_follow_drop.
CREATE FUNCTION clinic_migrate.guard_ddl()
RETURNS event_trigger
AS 'MODULE_PATHNAME', 'cm_guard_ddl'
LANGUAGE C;
COMMENT ON FUNCTION clinic_migrate.guard_ddl() IS
'event trigger: at the start of ALTER TABLE, ALTER VIEW, DROP TABLE and DROP TRIGGER, refuses what would break a move (DETACH, RENAME and SET SCHEMA of a partition or view the tenants have; DROP, ENABLE, DISABLE of capture triggers) and notes the partitions a DROP TABLE drops';
REVOKE ALL ON FUNCTION clinic_migrate.guard_ddl() FROM PUBLIC;
CREATE EVENT TRIGGER clinic_migrate_guard_ddl ON ddl_command_start
    WHEN TAG IN ('ALTER TABLE', 'DROP TABLE', 'DROP TRIGGER', 'ALTER TRIGGER', 'ALTER VIEW', 'ALTER MATERIALIZED VIEW')
    EXECUTE FUNCTION clinic_migrate.guard_ddl();
ALTER EVENT TRIGGER clinic_migrate_guard_ddl ENABLE ALWAYS;

-- CREATE TRIGGER on a planned table, and CREATE VIEW or MATERIALIZED VIEW in a
-- source schema, reach the copies too; DROP TRIGGER as well.  An event
-- trigger's tags cannot be altered: made again, with the new ones.
DROP EVENT TRIGGER clinic_migrate_follow_ddl;
CREATE EVENT TRIGGER clinic_migrate_follow_ddl ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE', 'CREATE INDEX', 'ALTER INDEX', 'ALTER VIEW', 'ALTER MATERIALIZED VIEW',
                 'ALTER FOREIGN TABLE', 'ALTER SEQUENCE',
                 'CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO', 'COMMENT', 'GRANT', 'REVOKE',
                 'CREATE TRIGGER', 'CREATE VIEW', 'CREATE MATERIALIZED VIEW')
    EXECUTE FUNCTION clinic_migrate.follow_ddl();
ALTER EVENT TRIGGER clinic_migrate_follow_ddl ENABLE ALWAYS;
COMMENT ON FUNCTION clinic_migrate.follow_ddl() IS
'event trigger: ALTER TABLE, RENAME, CREATE INDEX, CREATE TRIGGER, COMMENT, GRANT and REVOKE of a shared table run again on the copies of the tenants moving; a new table the plan takes, a new partition, a new view get theirs';


-- DROP TRIGGER and DROP VIEW reach the copies; DROP OWNED and DROP SCHEMA drop shared
-- tables too: their copies, records and capture logs go as with DROP TABLE.
DROP EVENT TRIGGER clinic_migrate_follow_drop;
CREATE EVENT TRIGGER clinic_migrate_follow_drop ON sql_drop
    WHEN TAG IN ('DROP TABLE', 'DROP INDEX', 'DROP TRIGGER', 'DROP VIEW', 'DROP MATERIALIZED VIEW',
                 'DROP OWNED', 'DROP SCHEMA')
    EXECUTE FUNCTION clinic_migrate.follow_drop();
ALTER EVENT TRIGGER clinic_migrate_follow_drop ENABLE ALWAYS;
COMMENT ON FUNCTION clinic_migrate.follow_drop() IS
'event trigger: DROP TABLE, DROP INDEX, DROP TRIGGER, DROP VIEW, DROP OWNED and DROP SCHEMA of shared tables (or partitions) and views drop the copies of the tenants moving';
