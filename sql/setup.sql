--
-- setup: the extension, and a small deterministic multi-tenant schema in public
-- that the later suites (plan, clone, migrate, validate, errors, rollback) use.
--
-- Tenants t1, t2 and t4 have rows, t3 is only in the registry.  Every table
-- exercises something the clone or the copy must keep:
--   tenants            the registry (stays shared)
--   countries          a reference table (stays shared)
--   patients           tenant table, composite key (tenant_id, patient_id), jsonb,
--                      bytea, arrays, NULLs, a TOASTed value, a dropped column,
--                      CHECK, unconstrained numeric, partial and expression
--                      indexes, comments, grants, fillfactor
--   appointments       bigserial key, generated column, FK to patients
--   staff              self-referencing foreign key
--   invoices           GENERATED ALWAYS identity key, float/timestamptz/interval
--   shifts             composite key with a date
--   room_bookings      EXCLUDE USING gist on a range
--   appointment_notes  child table without tenant column (one FK hop)
--   note_attachments   grandchild (two FK hops), no index on its FK column
--   nurses, wards      child tables with a foreign key cycle between them
--   audit_log          tenant table without any key (excluded in the plan suite)
--
SET client_min_messages = warning;
CREATE EXTENSION clinic_migrate;
RESET client_min_messages;
SELECT extname, extversion, extnamespace::regnamespace AS schema
FROM pg_extension WHERE extname = 'clinic_migrate';

-- settings and their defaults
SELECT name, boot_val AS default_value, unit
FROM pg_settings WHERE name LIKE 'clinic\_migrate.%' ORDER BY name;

CREATE ROLE regress_clinic_reader NOLOGIN;

CREATE TABLE tenants (
    tenant_id text PRIMARY KEY,
    name      text NOT NULL
);
INSERT INTO tenants VALUES ('t1', 'North clinic'), ('t2', 'South clinic'), ('t3', 'New clinic'),
                           ('t4', 'East clinic');

CREATE TABLE countries (
    code text PRIMARY KEY,
    name text NOT NULL
);
INSERT INTO countries VALUES ('DE', 'Germany'), ('FR', 'France'), ('NL', 'Netherlands');

CREATE TABLE patients (
    tenant_id   text NOT NULL REFERENCES tenants,
    patient_id  integer NOT NULL,
    legacy_code text,
    name        text NOT NULL,
    nickname    text,
    country     text REFERENCES countries,
    born        date,
    weight      numeric,
    profile     jsonb,
    photo       bytea,
    tags        text[],
    big_note    text,
    PRIMARY KEY (tenant_id, patient_id),
    CONSTRAINT patients_weight_check CHECK (weight IS NULL OR weight > 0)
) WITH (fillfactor = 70, autovacuum_enabled = false);
ALTER TABLE patients DROP COLUMN legacy_code;
ALTER TABLE patients ALTER COLUMN big_note SET STORAGE EXTERNAL;
CREATE INDEX patients_name_lower_idx ON patients (lower(name));
CREATE UNIQUE INDEX patients_nickname_key ON patients (tenant_id, nickname) WHERE nickname <> '';
COMMENT ON TABLE patients IS 'people treated at a clinic';
COMMENT ON COLUMN patients.name IS 'full name';
COMMENT ON CONSTRAINT patients_weight_check ON patients IS 'kilograms';
COMMENT ON INDEX patients_name_lower_idx IS 'search by name';
GRANT SELECT ON patients TO regress_clinic_reader;
GRANT UPDATE (nickname) ON patients TO regress_clinic_reader;

