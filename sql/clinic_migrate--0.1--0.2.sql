-- clinic_migrate 0.1 -> 0.2: the defects of the first review (issue "clinic_migrate 10").
\echo Use "ALTER EXTENSION clinic_migrate UPDATE TO '0.2'" to load this file. \quit

-- The routing functions (tenant_schema, set_tenant, identity_nextval) and the
-- capture triggers' WHEN functions are granted to PUBLIC; an application role
-- must be able to reach them.  Every other function and every table stays
-- revoked from PUBLIC, as 0.1 made them.
GRANT USAGE ON SCHEMA clinic_migrate TO PUBLIC;

-- A job's worker connects as the session user of whoever queued it (run_as is
-- that session's current role): RESET ROLE inside a job leads back to no more
-- than that session had.  NULL for jobs queued before 0.2: they connect as run_as.
-- A name, not an OID: role OIDs do not survive a dump restored elsewhere.
ALTER TABLE clinic_migrate.job_queue ADD COLUMN session_role name;
COMMENT ON COLUMN clinic_migrate.job_queue.session_role IS
    'the session user of whoever queued the job: its worker connects as this role';
