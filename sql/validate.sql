--
-- validate: validate_migration and validate_differences compare each table of a
-- migrated tenant with its rows in the shared tables.  Here t1's copy is
-- tampered with in every way the checks should catch.
--
\pset null '(null)'

-- before: everything matches
SELECT table_name, source_rows, target_rows, source_checksum = target_checksum AS same_checksum,
       missing_keys, extra_keys, different_keys, fk_orphans, sequences_ok, match
FROM clinic_migrate.validate_migration('t1');

-- The checksums do not depend on session settings: the same under another
-- DateStyle, TimeZone, extra_float_digits, bytea_output and IntervalStyle
-- (t1 has dates, timestamptz, floats, bytea and intervals), and the function
-- leaves the session's settings as they were.
CREATE TEMP TABLE base AS
SELECT table_name, source_checksum, target_checksum FROM clinic_migrate.validate_migration('t1');
SET DateStyle = 'SQL, DMY';
SET TimeZone = 'America/New_York';
SET extra_float_digits = -3;
SET bytea_output = 'escape';
SET IntervalStyle = 'sql_standard';
SELECT count(*) AS tables,
       count(*) FILTER (WHERE v.source_checksum = b.source_checksum
                          AND v.target_checksum = b.target_checksum) AS same_checksums,
       count(*) FILTER (WHERE v.match) AS matching
FROM clinic_migrate.validate_migration('t1') v JOIN base b USING (table_name);
SELECT current_setting('DateStyle') AS datestyle, current_setting('TimeZone') AS timezone,
       current_setting('extra_float_digits') AS extra_float_digits,
       current_setting('bytea_output') AS bytea_output, current_setting('IntervalStyle') AS intervalstyle;
SET DateStyle = 'German';
SET TimeZone = 'Asia/Kolkata';
SET extra_float_digits = 0;
SET IntervalStyle = 'iso_8601';
SELECT count(*) AS tables,
       count(*) FILTER (WHERE v.source_checksum = b.source_checksum
                          AND v.target_checksum = b.target_checksum) AS same_checksums
FROM clinic_migrate.validate_migration('t1') v JOIN base b USING (table_name);
-- the text renderings do differ between these settings
SELECT issued_at::text, due_in::text, amount::text FROM public.invoices WHERE invoice_no = 100;
RESET DateStyle;
RESET TimeZone;
RESET extra_float_digits;
RESET bytea_output;
RESET IntervalStyle;
SELECT issued_at::text, due_in::text, amount::text FROM public.invoices WHERE invoice_no = 100;

-- nor on how a value is stored: compressed in the copy, not in the shared table
ALTER TABLE tenant_t1.patients ALTER COLUMN big_note SET STORAGE EXTENDED;
UPDATE tenant_t1.patients SET big_note = big_note || '' WHERE patient_id = 4;
SELECT (SELECT pg_column_compression(big_note) FROM public.patients
        WHERE tenant_id = 't1' AND patient_id = 4) AS shared,
       (SELECT pg_column_compression(big_note) FROM tenant_t1.patients
        WHERE patient_id = 4) AS copy;
SELECT v.table_name, v.source_checksum = b.source_checksum AND v.target_checksum = b.target_checksum AS same_checksums,
       v.match
FROM clinic_migrate.validate_migration('t1') v JOIN base b USING (table_name)
WHERE v.table_name = 'patients';
DROP TABLE base;

