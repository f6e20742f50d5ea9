--
-- upgrade_0_8: a tenant moved half-way under version 0.8 finishes its move after
-- ALTER EXTENSION clinic_migrate UPDATE (0.8 -> 0.9), in a database of its own.
--
\set from '0.8'
\ir sql/upgrade_start.psql
-- what 0.9 added: the registry guard's function; plan()'s estimate;
-- uncarried() for given tables, without JIT, not open to PUBLIC
SELECT p.oid::regprocedure, p.prorows, p.proconfig, has_function_privilege('public', p.oid, 'EXECUTE') AS public
FROM pg_proc p
WHERE p.pronamespace = 'clinic_migrate'::regnamespace
  AND p.proname IN ('plan', 'uncarried', 'uncarried_in', 'uncarried_ours', 'registry_guard')
ORDER BY 1::text;
SELECT object, kind, shared_table FROM clinic_migrate.uncarried();
-- and indexes for the lookups that read every tenant's row
SELECT indexrelid::regclass, pg_get_indexdef(indexrelid) FROM pg_index
WHERE indexrelid::regclass::text IN ('clinic_migrate.tenants_source_schema', 'clinic_migrate.tenants_capture_wal',
                                     'clinic_migrate.tenant_tables_source_table')
ORDER BY 1::text;
-- u1's copy, made under 0.8, keeps its foreign keys to the registry
SELECT conrelid::regclass, conname FROM pg_constraint
WHERE confrelid = 'public.tenants'::regclass AND connamespace = 'tenant_u1'::regnamespace ORDER BY 1, 2;
-- a tenant moved under 0.9: the registry guard in place of its copy's keys to the registry
INSERT INTO tenants VALUES ('u3');
INSERT INTO patients (tenant_id, email, name) VALUES ('u3', 'p1@u3.example.org', 'Patient of u3');
INSERT INTO rooms VALUES (4, 'u3', '[2025-02-01 09:00+00, 2025-02-01 10:00+00)');
SELECT schema_name, tables, rows_copied FROM clinic_migrate.migrate_tenant('u3');
SELECT conrelid::regclass, conname FROM pg_constraint
WHERE confrelid = 'public.tenants'::regclass AND connamespace = 'tenant_u3'::regnamespace ORDER BY 1, 2;
SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = 'public.tenants'::regclass AND NOT tgisinternal ORDER BY 1;
SELECT schema_name, attempts FROM clinic_migrate.cutover('u3');
SELECT schema_name FROM clinic_migrate.finalize_tenant('u3', archive => false);
-- its shared rows are gone: the guard alone keeps its registry row
DELETE FROM tenants WHERE tenant_id = 'u3';
UPDATE tenants SET tenant_id = 'u9' WHERE tenant_id = 'u3';
UPDATE tenants SET tenant_id = 'u3' WHERE tenant_id = 'u3';
TRUNCATE tenants CASCADE;
INSERT INTO tenant_u3.patients (tenant_id, email, name) VALUES ('u3', 'p2@u3.example.org', 'Second patient of u3');
-- once its schema is dropped, its registry row may go
DROP SCHEMA tenant_u3 CASCADE;
DELETE FROM tenants WHERE tenant_id = 'u3';
\ir sql/upgrade_finish.psql

