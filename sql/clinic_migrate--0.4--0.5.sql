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
    WHEN TAG IN ('ALTER TABLE', 'CREATE INDEX')
    EXECUTE FUNCTION clinic_migrate.follow_ddl();
ALTER EVENT TRIGGER clinic_migrate_follow_ddl ENABLE ALWAYS;
