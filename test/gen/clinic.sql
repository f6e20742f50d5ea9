-- test/gen/clinic.sql: builds the shared multi-tenant "clinic" schema in public and fills
-- it with deterministic, skewed test data; the tests, the demo and the benchmark use it.
--
--   psql -X -v tenants=50 -v rows=500000 -v big_tenant_rows=0 -d DB -f test/gen/clinic.sql
--
-- tenants          tenants 't1'..'tN' in the registry (default 50); sizes are Zipf-like
--                  (tenant i gets a share proportional to 1/i), every tenant has rows
-- rows             about this many rows in all across patients (~40%), appointments
--                  (~40%), appointment_notes (~15%) and staff (~5%) (default 500000)
-- big_tenant_rows  when > 0, one more tenant 'big' with this many patients, as many
--                  appointments, 3/8 as many notes and 1/8 as many staff (default 0)
--
-- Every value derives from hashes of row numbers (no random()), so two runs with the same
-- settings give the same rows, ids included, whatever plans the server picks.
-- The tables must not exist yet. Runs in one transaction, then VACUUM ANALYZE.

\set ON_ERROR_STOP 1
\set QUIET 1
\if :{?tenants}
\else
  \set tenants 50
\endif
\if :{?rows}
\else
  \set rows 500000
\endif
\if :{?big_tenant_rows}
\else
  \set big_tenant_rows 0
\endif

SET client_min_messages = warning;
SET TimeZone = 'UTC';              -- timestamp arithmetic below must not depend on DST
SET work_mem = '256MB';
SET temp_buffers = '512MB';        -- before the first temporary table of the session
SET synchronous_commit = off;

-- cm.t0 holds the start of the current step; :lap reads and resets it.
SELECT set_config('cm.start', clock_timestamp()::text, false) AS cm_ignore,
       set_config('cm.t0', clock_timestamp()::text, false) AS cm_ignore \gset
\set lap 'SELECT round(extract(epoch FROM clock_timestamp() - current_setting(''cm.t0'')::timestamptz)::numeric, 1) AS cm_s, set_config(''cm.t0'', clock_timestamp()::text, false) AS cm_ignore'

-- h(x, salt): a deterministic pseudo-random integer in [0, 2^32) for row x;
-- u(x, salt): the same scaled to [0, 1). Inlined SQL functions, so cheap per row.
CREATE FUNCTION pg_temp.h(x bigint, salt int) RETURNS bigint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN hashint8(x * 64 + salt)::bigint + 2147483648;
CREATE FUNCTION pg_temp.u(x bigint, salt int) RETURNS float8
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN (hashint8(x * 64 + salt)::bigint + 2147483648) / 4294967296.0::float8;
CREATE FUNCTION pg_temp.fail(msg text) RETURNS text
    LANGUAGE plpgsql AS $$BEGIN RAISE EXCEPTION '%', msg; END$$;

SELECT CASE WHEN NOT (:tenants::int >= 1 AND :rows::bigint >= 0 AND :big_tenant_rows::bigint >= 0)
            THEN pg_temp.fail('clinic.sql: tenants must be >= 1, rows and big_tenant_rows >= 0')
       END AS cm_ignore \gset

\echo clinic.sql: tenants=:tenants rows=:rows big_tenant_rows=:big_tenant_rows

BEGIN;

