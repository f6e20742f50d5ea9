--
-- upgrade: a tenant moved half-way under version 0.1 finishes its move after
-- ALTER EXTENSION clinic_migrate UPDATE (0.1 -> 0.2 -> 0.3), in a database of its own.
--
SELECT current_database() AS regress_db \gset
SET client_min_messages = warning;
CREATE DATABASE regress_clinic_upgrade;
\c regress_clinic_upgrade
SET client_min_messages = warning;
CREATE EXTENSION clinic_migrate VERSION '0.1';
RESET client_min_messages;
SET clinic_migrate.progress_interval = 0;
SET clinic_migrate.batch_size = 2;
SELECT extversion FROM pg_extension WHERE extname = 'clinic_migrate';

CREATE TABLE tenants (tenant_id text PRIMARY KEY);
INSERT INTO tenants VALUES ('u1'), ('u2');
CREATE TABLE patients (id bigserial PRIMARY KEY, tenant_id text NOT NULL REFERENCES tenants,
                       email text, name text NOT NULL, UNIQUE (tenant_id, email));
CREATE TABLE visits (id bigserial PRIMARY KEY, patient_id bigint NOT NULL REFERENCES patients,
                     note text);
INSERT INTO patients (tenant_id, email, name)
SELECT 'u' || (1 + i % 2), 'p' || i || '@example.org', 'Patient ' || i FROM generate_series(1, 10) i;
INSERT INTO visits (patient_id, note) SELECT id, 'visit of ' || name FROM patients;
CREATE TABLE rooms (id int PRIMARY KEY, tenant_id text NOT NULL REFERENCES tenants, booked tstzrange NOT NULL,
                    EXCLUDE USING gist (booked WITH &&));
CREATE INDEX ON rooms (tenant_id, id);
INSERT INTO rooms VALUES (1, 'u1', '[2025-01-01 09:00+00, 2025-01-01 10:00+00)'),
                         (2, 'u1', '[2025-01-01 11:00+00, 2025-01-01 12:00+00)'),
                         (3, 'u2', '[2025-01-02 09:00+00, 2025-01-02 10:00+00)');

-- half-way under 0.1: copied, capture on, changes captured and not replayed
SELECT schema_name, tables, rows_copied FROM clinic_migrate.migrate_tenant('u1');
UPDATE patients SET name = 'Renamed under 0.1' WHERE id = 2;
INSERT INTO visits (patient_id, note) VALUES (4, 'new under 0.1');
-- (the database's sync worker may replay them at any moment from here)
-- a job queued under 0.1 (no scheduler runs here: it stays queued)
SELECT count(*) AS queued FROM clinic_migrate.enqueue(ARRAY['u2'], 'migrate');

ALTER EXTENSION clinic_migrate UPDATE;
SELECT extversion FROM pg_extension WHERE extname = 'clinic_migrate';
-- what 0.2 changed: the schema is reachable by application roles, jobs know their session
SELECT has_schema_privilege('public', 'clinic_migrate', 'USAGE') AS public_usage;
SELECT tenant_id, state, session_role IS NULL AS queued_before_upgrade
FROM clinic_migrate.job_queue ORDER BY job_id;
SELECT clinic_migrate.cancel(job_id) FROM clinic_migrate.job_queue WHERE tenant_id = 'u2';

-- the move goes on: replay of what 0.1 captured, more changes, validation, cutover
SELECT clinic_migrate.sync_now('u1') >= 0 AS replayed, clinic_migrate.capture_lag('u1') AS pending;
BEGIN;
DELETE FROM visits WHERE patient_id = 6;
DELETE FROM patients WHERE id = 6;
INSERT INTO patients (tenant_id, email, name) VALUES ('u1', 'p6@example.org', 'Took the email of 6');
COMMIT;
-- two bookings swap their times: the exclusion constraint is violated mid-replay
BEGIN;
UPDATE rooms SET booked = '[2025-01-03 09:00+00, 2025-01-03 10:00+00)' WHERE id = 1;
UPDATE rooms SET booked = '[2025-01-01 09:00+00, 2025-01-01 10:00+00)' WHERE id = 2;
UPDATE rooms SET booked = '[2025-01-01 11:00+00, 2025-01-01 12:00+00)' WHERE id = 1;
COMMIT;
SELECT clinic_migrate.sync_now('u1') >= 0 AS replayed, clinic_migrate.capture_lag('u1') AS pending;
SELECT table_name, source_rows, target_rows, match FROM clinic_migrate.validate_migration('u1')
ORDER BY table_name;
SELECT schema_name, attempts FROM clinic_migrate.cutover('u1');
SELECT clinic_migrate.set_tenant('u1');
UPDATE patients SET name = 'Renamed in the schema' WHERE id = 2;
RESET search_path;
SELECT clinic_migrate.sync_now('u1') >= 0 AS replayed, clinic_migrate.capture_lag('u1') AS pending;
SELECT id, name FROM public.patients WHERE tenant_id = 'u1' ORDER BY id;
SELECT id, email, name FROM tenant_u1.patients ORDER BY id;
SELECT id, booked FROM tenant_u1.rooms ORDER BY id;
SELECT schema_name FROM clinic_migrate.finalize_tenant('u1', archive => false);
SELECT tenant_id, state FROM clinic_migrate.status ORDER BY tenant_id;
SELECT count(*) AS shared_rows_of_u1 FROM public.patients WHERE tenant_id = 'u1';
SELECT count(*) AS rows_in_schema FROM tenant_u1.patients;

\c :regress_db
SET client_min_messages = warning;
DROP DATABASE regress_clinic_upgrade WITH (FORCE);