INSERT INTO patients (tenant_id, patient_id, name, nickname, country, born, weight, profile, photo, tags, big_note)
SELECT t, i,
       'Patient ' || t || '-' || i,
       CASE WHEN i % 4 = 0 THEN NULL WHEN i % 4 = 1 THEN '' ELSE 'nick' || i END,
       (ARRAY['DE', 'FR', 'NL', NULL])[1 + i % 4],
       date '1950-01-01' + i * 1000,
       CASE WHEN i % 3 = 0 THEN NULL ELSE (60 + i)::numeric END,
       CASE WHEN i % 2 = 0 THEN jsonb_build_object('allergies', jsonb_build_array('pollen', i), 'vip', i % 5 = 0) END,
       CASE WHEN i % 3 <> 0 THEN decode(md5(t || i), 'hex') END,
       CASE WHEN i % 2 = 1 THEN ARRAY['tag' || i, NULL, 'x y'] END,
       CASE WHEN i = 2 THEN (SELECT string_agg(md5(t || g), '') FROM generate_series(1, 200) g)
            WHEN i = 4 THEN repeat('compressible ', 1000) END
FROM (VALUES ('t1', 10), ('t2', 4), ('t4', 2)) v(t, n), generate_series(1, n) i;

CREATE TABLE appointments (
    id          bigserial PRIMARY KEY,
    tenant_id   text NOT NULL,
    patient_id  integer NOT NULL,
    starts_at   timestamptz NOT NULL,
    duration    interval NOT NULL DEFAULT '30 minutes' CHECK (duration > interval '0'),
    fee         numeric(10,2) NOT NULL DEFAULT 0,
    qty         integer NOT NULL DEFAULT 1,
    total       numeric GENERATED ALWAYS AS (fee * qty) STORED,
    FOREIGN KEY (tenant_id, patient_id) REFERENCES patients ON DELETE CASCADE
);
CREATE INDEX appointments_tenant_id_id_idx ON appointments (tenant_id, id);
CREATE INDEX appointments_patient_idx ON appointments (tenant_id, patient_id);
-- interleaved, so that the tenants' ids are not contiguous
INSERT INTO appointments (tenant_id, patient_id, starts_at, duration, fee, qty)
SELECT CASE WHEN i % 3 = 0 THEN 't2' ELSE 't1' END,
       CASE WHEN i % 3 = 0 THEN 1 + i % 4 ELSE 1 + i % 10 END,
       timestamptz '2024-03-30 22:00:00+00' + i * interval '7 hours',
       i * interval '10 minutes',
       i * 12.5, 1 + i % 2
FROM generate_series(1, 18) i;
INSERT INTO appointments (tenant_id, patient_id, starts_at, fee)
VALUES ('t4', 1, '2024-05-01 08:00+02', 40), ('t4', 2, '2024-05-01 09:00+02', 40);

CREATE TABLE staff (
    tenant_id  text NOT NULL,
    staff_no   integer NOT NULL,
    manager_no integer,
    name       text NOT NULL,
    PRIMARY KEY (tenant_id, staff_no),
    FOREIGN KEY (tenant_id, manager_no) REFERENCES staff (tenant_id, staff_no)
);
CREATE INDEX staff_manager_idx ON staff (tenant_id, manager_no);
GRANT SELECT (tenant_id, name) ON staff TO regress_clinic_reader;
-- Bo's manager has a higher number than Bo: a forward self-reference
INSERT INTO staff VALUES
    ('t1', 1, NULL, 'Ada'), ('t1', 2, 4, 'Bo'), ('t1', 3, 1, 'Cy'), ('t1', 4, 1, 'Di'),
    ('t2', 1, NULL, 'Ed'), ('t2', 2, 1, 'Flo'),
    ('t4', 1, NULL, 'Gil'), ('t4', 2, 1, 'Hal'), ('t4', 3, 1, 'Ivy'), ('t4', 4, 2, 'Jo'), ('t4', 5, 2, 'Kim');