-- the registry guard goes with DROP EXTENSION, without CASCADE
SET client_min_messages = warning;
CREATE DATABASE regress_clinic_guard;
\c regress_clinic_guard
SET client_min_messages = warning;
CREATE EXTENSION clinic_migrate;
RESET client_min_messages;
SET clinic_migrate.progress_interval = 0;
CREATE TABLE tenants (tenant_id text PRIMARY KEY);
INSERT INTO tenants VALUES ('g1'), ('g2');
CREATE TABLE patients (id bigserial PRIMARY KEY, tenant_id text NOT NULL REFERENCES tenants, name text NOT NULL);
CREATE INDEX ON patients (tenant_id, id);
INSERT INTO patients (tenant_id, name) VALUES ('g1', 'one'), ('g2', 'two');
SELECT schema_name, tables, rows_copied FROM clinic_migrate.migrate_tenant('g1');
-- the copy holds its own tenant's rows only (a CHECK, in place of its key)
SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint
WHERE conrelid = 'tenant_g1.patients'::regclass AND contype IN ('c', 'f') ORDER BY 1;
INSERT INTO tenant_g1.patients (tenant_id, name) VALUES ('g2', 'not g1''s');
-- deploys that name the key the copy does not have are followed (skipped there)
ALTER TABLE patients RENAME CONSTRAINT patients_tenant_id_fkey TO patients_tenant_fkey;
ALTER TABLE patients VALIDATE CONSTRAINT patients_tenant_fkey;
SELECT schema_name, attempts FROM clinic_migrate.cutover('g1');
SELECT schema_name FROM clinic_migrate.finalize_tenant('g1', archive => false);
-- the guard follows its column through a rename
ALTER TABLE tenants RENAME COLUMN tenant_id TO id;
DELETE FROM tenants WHERE id = 'g1';
UPDATE tenants SET id = 'g2' WHERE id = 'g2';
-- an application's BEFORE UPDATE trigger that re-keys in an UPDATE not naming the key
ALTER TABLE tenants ADD COLUMN label text;
CREATE FUNCTION rekey() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.label = 'rename' THEN NEW.id := NEW.id || '_renamed'; END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER rekey BEFORE UPDATE ON tenants FOR EACH ROW EXECUTE FUNCTION rekey();
UPDATE tenants SET label = 'rename' WHERE id = 'g1';
UPDATE tenants SET label = 'kept' WHERE id = 'g1';
DROP TRIGGER rekey ON tenants;
SELECT tgname FROM pg_trigger WHERE tgrelid = 'tenants'::regclass AND NOT tgisinternal ORDER BY 1;
-- keys compared in their type: char(n) ('t2 ' is the row 't2'), numeric (1 is 1.0)
CREATE SCHEMA c;
CREATE TABLE c.tenants (tenant_id char(5) PRIMARY KEY);
INSERT INTO c.tenants VALUES ('t2'), ('t3');
CREATE TABLE c.patients (id serial PRIMARY KEY, tenant_id char(5) NOT NULL REFERENCES c.tenants, name text);
CREATE INDEX ON c.patients (tenant_id, id);
INSERT INTO c.patients (tenant_id, name) VALUES ('t3', 'b');
SET clinic_migrate.source_schema = c;
SELECT schema_name FROM clinic_migrate.migrate_tenant('t2 ');
DELETE FROM c.tenants WHERE tenant_id = 't2';
CREATE SCHEMA n;
CREATE TABLE n.tenants (tenant_id numeric PRIMARY KEY);
INSERT INTO n.tenants VALUES (1.0), (2);
CREATE TABLE n.patients (id serial PRIMARY KEY, tenant_id numeric NOT NULL REFERENCES n.tenants, name text);
CREATE INDEX ON n.patients (tenant_id, id);
INSERT INTO n.patients (tenant_id, name) VALUES (2, 'b');
SET clinic_migrate.source_schema = n;
SELECT schema_name FROM clinic_migrate.migrate_tenant('1');
DELETE FROM n.tenants WHERE tenant_id = 1.0;
SELECT clinic_migrate.rollback_tenant('1');
SET clinic_migrate.source_schema = c;
SELECT clinic_migrate.rollback_tenant('t2 ');
RESET clinic_migrate.source_schema;
DROP EXTENSION clinic_migrate;
SELECT tgname FROM pg_trigger WHERE tgrelid = 'tenants'::regclass AND NOT tgisinternal ORDER BY 1;
SELECT count(*) AS rows_of_g1 FROM tenant_g1.patients;
\c :regress_db
SET client_min_messages = warning;
DROP DATABASE regress_clinic_guard WITH (FORCE);