-- a duplicated row (the copy's key dropped to let it in) is caught
BEGIN;
ALTER TABLE tenant_t1.wards DROP CONSTRAINT wards_pkey CASCADE;
INSERT INTO tenant_t1.wards SELECT * FROM tenant_t1.wards;
SELECT table_name, source_rows, target_rows, source_checksum = target_checksum AS same_checksum, match
FROM clinic_migrate.validate_migration('t1') WHERE table_name = 'wards';
ROLLBACK;

-- Tampering with t1's copy:
-- patients: a changed name; 61 written as 61.00 (equal as numbers, a
-- different value: unconstrained numeric keeps the scale); NULL made ''
SELECT 61::numeric = 61.00::numeric AS equal_numbers, 61::numeric::text = 61.00::numeric::text AS same_text;
UPDATE tenant_t1.patients SET name = 'Someone else' WHERE patient_id = 3;
UPDATE tenant_t1.patients SET weight = 61.00 WHERE patient_id = 1;
UPDATE tenant_t1.patients SET nickname = '' WHERE patient_id = 4;
SELECT patient_id, weight, nickname IS NULL AS nickname_null,
       weight = (SELECT weight FROM public.patients p WHERE p.tenant_id = 't1' AND p.patient_id = t.patient_id) AS weight_equal
FROM tenant_t1.patients t WHERE patient_id IN (1, 4) ORDER BY 1;
-- invoices: a row deleted
DELETE FROM tenant_t1.invoices WHERE invoice_no = 120;
-- shifts: an extra row, and five rows deleted
INSERT INTO tenant_t1.shifts VALUES ('t1', '2024-03-09', 1, NULL);
DELETE FROM tenant_t1.shifts WHERE (shift_day, shift_no) <= ('2024-02-29', 1);
-- appointment_notes: a note deleted, whose attachment is left an orphan
ALTER TABLE tenant_t1.note_attachments DROP CONSTRAINT note_attachments_note_id_fkey;
DELETE FROM tenant_t1.appointment_notes WHERE note_id = 3;
SELECT attachment_id, note_id FROM tenant_t1.note_attachments WHERE note_id = 3;
-- appointments: the sequence set back below the highest id
SELECT setval('tenant_t1.appointments_id_seq', 5);

SELECT table_name, source_rows, target_rows, source_checksum = target_checksum AS same_checksum,
       missing_keys, extra_keys, different_keys, fk_orphans, sequences_ok, match
FROM clinic_migrate.validate_migration('t1');
-- at most max_keys keys of each kind, the first ones in key order
SELECT table_name, missing_keys, extra_keys, different_keys, match
FROM clinic_migrate.validate_migration('t1', 2) WHERE NOT match;
-- every differing key
SELECT * FROM clinic_migrate.validate_differences('t1') ORDER BY 1, 3, 2 COLLATE "C";
-- key texts do not depend on DateStyle either
SET DateStyle = 'SQL, DMY';
SELECT * FROM clinic_migrate.validate_differences('t1') WHERE table_name = 'shifts' ORDER BY 1, 3, 2 COLLATE "C";
RESET DateStyle;
-- the other tenants are not affected
SELECT v.tenant, count(*) FILTER (WHERE match) AS matching, count(*) AS tables
FROM (VALUES ('t2'), ('t3'), ('t4')) v(tenant), clinic_migrate.validate_migration(v.tenant)
GROUP BY 1 ORDER BY 1;

-- undo the tampering: t1 matches again
UPDATE tenant_t1.patients t SET name = p.name, weight = p.weight, nickname = p.nickname
FROM public.patients p WHERE p.tenant_id = 't1' AND p.patient_id = t.patient_id AND t.patient_id IN (1, 3, 4);
INSERT INTO tenant_t1.invoices OVERRIDING SYSTEM VALUE
SELECT * FROM public.invoices WHERE invoice_no = 120;
DELETE FROM tenant_t1.shifts WHERE shift_day = '2024-03-09';
INSERT INTO tenant_t1.shifts SELECT * FROM public.shifts
WHERE tenant_id = 't1' AND (shift_day, shift_no) <= ('2024-02-29', 1);
INSERT INTO tenant_t1.appointment_notes SELECT * FROM public.appointment_notes WHERE note_id = 3;
ALTER TABLE tenant_t1.note_attachments ADD CONSTRAINT note_attachments_note_id_fkey
    FOREIGN KEY (note_id) REFERENCES tenant_t1.appointment_notes;
SELECT setval('tenant_t1.appointments_id_seq', max(id)) FROM tenant_t1.appointments;
SELECT count(*) FILTER (WHERE match) AS matching, count(*) AS tables
FROM clinic_migrate.validate_migration('t1');
