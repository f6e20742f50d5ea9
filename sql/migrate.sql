--
-- migrate: migrate_tenant copies a tenant's rows into its schema in committed
-- batches (in a background worker); status, progress and runs report it.
--
\pset null '(null)'
SET clinic_migrate.progress_interval = 0;
-- three rows a batch: every table of t1 takes several batches
SET clinic_migrate.batch_size = 3;

-- what the shared sequences stand at, to show later that no migration moved them
CREATE TEMP TABLE shared_seq AS
SELECT sequencename, last_value FROM pg_sequences WHERE schemaname = 'public';

-- t1
SELECT * FROM clinic_migrate.migrate_tenant('t1');

SELECT tenant_id, schema_name, state, rows_copied, rows_total, percent, tables_copied,
       tables, current_table, started_at IS NOT NULL AS started,
       completed_at >= started_at AS completed, elapsed >= '0' AS elapsed, last_error
FROM clinic_migrate.status ORDER BY tenant_id;
SELECT tenant_id, position, table_name, kind, rows_copied, rows_total, percent, copied, indexed,
       copy_time >= '0' AS timed
FROM clinic_migrate.progress ORDER BY tenant_id, position;
-- each table's checkpoint is the last key of its last full batch (of the root
-- table's key for child tables); rows of a table without one fit in one batch
SELECT position, table_name, rows_total, rows_copied, checkpoint, copied, indexed
FROM clinic_migrate.tenant_tables WHERE tenant_id = 't1' ORDER BY position;
SELECT tenant_id, schema_name, action, status, rows_copied, error, sqlstate,
       started_by = current_user AS by_me, worker_pid IS NOT NULL AS in_worker,
       completed_at >= started_at AS completed
FROM clinic_migrate.runs ORDER BY run_id;

-- the copy is the tenant's rows, exactly (generated, identity and TOASTed
-- values included), checked here without clinic_migrate
SELECT 'patients' AS t,
       (SELECT count(*) FROM (SELECT * FROM public.patients WHERE tenant_id = 't1'
                              EXCEPT ALL SELECT * FROM tenant_t1.patients) d) AS missing,
       (SELECT count(*) FROM (SELECT * FROM tenant_t1.patients
                              EXCEPT ALL SELECT * FROM public.patients WHERE tenant_id = 't1') d) AS extra
UNION ALL
SELECT 'appointments',
       (SELECT count(*) FROM (SELECT * FROM public.appointments WHERE tenant_id = 't1'
                              EXCEPT ALL SELECT * FROM tenant_t1.appointments) d),
       (SELECT count(*) FROM (SELECT * FROM tenant_t1.appointments
                              EXCEPT ALL SELECT * FROM public.appointments WHERE tenant_id = 't1') d)
UNION ALL
SELECT 'invoices',
       (SELECT count(*) FROM (SELECT * FROM public.invoices WHERE tenant_id = 't1'
                              EXCEPT ALL SELECT * FROM tenant_t1.invoices) d),
       (SELECT count(*) FROM (SELECT * FROM tenant_t1.invoices
                              EXCEPT ALL SELECT * FROM public.invoices WHERE tenant_id = 't1') d)
UNION ALL
SELECT 'staff',
       (SELECT count(*) FROM (SELECT * FROM public.staff WHERE tenant_id = 't1'
                              EXCEPT ALL SELECT * FROM tenant_t1.staff) d),
       (SELECT count(*) FROM (SELECT * FROM tenant_t1.staff
                              EXCEPT ALL SELECT * FROM public.staff WHERE tenant_id = 't1') d)
UNION ALL
SELECT 'appointment_notes',
       (SELECT count(*) FROM (SELECT n.* FROM public.appointment_notes n
                              JOIN public.appointments a ON a.id = n.appointment_id WHERE a.tenant_id = 't1'
                              EXCEPT ALL SELECT * FROM tenant_t1.appointment_notes) d),
       (SELECT count(*) FROM (SELECT * FROM tenant_t1.appointment_notes
                              EXCEPT ALL SELECT n.* FROM public.appointment_notes n
                              JOIN public.appointments a ON a.id = n.appointment_id WHERE a.tenant_id = 't1') d)
UNION ALL
SELECT 'wards',
       (SELECT count(*) FROM (SELECT w.* FROM public.wards w JOIN public.nurses n ON n.nurse_id = w.head_nurse
                              JOIN public.appointments a ON a.id = n.appointment_id WHERE a.tenant_id = 't1'
                              EXCEPT ALL SELECT * FROM tenant_t1.wards) d),
       (SELECT count(*) FROM (SELECT * FROM tenant_t1.wards
                              EXCEPT ALL SELECT w.* FROM public.wards w JOIN public.nurses n ON n.nurse_id = w.head_nurse
                              JOIN public.appointments a ON a.id = n.appointment_id WHERE a.tenant_id = 't1') d)
