--
-- cutover: switching a copied tenant to its schema; writes that still reach its
-- shared rows (refused, retryably); routing; the reverse capture that keeps the
-- shared rows current until finalize; rollback after cutover; finalize with and
-- without an archive.  The concurrent cases are in test/specs and test/t.
--
SET client_min_messages = warning;

-- nothing to cut over, in every wrong way; nothing is changed
SELECT * FROM clinic_migrate.cutover(NULL);
SELECT * FROM clinic_migrate.cutover('');
SELECT * FROM clinic_migrate.cutover('t2');
BEGIN;
SELECT * FROM clinic_migrate.cutover('t2');
ROLLBACK;
SELECT clinic_migrate.create_tenant_schema('t2');
SELECT * FROM clinic_migrate.cutover('t2');
SELECT * FROM clinic_migrate.finalize_tenant('t2');
SELECT * FROM clinic_migrate.finalize_tenant('t2', NULL);
SELECT clinic_migrate.rollback_tenant('t2');
SELECT count(*) AS cutovers FROM clinic_migrate.cutovers;

-- migrate and cut over t2: one pause, nothing in flight
SELECT schema_name FROM clinic_migrate.migrate_tenant('t2');
SELECT clinic_migrate.tenant_schema('t2') AS before_cutover;
SELECT schema_name, attempts, keys_drained, rows_validated > 0 AS validated
FROM clinic_migrate.cutover('t2');
SELECT tenant_id, state, lives_in, cut_over_at >= completed_at AS cut_after_copy
FROM clinic_migrate.status;
SELECT direction, attempt, outcome, pause_ms >= lock_wait_ms AS pause_covers_wait,
       keys_drained, error
FROM clinic_migrate.cutovers ORDER BY cutover_id;
-- again: it is there already, no pause
SELECT schema_name, attempts FROM clinic_migrate.cutover('t2');
SELECT count(*) AS cutovers FROM clinic_migrate.cutovers;

-- writes that still reach t2's shared rows fail with a retryable error
UPDATE patients SET name = 'lost' WHERE tenant_id = 't2' AND patient_id = 1;
INSERT INTO staff VALUES ('t2', 9, NULL, 'New');
DELETE FROM shifts WHERE tenant_id = 't2';
UPDATE staff SET tenant_id = 't2' WHERE tenant_id = 't1' AND staff_no = 3;
INSERT INTO appointment_notes VALUES (100, 3, 'a note on a t2 appointment');
TRUNCATE room_bookings;
DO $$
BEGIN
    UPDATE patients SET name = 'lost' WHERE tenant_id = 't2';
EXCEPTION WHEN serialization_failure THEN
    RAISE WARNING 'SQLSTATE %: clients that retry serialization failures recover', SQLSTATE;
END $$;
-- other tenants' writes go on
UPDATE patients SET nickname = 'still writable' WHERE tenant_id = 't1' AND patient_id = 1
RETURNING tenant_id, patient_id, nickname;
UPDATE patients SET nickname = 'nick1' WHERE tenant_id = 't1' AND patient_id = 1;

-- routing: search_path to where the tenant lives, then the shared schema
SELECT clinic_migrate.set_tenant('t2');
SHOW search_path;
SELECT current_setting('app.current_tenant') AS current_tenant;
SELECT clinic_migrate.set_tenant('t1');
SHOW search_path;
BEGIN;
SELECT clinic_migrate.set_tenant('t2', is_local => true);
SHOW search_path;
COMMIT;
SHOW search_path;
SELECT clinic_migrate.tenant_schema('nobody') AS unknown_tenant;
SELECT clinic_migrate.set_tenant(NULL);

-- writes in t2's schema; new keys come from the shared sequences until finalize
SELECT clinic_migrate.set_tenant('t2');
INSERT INTO appointments (tenant_id, patient_id, starts_at, fee)
VALUES ('t2', 1, '2025-01-02 10:00+00', 10)
RETURNING id = currval('public.appointments_id_seq') AS from_the_shared_sequence, total;
INSERT INTO invoices (tenant_id, amount, issued_at, due_in)
VALUES ('t2', 9.5, '2025-01-02 00:00+00', '30 days')
RETURNING invoice_no > (SELECT max(invoice_no) FROM public.invoices) AS past_every_shared_key;
UPDATE patients SET name = 'Renamed in the schema' WHERE patient_id = 1;
DELETE FROM shifts WHERE shift_no = 2;
DELETE FROM note_attachments;
INSERT INTO staff VALUES ('t1', 7, NULL, 'Wrong tenant');
TRUNCATE shifts;
RESET search_path;
-- replayed into the shared rows
SELECT clinic_migrate.sync_now('t2') >= 0 AS replayed;
SELECT clinic_migrate.capture_lag('t2') AS lag;
SELECT table_name, source_rows, target_rows, match FROM clinic_migrate.validate_migration('t2');
SELECT name FROM public.patients WHERE tenant_id = 't2' AND patient_id = 1;
SELECT count(*) AS t2_shifts FROM public.shifts WHERE tenant_id = 't2';