CREATE TABLE invoices (
    invoice_no integer GENERATED ALWAYS AS IDENTITY (START WITH 100 INCREMENT BY 10) PRIMARY KEY,
    tenant_id  text NOT NULL,
    amount     double precision NOT NULL,
    issued_at  timestamptz NOT NULL,
    due_in     interval NOT NULL,
    paid       boolean
);
CREATE INDEX invoices_tenant_id_invoice_no_idx ON invoices (tenant_id, invoice_no);
INSERT INTO invoices (tenant_id, amount, issued_at, due_in, paid)
SELECT CASE WHEN i % 2 = 0 THEN 't2' ELSE 't1' END,
       i * 0.1 + 0.2,
       timestamptz '2024-10-26 23:30:00+00' + i * interval '1 day 1 hour',
       make_interval(months => i, days => i, secs => i * 1.5),
       CASE WHEN i % 3 = 0 THEN NULL ELSE i % 3 = 1 END
FROM generate_series(1, 7) i;

CREATE TABLE shifts (
    tenant_id text NOT NULL,
    shift_day date NOT NULL,
    shift_no  smallint NOT NULL,
    staff_no  integer,
    PRIMARY KEY (tenant_id, shift_day, shift_no)
);
INSERT INTO shifts
SELECT t, date '2024-02-27' + d, s, 1 + (d + s) % 2
FROM (VALUES ('t1'), ('t2')) v(t), generate_series(0, 3) d, generate_series(1, 2) s;
INSERT INTO shifts VALUES ('t4', '2024-05-01', 1, 1);

CREATE TABLE room_bookings (
    tenant_id  text NOT NULL,
    booking_id integer NOT NULL,
    room       text NOT NULL,
    during     int4range NOT NULL,
    PRIMARY KEY (tenant_id, booking_id),
    CONSTRAINT room_bookings_no_overlap EXCLUDE USING gist (during WITH &&)
);
INSERT INTO room_bookings VALUES
    ('t1', 1, 'A', '[1,5)'), ('t1', 2, 'B', '[5,10)'), ('t2', 1, 'A', '[10,15)'),
    ('t4', 1, 'C', '[20,25)');

CREATE TABLE appointment_notes (
    note_id        integer PRIMARY KEY,
    appointment_id bigint NOT NULL REFERENCES appointments ON DELETE CASCADE,
    body           text NOT NULL
);
CREATE INDEX appointment_notes_appointment_id_idx ON appointment_notes (appointment_id);
INSERT INTO appointment_notes
SELECT i, 1 + (i * 5) % 18, 'note ' || i FROM generate_series(1, 12) i;
INSERT INTO appointment_notes VALUES (13, 19, 'note 13');

CREATE TABLE note_attachments (
    attachment_id integer PRIMARY KEY,
    note_id       integer NOT NULL REFERENCES appointment_notes,
    filename      text NOT NULL
);
INSERT INTO note_attachments
SELECT i, 1 + i % 12, 'scan' || i || '.pdf' FROM generate_series(1, 8) i;
INSERT INTO note_attachments VALUES (9, 13, 'scan9.pdf');

-- nurses reach a tenant through appointments; wards through their head nurse;
-- and nurses point back at their ward: a foreign key cycle between two children
CREATE TABLE nurses (
    nurse_id       integer PRIMARY KEY,
    appointment_id bigint NOT NULL REFERENCES appointments,
    ward_id        integer
);
CREATE INDEX nurses_appointment_id_idx ON nurses (appointment_id);
CREATE TABLE wards (
    ward_id    integer PRIMARY KEY,
    head_nurse integer NOT NULL REFERENCES nurses,
    name       text NOT NULL
);
CREATE INDEX wards_head_nurse_idx ON wards (head_nurse);
ALTER TABLE nurses ADD FOREIGN KEY (ward_id) REFERENCES wards;
-- appointment 1 is t1's, 3 is t2's; each ward's head nurse is of the same tenant
INSERT INTO nurses VALUES (1, 1, NULL), (2, 2, NULL), (3, 3, NULL);
INSERT INTO wards VALUES (10, 1, 'North ward'), (20, 3, 'South ward');
UPDATE nurses SET ward_id = CASE nurse_id WHEN 3 THEN 20 ELSE 10 END;