ORDER BY 1 COLLATE "C";
SELECT patient_id, octet_length(big_note) AS bytes,
       big_note = (SELECT p.big_note FROM public.patients p
                   WHERE p.tenant_id = 't1' AND p.patient_id = t.patient_id) AS same
FROM tenant_t1.patients t WHERE big_note IS NOT NULL ORDER BY 1;
-- only the tenant's rows: no other tenant's id in the tenant's tables
SELECT (SELECT count(*) FROM tenant_t1.patients WHERE tenant_id <> 't1')
     + (SELECT count(*) FROM tenant_t1.appointments WHERE tenant_id <> 't1')
     + (SELECT count(*) FROM tenant_t1.staff WHERE tenant_id <> 't1')
     + (SELECT count(*) FROM tenant_t1.invoices WHERE tenant_id <> 't1')
     + (SELECT count(*) FROM tenant_t1.shifts WHERE tenant_id <> 't1')
     + (SELECT count(*) FROM tenant_t1.room_bookings WHERE tenant_id <> 't1') AS foreign_rows;

-- validation: every table matches
SELECT table_name, source_rows, target_rows, source_checksum = target_checksum AS same_checksum,
       missing_keys, extra_keys, different_keys, fk_orphans, sequences_ok, match
FROM clinic_migrate.validate_migration('t1');
SELECT count(*) AS differences FROM clinic_migrate.validate_differences('t1');

-- the tenant's sequences are past its keys: new rows get new keys; the shared
-- sequences did not move
SELECT (SELECT max(id) FROM tenant_t1.appointments) AS max_id,
       nextval('tenant_t1.appointments_id_seq') AS next_id,
       (SELECT max(invoice_no) FROM tenant_t1.invoices) AS max_invoice_no,
       nextval('tenant_t1.invoices_invoice_no_seq') AS next_invoice_no;
BEGIN;
INSERT INTO tenant_t1.appointments (tenant_id, patient_id, starts_at)
VALUES ('t1', 1, '2024-06-01 10:00+00') RETURNING id, total;
INSERT INTO tenant_t1.invoices (tenant_id, amount, issued_at, due_in)
VALUES ('t1', 9.5, '2024-06-01', '30 days') RETURNING invoice_no;
ROLLBACK;
SELECT s.sequencename, s.last_value = b.last_value AS unchanged
FROM pg_sequences s JOIN shared_seq b USING (sequencename)
WHERE s.schemaname = 'public' ORDER BY 1;

-- a second migration of the same tenant copies nothing and changes nothing
SELECT schema_name, tables, rows_copied FROM clinic_migrate.migrate_tenant('t1');
SELECT tenant_id, state, rows_copied, rows_total, tables_copied
FROM clinic_migrate.status WHERE tenant_id = 't1';
SELECT action, status, rows_copied FROM clinic_migrate.runs WHERE tenant_id = 't1' ORDER BY run_id;
SELECT count(*) FILTER (WHERE match) AS matching, count(*) AS tables
FROM clinic_migrate.validate_migration('t1');

-- t3 is only in the registry: an empty schema, all tables match
SELECT * FROM clinic_migrate.migrate_tenant('t3');
SELECT tenant_id, state, rows_copied, rows_total, tables_copied, tables, current_table
FROM clinic_migrate.status WHERE tenant_id = 't3';
SELECT table_name, source_rows, target_rows, match FROM clinic_migrate.validate_migration('t3');

-- a tenant whose id is hostile as SQL, with rows: the id is only ever a value
INSERT INTO public.tenants VALUES ('Robert''); DROP TABLE staff; --', 'Hostile clinic');
INSERT INTO public.patients (tenant_id, patient_id, name)
VALUES ('Robert''); DROP TABLE staff; --', 1, 'Rex'), ('Robert''); DROP TABLE staff; --', 2, 'Roy');
INSERT INTO public.staff VALUES ('Robert''); DROP TABLE staff; --', 1, NULL, 'Sam'),
                                ('Robert''); DROP TABLE staff; --', 2, 1, 'Tom');