-- the application's own registry columns follow, when asked to
ALTER TABLE tenants ADD COLUMN database_schema text, ADD COLUMN migration_status text;
SET clinic_migrate.registry_schema_column = 'database_schema';
SET clinic_migrate.registry_status_column = 'migration_status';

-- rollback after cutover: the same pause the other way; the schema's changes stay
SELECT clinic_migrate.rollback_tenant('t2');
SELECT tenant_id, database_schema, migration_status FROM tenants WHERE tenant_id = 't2';
SELECT name FROM public.patients WHERE tenant_id = 't2' AND patient_id = 1;
SELECT count(*) AS t2_invoices FROM public.invoices WHERE tenant_id = 't2';
SELECT count(*) AS t2_schemas FROM pg_namespace WHERE nspname = 'tenant_t2';
SELECT clinic_migrate.tenant_schema('t2') AS after_rollback;
UPDATE patients SET name = 'Patient t2-1' WHERE tenant_id = 't2' AND patient_id = 1
RETURNING name;
SELECT direction, outcome, keys_drained FROM clinic_migrate.cutovers ORDER BY cutover_id;

-- and to the end: migrate, cut over, finalize; the shared rows go to the archive
SET clinic_migrate.batch_size = 3;
SET clinic_migrate.archive_batch_size = 2;
SELECT schema_name FROM clinic_migrate.migrate_tenant('t2');
SELECT schema_name, attempts FROM clinic_migrate.cutover('t2');
SELECT tenant_id, database_schema, migration_status FROM tenants WHERE tenant_id = 't2';
-- an archive schema (or table) another role made is not written to: that role
-- would read the archived rows, and its triggers would run as the finalizing
-- role; nothing changes
CREATE ROLE regress_squatter NOLOGIN;
CREATE SCHEMA squatted AUTHORIZATION regress_squatter;
SET clinic_migrate.archive_schema = squatted;
SELECT * FROM clinic_migrate.finalize_tenant('t2');
SELECT state FROM clinic_migrate.tenants WHERE tenant_id = 't2';
ALTER SCHEMA squatted OWNER TO CURRENT_USER;
CREATE TABLE squatted.patients (LIKE public.patients);
ALTER TABLE squatted.patients OWNER TO regress_squatter;
SELECT * FROM clinic_migrate.finalize_tenant('t2');
SELECT state FROM clinic_migrate.tenants WHERE tenant_id = 't2';
RESET clinic_migrate.archive_schema;
DROP SCHEMA squatted CASCADE;
DROP ROLE regress_squatter;
SELECT * FROM clinic_migrate.finalize_tenant('t2');
SELECT tenant_id, state, lives_in, rows_archived, finalized_at IS NOT NULL AS finalized
FROM clinic_migrate.status;
SELECT tenant_id, database_schema, migration_status FROM tenants WHERE tenant_id = 't2';
CREATE TEMP VIEW t2_rows AS
SELECT 'patients' COLLATE "C" AS t, count(*) FILTER (WHERE tenant_id = 't2') AS n FROM patients
UNION ALL SELECT 'appointments', count(*) FILTER (WHERE tenant_id = 't2') FROM appointments
UNION ALL SELECT 'staff', count(*) FILTER (WHERE tenant_id = 't2') FROM staff
UNION ALL SELECT 'invoices', count(*) FILTER (WHERE tenant_id = 't2') FROM invoices
UNION ALL SELECT 'shifts', count(*) FILTER (WHERE tenant_id = 't2') FROM shifts
UNION ALL SELECT 'room_bookings', count(*) FILTER (WHERE tenant_id = 't2') FROM room_bookings
UNION ALL SELECT 'nurses', count(*) FROM nurses WHERE nurse_id = 3
UNION ALL SELECT 'wards', count(*) FROM wards WHERE ward_id = 20;
SELECT * FROM t2_rows ORDER BY t;
SELECT 'patients' COLLATE "C" AS t, count(*) FROM clinic_migrate_archive.patients
UNION ALL SELECT 'appointments', count(*) FROM clinic_migrate_archive.appointments
UNION ALL SELECT 'appointment_notes', count(*) FROM clinic_migrate_archive.appointment_notes
UNION ALL SELECT 'nurses', count(*) FROM clinic_migrate_archive.nurses
UNION ALL SELECT 'wards', count(*) FROM clinic_migrate_archive.wards
ORDER BY t;
SELECT name FROM clinic_migrate_archive.patients WHERE patient_id = 1;
-- the tenant's tables have sequences of their own again, and no trigger of ours
SELECT a.attrelid::regclass AS table_name, a.attname, a.attidentity,
       pg_get_expr(d.adbin, d.adrelid) AS default_value
FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE (a.attrelid, a.attname) IN (('tenant_t2.invoices'::regclass, 'invoice_no'),
                                  ('tenant_t2.appointments'::regclass, 'id'))
ORDER BY 1;
SELECT count(*) AS our_triggers FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
WHERE c.relnamespace = 'tenant_t2'::regnamespace AND t.tgname LIKE 'clinic\_migrate%';
SELECT table_name, sequences_ok FROM clinic_migrate.validate_migration('t2');
INSERT INTO tenant_t2.invoices (tenant_id, amount, issued_at, due_in)
VALUES ('t2', 1, '2025-02-01 00:00+00', '1 day')
RETURNING invoice_no > (SELECT max(invoice_no) FROM public.invoices) AS past_every_key;
-- no tenant needs the shared tables' capture triggers any more: the last
-- finalize took them off (every tenant's writes pay nothing for them), and
-- with them the refusal of writes that name t2 in the shared tables
SELECT c.relname, count(t.oid) AS capture_triggers
FROM pg_class c LEFT JOIN pg_trigger t ON t.tgrelid = c.oid AND t.tgname LIKE 'clinic\_migrate\_%'
WHERE c.relnamespace = 'public'::regnamespace AND c.relname IN ('staff', 'patients', 'appointments')
GROUP BY 1 ORDER BY 1;
SELECT count(*) AS moving FROM clinic_migrate.tenants
WHERE state NOT IN ('schema_created', 'finalized');
INSERT INTO staff VALUES ('t2', 8, NULL, 'Late');
DELETE FROM staff WHERE tenant_id = 't2' AND staff_no = 8;
-- rollback can no longer be
SELECT clinic_migrate.rollback_tenant('t2');
SELECT * FROM clinic_migrate.finalize_tenant('t2');

-- a trigger that only has the capture's name is not taken for it: the move
-- stops before changing anything, and the trigger is left alone
CREATE FUNCTION regress_decoy() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NULL; END$$;
CREATE TRIGGER clinic_migrate_capture_insert AFTER INSERT ON staff
    FOR EACH ROW EXECUTE FUNCTION regress_decoy();
SELECT schema_name FROM clinic_migrate.migrate_tenant('t1');
SELECT tgname, tgfoid::regproc FROM pg_trigger
WHERE tgrelid = 'public.staff'::regclass AND tgname LIKE 'clinic\_migrate\_%';
DROP TRIGGER clinic_migrate_capture_insert ON staff;
DROP FUNCTION regress_decoy();
-- t1 without an archive: its staff point at each other (one forward), its
-- nurses and wards at each other (a cycle); its rows simply go
SELECT schema_name FROM clinic_migrate.migrate_tenant('t1');
-- and the next migration puts the capture triggers back
SELECT count(*) AS capture_triggers_on_staff FROM pg_trigger
WHERE tgrelid = 'public.staff'::regclass AND tgname LIKE 'clinic\_migrate\_%';
-- but not the refusal of writes that name the finalized t2: it ended with
-- finalize, whether the triggers are on or off
INSERT INTO staff VALUES ('t2', 9, NULL, 'Later');
DELETE FROM staff WHERE tenant_id = 't2' AND staff_no = 9;
SELECT schema_name, attempts FROM clinic_migrate.cutover('t1');
SELECT * FROM clinic_migrate.finalize_tenant('t1', archive => false);
SELECT count(*) AS t1_rows_left
FROM (SELECT tenant_id FROM patients UNION ALL SELECT tenant_id FROM appointments
      UNION ALL SELECT tenant_id FROM staff UNION ALL SELECT tenant_id FROM invoices
      UNION ALL SELECT tenant_id FROM shifts UNION ALL SELECT tenant_id FROM room_bookings) r
WHERE tenant_id = 't1';
SELECT (SELECT count(*) FROM nurses) AS nurses, (SELECT count(*) FROM wards) AS wards,
       (SELECT count(*) FROM appointment_notes) AS notes;
SELECT count(*) AS t1_archived FROM clinic_migrate_archive.patients WHERE tenant_id = 't1';
SELECT tenant_id, action, status, error FROM clinic_migrate.runs
WHERE action IN ('cutover', 'finalize') ORDER BY run_id;

-- a finalized tenant's schema is its own: drop it by hand, then forget it
RESET clinic_migrate.batch_size;
RESET clinic_migrate.archive_batch_size;
RESET clinic_migrate.registry_schema_column;
RESET clinic_migrate.registry_status_column;
DROP VIEW t2_rows;
DROP SCHEMA tenant_t1, tenant_t2, clinic_migrate_archive CASCADE;
DELETE FROM clinic_migrate.tenants;
ALTER TABLE tenants DROP COLUMN database_schema, DROP COLUMN migration_status;
RESET client_min_messages;