-- The schema (the tests depend on these names).
CREATE TABLE public.tenants (tenant_id text PRIMARY KEY, name text NOT NULL, plan text NOT NULL DEFAULT 'basic', created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE public.specialties (id int PRIMARY KEY, name text NOT NULL UNIQUE);
CREATE TABLE public.staff (tenant_id text NOT NULL REFERENCES public.tenants, staff_no int NOT NULL, name text NOT NULL, specialty_id int REFERENCES public.specialties, roles text[] NOT NULL DEFAULT '{}', PRIMARY KEY (tenant_id, staff_no));
CREATE TABLE public.patients (id bigserial PRIMARY KEY, tenant_id text NOT NULL REFERENCES public.tenants, legacy_code text, first_name text NOT NULL, last_name text NOT NULL, full_name text GENERATED ALWAYS AS (first_name || ' ' || last_name) STORED, birth_date date CHECK (birth_date > '1900-01-01'), email text, profile jsonb, photo bytea, tags text[], notes text, referred_by bigint REFERENCES public.patients(id), balance numeric(12,2), created_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX patients_tenant_id_idx ON public.patients (tenant_id, id);
CREATE UNIQUE INDEX patients_tenant_email_key ON public.patients (tenant_id, email) WHERE email IS NOT NULL;
CREATE INDEX patients_lower_last_name_idx ON public.patients (lower(last_name));
COMMENT ON TABLE public.patients IS 'people treated at a clinic';
COMMENT ON COLUMN public.patients.email IS 'contact address';
CREATE TABLE public.appointments (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, tenant_id text NOT NULL REFERENCES public.tenants, patient_id bigint NOT NULL REFERENCES public.patients(id), staff_no int NOT NULL, specialty_id int REFERENCES public.specialties, starts_at timestamptz NOT NULL, duration interval NOT NULL DEFAULT '30 minutes', status text NOT NULL DEFAULT 'booked' CHECK (status IN ('booked','done','cancelled')), FOREIGN KEY (tenant_id, staff_no) REFERENCES public.staff (tenant_id, staff_no));
CREATE INDEX appointments_tenant_id_idx ON public.appointments (tenant_id, id);
CREATE INDEX appointments_patient_id_idx ON public.appointments (patient_id);
CREATE TABLE public.appointment_notes (id bigserial PRIMARY KEY, appointment_id bigint NOT NULL REFERENCES public.appointments(id) ON DELETE CASCADE, body text NOT NULL, written_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX appointment_notes_appointment_id_idx ON public.appointment_notes (appointment_id);

-- Per-tenant sizes: tn is the tenant's number, n_p/n_a/n_s its patients, appointments, staff.
CREATE TEMP TABLE cm_t AS
WITH w AS (
    SELECT i AS tn, 't' || i AS tenant_id, 1.0 / i AS w
    FROM generate_series(1, :tenants) i),
s AS (SELECT sum(w) AS sw FROM w)
SELECT tn, tenant_id,
       greatest(1, round(0.40 * :rows * w / sw))::int AS n_p,
       greatest(1, round(0.40 * :rows * w / sw * (0.8 + 0.4 * pg_temp.u(tn, 1))))::int AS n_a,
       greatest(1, round(0.05 * :rows * w / sw))::int AS n_s
FROM w, s
UNION ALL
SELECT :tenants + 1, 'big', :big_tenant_rows, :big_tenant_rows, greatest(1, :big_tenant_rows / 8)
WHERE :big_tenant_rows > 0;
ALTER TABLE cm_t ADD PRIMARY KEY (tn);
ANALYZE cm_t;

INSERT INTO public.tenants (tenant_id, name, plan, created_at)
SELECT tenant_id,
       CASE WHEN tenant_id = 'big' THEN 'Big General Hospital'
            ELSE (ARRAY['Northside', 'Riverside', 'Hillcrest', 'Lakeview', 'São Bento', 'Oakwood',
                        'Müller & Söhne', 'St. Anne''s', 'Harbor', 'Green Valley'])[1 + tn % 10]
                 || ' Clinic ' || tn END,
       (ARRAY['basic', 'pro', 'enterprise'])[1 + pg_temp.h(tn, 2) % 3],
       timestamptz '2018-01-01 09:00:00+00' + tn * interval '3 days 7 hours'
FROM cm_t ORDER BY tn;

INSERT INTO public.specialties (id, name)
SELECT i, name
FROM unnest(ARRAY['General practice', 'Cardiology', 'Dermatology', 'Pediatrics', 'Orthopedics',
                  'Neurology', 'Ophthalmology', 'Psychiatry', 'Radiology', 'Oncology',
                  'Gynecology', 'Urology', 'Endocrinology', 'Gastroenterology', 'Pulmonology',
                  'Nephrology', 'Rheumatology', 'ENT', 'Dentistry', 'Physiotherapy'])
     WITH ORDINALITY AS s(name, i);

:lap \gset
\echo 'clinic.sql: schema, tenants and specialties:' :cm_s 's'

-- Staff: staff_no 1..n_s within each tenant.
INSERT INTO public.staff (tenant_id, staff_no, name, specialty_id, roles)
SELECT t.tenant_id, s,
       (ARRAY['Dr. ', '', '', 'Nurse '])[1 + pg_temp.h(x, 1) % 4]
       || (ARRAY['Alex', 'Maria', 'Jonas', 'Aiko', 'Fatima', 'Lucas', 'Chloé', 'Omar', 'Ines',
                 'Piotr', 'Grace', 'Mateo'])[1 + pg_temp.h(x, 2) % 12] || ' '
       || (ARRAY['Silva', 'Kowalski', 'Nguyen', 'Okafor', 'Schmidt', 'García', 'Smith',
                 'Tanaka', 'Dubois', 'Rossi'])[1 + pg_temp.h(x, 3) % 10],
       CASE WHEN pg_temp.u(x, 4) < 0.1 THEN NULL ELSE 1 + pg_temp.h(x, 5) % 20 END::int,
       (ARRAY['{}', '{doctor}', '{doctor}', '{nurse}', '{nurse}', '{doctor,admin}',
              '{receptionist}', '{nurse,"on call"}'])[1 + pg_temp.h(x, 6) % 8]::text[]
FROM cm_t t, generate_series(1, t.n_s) s, LATERAL (SELECT t.tn * 1000000000::bigint + s AS x) x
ORDER BY (s - 0.5) / t.n_s, t.tn;
\set cm_n :ROW_COUNT
:lap \gset
\echo 'clinic.sql: staff:' :cm_n 'rows,' :cm_s 's'

-- Patient ids, interleaving tenants as a real shared table would (every tenant is spread
-- over the whole heap). k is the patient's number within its tenant.
CREATE TEMP TABLE cm_p AS
SELECT row_number() OVER (ORDER BY (k - 0.5) / t.n_p, t.tn) AS id, t.tn, k::int AS k
FROM cm_t t, generate_series(1, t.n_p) k;
CREATE UNIQUE INDEX ON cm_p (tn, k);
ANALYZE cm_p;

INSERT INTO public.patients (id, tenant_id, legacy_code, first_name, last_name, birth_date,
                             email, profile, photo, tags, notes, referred_by, balance, created_at)
SELECT p.id, p.tenant_id,
       CASE WHEN pg_temp.u(p.id, 1) < 0.1 THEN NULL
            ELSE 'LC-' || upper(p.tenant_id) || '-' || lpad(p.k::text, 7, '0') END,
       p.first_name, p.last_name,
       CASE WHEN pg_temp.u(p.id, 4) < 0.1 THEN NULL
            ELSE date '1931-01-01' + (pg_temp.h(p.id, 5) % 32000)::int END,
       CASE WHEN pg_temp.u(p.id, 6) < 0.1 THEN NULL
            ELSE lower(translate(p.first_name, 'éíóãüöáë ''', 'eioauoae')) || '.' || p.k
                 || '@' || p.tenant_id || '.example.org' END,
       CASE WHEN pg_temp.u(p.id, 7) < 0.1 THEN NULL
            ELSE jsonb_build_object(
                   'blood_type', (ARRAY['A+', 'A-', 'B+', 'B-', 'AB+', 'AB-', 'O+', 'O-'])[1 + pg_temp.h(p.id, 8) % 8],
                   'smoker', pg_temp.h(p.id, 9) % 5 = 0,
                   'height_cm', 150 + pg_temp.h(p.id, 10) % 50,
                   'weight_kg', round((45 + pg_temp.u(p.id, 11) * 70)::numeric, 1),
                   'allergies', (ARRAY['[]', '["penicillin"]', '["pollen", "dust"]', '["latex"]',
                                       '["nuts", "shellfish", "penicillin"]'])[1 + pg_temp.h(p.id, 12) % 5]::jsonb,
                   'insurance', CASE WHEN pg_temp.h(p.id, 13) % 4 = 0 THEN NULL
                                     ELSE jsonb_build_object(
                                            'provider', (ARRAY['Acme Health', 'CarePlus', 'Medi"Sure', 'Zürich Life'])[1 + pg_temp.h(p.id, 14) % 4],
                                            'number', 'INS' || pg_temp.h(p.id, 15)) END) END,
       CASE WHEN pg_temp.u(p.id, 16) < 0.1 THEN NULL
            ELSE decode(repeat(md5(p.id::text), 1 + (pg_temp.h(p.id, 17) % 8)::int), 'hex') END,
       CASE WHEN pg_temp.u(p.id, 18) < 0.1 THEN NULL
            ELSE (ARRAY['{}', '{vip}', '{diabetic}', '{vip,"needs interpreter"}', '{pediatric,allergy}',
                        '{"wheelchair access",NULL}', '{"a, b","say \"hi\""}', '{follow-up}'])[1 + pg_temp.h(p.id, 19) % 8]::text[] END,
       CASE WHEN pg_temp.u(p.id, 20) < 0.1 THEN NULL
            WHEN pg_temp.u(p.id, 21) < 0.03   -- > 4 kB, poorly compressible: TOASTed out of line
            THEN (SELECT string_agg(md5(p.id::text || ':' || j), ' ') FROM generate_series(1, 150) j)
            ELSE (ARRAY['Routine check-up.', E'Allergic to penicillin.\nPrefers mornings.',
                        'Referred by a colleague; see file.', E'Tab\tseparated and back\\slash',
                        'Café visit — naïve questions, ü ö ä ß', 'Needs fasting blood test.',
                        '', 'Chronic back pain, physiotherapy twice a week.'])[1 + pg_temp.h(p.id, 22) % 8]
                 || ' #' || pg_temp.h(p.id, 23) % 1000 END,
       r.id,
       CASE WHEN pg_temp.u(p.id, 24) < 0.1 THEN NULL
            ELSE ((pg_temp.h(p.id, 25) % 2000000)::numeric - 200000) / 100 END,
       timestamptz '2019-01-01 00:00:00+00' + p.id * interval '37 seconds'
         + (pg_temp.h(p.id, 26) % 1000000) * interval '1 microsecond'
FROM (SELECT p.id, p.tn, p.k, t.tenant_id,
             (ARRAY['Ana', 'Ben', 'Carla', 'David', 'Elena', 'Felix', 'Gül', 'Hugo', 'Irene', 'João',
                    'Kai', 'Lena', 'Mohammed', 'Nora', 'Oscar', 'Priya', 'Quentin', 'Rosa', 'Sven', 'Tomás',
                    'Uma', 'Viktor', 'Wen', 'Xavier', 'Yara', 'Zoë', 'Amélie', 'Bruno', 'Chen', 'Dana',
                    'Emil', 'Farah', 'Gustav', 'Hana', 'Ivan', 'Jana', 'Karim', 'Lucía', 'Mia', 'Nils'])[1 + pg_temp.h(p.id, 2) % 40] AS first_name,
             (ARRAY['Anderson', 'Becker', 'Costa', 'Dimitrov', 'Eriksson', 'Fischer', 'González', 'Hansen',
                    'Ibrahim', 'Jansen', 'Kim', 'Lopez', 'Müller', 'Novak', 'O''Brien', 'Petrov', 'Quinn',
                    'Rahman', 'Santos', 'Tanaka', 'Ueda', 'Vargas', 'Weber', 'Xu', 'Yilmaz', 'Zhang',
                    'de la Cruz', 'van Dijk', 'Ørsted', 'Łukasik'])[1 + pg_temp.h(p.id, 3) % 30] AS last_name,
             CASE WHEN p.k > 1 AND pg_temp.u(p.id, 27) < 0.2
                  THEN 1 + (pg_temp.h(p.id, 28) % (p.k - 1))::int END AS referrer_k
      FROM cm_p p JOIN cm_t t USING (tn)) p
LEFT JOIN cm_p r ON r.tn = p.tn AND r.k = p.referrer_k
ORDER BY p.id;
\set cm_n :ROW_COUNT
SELECT setval(pg_get_serial_sequence('public.patients', 'id'), greatest(max(id), 1), max(id) IS NOT NULL)
FROM public.patients \gset cm_ignore_
:lap \gset
\echo 'clinic.sql: patients:' :cm_n 'rows,' :cm_s 's'

-- Appointments of a tenant's patients with its staff, interleaved across tenants;
-- ids come from the identity in this order.
INSERT INTO public.appointments (tenant_id, patient_id, staff_no, specialty_id, starts_at, duration, status)
SELECT a.tenant_id, p.id, 1 + (pg_temp.h(a.x, 2) % a.n_s)::int,
       CASE WHEN pg_temp.u(a.x, 3) < 0.1 THEN NULL ELSE 1 + pg_temp.h(a.x, 4) % 20 END::int,
       timestamptz '2022-01-03 08:00:00+00' + (pg_temp.h(a.x, 5) % 900) * interval '1 day'
         + (pg_temp.h(a.x, 6) % 20) * interval '30 minutes',
       (ARRAY[interval '15 minutes', '30 minutes', '30 minutes', '45 minutes', '1 hour'])[1 + pg_temp.h(a.x, 7) % 5],
       CASE WHEN pg_temp.u(a.x, 8) < 0.55 THEN 'done' WHEN pg_temp.u(a.x, 8) < 0.85 THEN 'booked'
            ELSE 'cancelled' END
FROM (SELECT t.tn, t.tenant_id, t.n_p, t.n_s, a, t.tn * 1000000000::bigint + a AS x,
             (a - 0.5) / t.n_a AS pos
      FROM cm_t t, generate_series(1, t.n_a) a) a
JOIN cm_p p ON p.tn = a.tn AND p.k = 1 + (pg_temp.h(a.x, 1) % a.n_p)::int
ORDER BY a.pos, a.tn;
\set cm_n :ROW_COUNT
:lap \gset
\echo 'clinic.sql: appointments:' :cm_n 'rows,' :cm_s 's'

-- Notes: none for most appointments, one for 30%, two for 3.75% (0.375 per appointment).
INSERT INTO public.appointment_notes (appointment_id, body, written_at)
SELECT a.id,
       (ARRAY['Patient doing well.', E'Follow-up in 2 weeks.\nPrescribed: ibuprofen 400 mg.',
              'Blood pressure 130/85; advised diet.', E'Did not show up.\tCalled twice.',
              'Röntgen: no fracture — see C:\scans\' || a.id, 'Referred to specialist.',
              'Vaccination given (lot A-17).'])[1 + pg_temp.h(a.id * 4 + j, 2) % 7]
       || CASE WHEN pg_temp.u(a.id * 4 + j, 3) < 0.2 THEN ' ' || repeat('Observation. ', 1 + (pg_temp.h(a.id * 4 + j, 4) % 40)::int)
               ELSE '' END,
       a.starts_at + a.duration + (pg_temp.h(a.id * 4 + j, 5) % 120) * interval '1 minute'
FROM public.appointments a,
     generate_series(1, CASE WHEN pg_temp.u(a.id, 30) < 0.0375 THEN 2
                             WHEN pg_temp.u(a.id, 30) < 0.3375 THEN 1 ELSE 0 END) j
ORDER BY a.id, j;
\set cm_n :ROW_COUNT
:lap \gset
\echo 'clinic.sql: appointment_notes:' :cm_n 'rows,' :cm_s 's'

-- A dropped column, after the rows are loaded.
ALTER TABLE public.patients DROP COLUMN legacy_code;
COMMIT;

VACUUM ANALYZE public.tenants, public.specialties, public.staff, public.patients,
               public.appointments, public.appointment_notes;
:lap \gset
\echo 'clinic.sql: vacuum analyze:' :cm_s 's'

SELECT (SELECT count(*) FROM public.tenants) AS cm_tenants,
       (SELECT count(*) FROM public.staff) + (SELECT count(*) FROM public.patients)
       + (SELECT count(*) FROM public.appointments) + (SELECT count(*) FROM public.appointment_notes) AS cm_total,
       round(extract(epoch FROM clock_timestamp() - current_setting('cm.start')::timestamptz)::numeric, 1) AS cm_s \gset
\echo 'clinic.sql: done:' :cm_tenants 'tenants,' :cm_total 'rows in staff, patients, appointments and appointment_notes,' :cm_s 's'