SELECT regexp_replace(schema_name, '_[0-9a-f]{8}$', '_<hash>') AS schema_name, tables, rows_copied, resumed
FROM clinic_migrate.migrate_tenant('Robert''); DROP TABLE staff; --');
SELECT table_name, source_rows, target_rows, match
FROM clinic_migrate.validate_migration('Robert''); DROP TABLE staff; --') WHERE source_rows > 0;
SELECT count(*) AS shared_tables FROM pg_tables WHERE schemaname = 'public';
SET client_min_messages = warning;  -- DROP SCHEMA ... CASCADE lists every table
SELECT clinic_migrate.rollback_tenant('Robert''); DROP TABLE staff; --');
RESET client_min_messages;

-- t4: first create_tenant_schema, then migrate_tenant copies into that schema
-- (indexes, keys and foreign keys already in place).  A constraint added to
-- the target makes the copy of staff fail in its second batch ...
SELECT clinic_migrate.create_tenant_schema('t4');
ALTER TABLE tenant_t4.staff ADD CONSTRAINT not_kim CHECK (name <> 'Kim');
SELECT * FROM clinic_migrate.migrate_tenant('t4');
-- ... the committed batches stay, the failure is recorded
SELECT tenant_id, state, rows_copied, rows_total, tables_copied, tables, current_table,
       completed_at IS NULL AS not_completed, last_error
FROM clinic_migrate.status WHERE tenant_id = 't4';
SELECT position, table_name, rows_total, rows_copied, checkpoint, copied
FROM clinic_migrate.tenant_tables WHERE tenant_id = 't4' ORDER BY position;
SELECT action, status, rows_copied, error, sqlstate FROM clinic_migrate.runs
WHERE tenant_id = 't4' ORDER BY run_id;
SELECT tenant_id, staff_no, name FROM tenant_t4.staff ORDER BY 1, 2;
-- ... and the next run resumes after the last committed batch
ALTER TABLE tenant_t4.staff DROP CONSTRAINT not_kim;
SELECT * FROM clinic_migrate.migrate_tenant('t4');
SELECT tenant_id, state, rows_copied, rows_total, percent, tables_copied, tables, last_error
FROM clinic_migrate.status WHERE tenant_id = 't4';
SELECT action, status, rows_copied, error, sqlstate FROM clinic_migrate.runs
WHERE tenant_id = 't4' ORDER BY run_id;
SELECT table_name, source_rows, target_rows, source_checksum = target_checksum AS same_checksum,
       fk_orphans, sequences_ok, match
FROM clinic_migrate.validate_migration('t4');

-- t2, with the default batch size (one batch a table)
RESET clinic_migrate.batch_size;
SELECT * FROM clinic_migrate.migrate_tenant('t2');
SELECT count(*) FILTER (WHERE match) AS matching, count(*) AS tables, sum(target_rows) AS rows
FROM clinic_migrate.validate_migration('t2');

-- all tenants
SELECT tenant_id, schema_name, state, rows_copied, rows_total, tables_copied, tables,
       current_table, last_error
FROM clinic_migrate.status ORDER BY tenant_id;
SELECT * FROM cm_regress.schemas ORDER BY 1;
-- the shared tables still hold every tenant's rows
SELECT tenant_id, count(*) FROM public.patients GROUP BY 1 ORDER BY 1;
SELECT s.sequencename, s.last_value = b.last_value AS unchanged
FROM pg_sequences s JOIN shared_seq b USING (sequencename)
WHERE s.schemaname = 'public' ORDER BY 1;
DROP TABLE shared_seq;

-- clinic_migrate.shared_foreign_keys = off: the tenant's tables keep the foreign
-- keys among themselves, and none to the tables that stay shared (the registry)
INSERT INTO public.tenants VALUES ('tfk', 'No shared keys');
SET clinic_migrate.shared_foreign_keys = off;
SELECT schema_name FROM clinic_migrate.migrate_tenant('tfk');
RESET clinic_migrate.shared_foreign_keys;
SELECT c.conrelid::regclass AS in_table, c.confrelid::regclass AS refers_to
FROM pg_constraint c
WHERE c.contype = 'f' AND c.connamespace = 'tenant_tfk'::regnamespace
ORDER BY 1::text, 2::text;
SELECT count(*) AS triggers_on_the_registry_for_tfk
FROM pg_trigger t JOIN pg_constraint c ON c.oid = t.tgconstraint
WHERE t.tgrelid = 'public.tenants'::regclass AND c.connamespace = 'tenant_tfk'::regnamespace;
SET client_min_messages = warning;
SELECT clinic_migrate.rollback_tenant('tfk');
RESET client_min_messages;
DELETE FROM public.tenants WHERE tenant_id = 'tfk';
DELETE FROM clinic_migrate.runs WHERE tenant_id = 'tfk';
