-- clinic_migrate 0.5 -> 0.6: more of the application's schema changes
-- follow the tenants that are moving: a new table the plan takes, DROP
-- TABLE and DROP INDEX, COMMENT, GRANT and REVOKE.
\echo Use "ALTER EXTENSION clinic_migrate UPDATE TO '0.6'" to load this file. \quit

-- an event trigger's tags cannot be altered: made again, with the new ones
DROP EVENT TRIGGER clinic_migrate_follow_ddl;
CREATE EVENT TRIGGER clinic_migrate_follow_ddl ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE', 'CREATE INDEX', 'ALTER INDEX', 'ALTER VIEW', 'ALTER MATERIALIZED VIEW',
                 'ALTER FOREIGN TABLE', 'ALTER SEQUENCE',
                 'CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO', 'COMMENT', 'GRANT', 'REVOKE')
    EXECUTE FUNCTION clinic_migrate.follow_ddl();
ALTER EVENT TRIGGER clinic_migrate_follow_ddl ENABLE ALWAYS;
COMMENT ON FUNCTION clinic_migrate.follow_ddl() IS
'event trigger: ALTER TABLE, RENAME, CREATE INDEX, COMMENT, GRANT and REVOKE of a shared table run again on the copies of the tenants moving; a new table the plan takes gets its copies';

CREATE FUNCTION clinic_migrate.follow_drop()
RETURNS event_trigger
AS 'MODULE_PATHNAME', 'cm_follow_drop'
LANGUAGE C;
COMMENT ON FUNCTION clinic_migrate.follow_drop() IS
'event trigger: DROP TABLE and DROP INDEX of a shared table drop the copies of the tenants moving';
REVOKE ALL ON FUNCTION clinic_migrate.follow_drop() FROM PUBLIC;
CREATE EVENT TRIGGER clinic_migrate_follow_drop ON sql_drop
    WHEN TAG IN ('DROP TABLE', 'DROP INDEX')
    EXECUTE FUNCTION clinic_migrate.follow_drop();
ALTER EVENT TRIGGER clinic_migrate_follow_drop ENABLE ALWAYS;