CREATE TABLE audit_log (
    tenant_id text NOT NULL,
    message   text
);
INSERT INTO audit_log VALUES ('t1', 'created'), ('t2', 'created'), ('t4', 'created');

-- the big values really are out of line (and, with STORAGE EXTERNAL, not compressed)
SELECT tenant_id, patient_id, octet_length(big_note) AS big_note_bytes,
       pg_column_compression(big_note) AS compression
FROM patients WHERE big_note IS NOT NULL
ORDER BY tenant_id, patient_id;
SELECT pg_relation_size(reltoastrelid) > 0 AS toasted FROM pg_class WHERE oid = 'patients'::regclass;

-- every table of public with its rows per tenant
SELECT 'patients' COLLATE "C" AS t, tenant_id, count(*) FROM patients GROUP BY 2
UNION ALL SELECT 'appointments', tenant_id, count(*) FROM appointments GROUP BY 2
UNION ALL SELECT 'staff', tenant_id, count(*) FROM staff GROUP BY 2
UNION ALL SELECT 'invoices', tenant_id, count(*) FROM invoices GROUP BY 2
UNION ALL SELECT 'shifts', tenant_id, count(*) FROM shifts GROUP BY 2
UNION ALL SELECT 'room_bookings', tenant_id, count(*) FROM room_bookings GROUP BY 2
UNION ALL SELECT 'appointment_notes', a.tenant_id, count(*)
    FROM appointment_notes n JOIN appointments a ON a.id = n.appointment_id GROUP BY 2
UNION ALL SELECT 'note_attachments', a.tenant_id, count(*)
    FROM note_attachments x JOIN appointment_notes n USING (note_id)
    JOIN appointments a ON a.id = n.appointment_id GROUP BY 2
UNION ALL SELECT 'nurses', a.tenant_id, count(*)
    FROM nurses x JOIN appointments a ON a.id = x.appointment_id GROUP BY 2
UNION ALL SELECT 'wards', a.tenant_id, count(*)
    FROM wards w JOIN nurses x ON x.nurse_id = w.head_nurse
    JOIN appointments a ON a.id = x.appointment_id GROUP BY 2
UNION ALL SELECT 'audit_log', tenant_id, count(*) FROM audit_log GROUP BY 2
ORDER BY 1, 2;

-- Helpers for the later suites live outside public, which is what gets migrated.
CREATE SCHEMA cm_regress;

-- every row of every table of public, as one md5 per table (for "nothing changed")
CREATE FUNCTION cm_regress.public_fingerprint()
RETURNS TABLE (table_name name, row_count bigint, content_md5 text)
LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT c.relname FROM pg_class c
             WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r'
             ORDER BY c.relname COLLATE "C"
    LOOP
        table_name := r.relname;
        EXECUTE format('SELECT count(*), md5(coalesce(string_agg(x::text, %L ORDER BY x::text COLLATE "C"), %L)) FROM public.%I x',
                       E'\n', '', r.relname)
            INTO row_count, content_md5;
        RETURN NEXT;
    END LOOP;
END $$;

-- the schemas that exist besides the system's and the test's own
CREATE VIEW cm_regress.schemas AS
SELECT nspname FROM pg_namespace
WHERE nspname NOT LIKE 'pg\_%' AND nspname NOT IN ('information_schema', 'public', 'clinic_migrate', 'cm_regress');

-- clinic_migrate's state, in a printable form
CREATE VIEW cm_regress.state AS
SELECT t.tenant_id, t.schema_name, t.state, t.rows_copied, t.structure_done,
       t.started_at IS NOT NULL AS started, t.completed_at IS NOT NULL AS completed,
       t.last_error,
       (SELECT count(*) FROM clinic_migrate.tenant_tables tt WHERE tt.tenant_id = t.tenant_id) AS tables
FROM clinic_migrate.tenants t;
