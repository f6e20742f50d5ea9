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

-- CREATE INDEX CONCURRENTLY of a shared table: the copies' indexes wait here
-- for an index job (or the tenant's cutover) to build them
CREATE TABLE clinic_migrate.pending_indexes (
    tenant_id   text NOT NULL REFERENCES clinic_migrate.tenants ON DELETE CASCADE,
    index_name  name NOT NULL,
    copy_table  regclass NOT NULL,
    ddl         text NOT NULL,
    queued_by   name NOT NULL,
    queued_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    built_at    timestamptz,
    attempts    integer NOT NULL DEFAULT 0,
    error       text,
    PRIMARY KEY (tenant_id, index_name)
);
COMMENT ON TABLE clinic_migrate.pending_indexes IS
    'indexes made CONCURRENTLY on shared tables, to be built on the moving tenants'' copies (built_at once done)';
SELECT pg_catalog.pg_extension_config_dump('clinic_migrate.pending_indexes', '');
REVOKE ALL ON clinic_migrate.pending_indexes FROM PUBLIC;

ALTER TABLE clinic_migrate.job_queue DROP CONSTRAINT job_queue_action_check;
ALTER TABLE clinic_migrate.job_queue ADD CONSTRAINT job_queue_action_check
    CHECK (action IN ('migrate', 'validate', 'cutover', 'rollback', 'finalize', 'schema_change', 'index'));
ALTER TABLE clinic_migrate.runs DROP CONSTRAINT runs_action_check;
ALTER TABLE clinic_migrate.runs ADD CONSTRAINT runs_action_check
    CHECK (action IN ('create_schema', 'migrate', 'validate', 'cutover', 'rollback', 'finalize', 'index'));
