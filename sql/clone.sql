--
-- clone: create_tenant_schema makes the tenant's schema with a faithful copy of
-- the structure of every planned table, empty, and is idempotent.
--
\pset null '(null)'

-- The structure of a schema's tables as text, with the schema's own name taken
-- out, so that two schemas can be compared row by row.  Foreign keys are left
-- out: they differ on purpose (see below).
CREATE FUNCTION cm_regress.shape(nsp name)
RETURNS TABLE (table_name name, what text, name name, definition text)
LANGUAGE sql STABLE
SET search_path = pg_catalog
BEGIN ATOMIC
    WITH t AS (
        SELECT c.oid, c.relname FROM pg_class c
        WHERE c.relnamespace = nsp::regnamespace AND c.relkind = 'r'
    ), s AS (
        SELECT t.relname, 'table' AS what, t.relname AS name,
               concat_ws(' | ', 'persistence ' || c.relpersistence::text,
                         'options ' || c.reloptions::text, 'acl ' || c.relacl::text,
                         'owner ' || c.relowner::regrole::text,
                         'comment ' || obj_description(c.oid, 'pg_class'),
                         'rls ' || c.relrowsecurity::text, 'replident ' || c.relreplident::text) AS def
        FROM t JOIN pg_class c ON c.oid = t.oid
        UNION ALL
        SELECT t.relname, 'column', a.attname,
               concat_ws(' | ', format_type(a.atttypid, a.atttypmod),
                         CASE WHEN a.attnotnull THEN 'not null' END,
                         'default ' || pg_get_expr(d.adbin, d.adrelid),
                         CASE a.attidentity WHEN 'a' THEN 'identity always'
                                            WHEN 'd' THEN 'identity by default' END,
                         CASE a.attgenerated WHEN 's' THEN 'generated stored' END,
                         'storage ' || a.attstorage::text,
                         CASE WHEN a.attcollation <> 0 THEN 'collate ' || a.attcollation::regcollation::text END,
                         'acl ' || a.attacl::text,
                         'comment ' || col_description(t.oid, a.attnum))
        FROM t JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum > 0 AND NOT a.attisdropped
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        UNION ALL
        SELECT t.relname, 'constraint', con.conname,
               concat_ws(' | ', pg_get_constraintdef(con.oid),
                         'comment ' || obj_description(con.oid, 'pg_constraint'))
        FROM t JOIN pg_constraint con ON con.conrelid = t.oid AND con.contype <> 'f'
        UNION ALL
        SELECT t.relname, 'index', i.relname,
               concat_ws(' | ', pg_get_indexdef(i.oid),
                         'comment ' || obj_description(i.oid, 'pg_class'),
                         'options ' || i.reloptions::text)
        FROM t JOIN pg_index x ON x.indrelid = t.oid JOIN pg_class i ON i.oid = x.indexrelid
    )
    SELECT relname, what, name, replace(def, quote_ident(nsp) || '.', '')
    FROM s;
END;

-- the schema's name: what schema_name_for says, and what create_tenant_schema returns
SELECT clinic_migrate.schema_name_for('t1');
SELECT clinic_migrate.create_tenant_schema('t1');
SELECT * FROM cm_regress.state;
SELECT tenant_id, schema_name, action, status, rows_copied, error, started_by = current_user AS by_me
FROM clinic_migrate.runs ORDER BY run_id;
SELECT position, table_name, kind, rows_total, rows_copied, checkpoint, copied, indexed,
       source_table = ('public.' || quote_ident(table_name))::regclass AS source_ok,
       target_table = ('tenant_t1.' || quote_ident(table_name))::regclass AS target_ok
FROM clinic_migrate.tenant_tables ORDER BY tenant_id, position;

-- the planned tables and nothing else, empty; the schema belongs to the caller
SELECT nspname, nspowner::regrole, nspacl FROM pg_namespace WHERE nspname = 'tenant_t1';
SELECT c.relname, c.relkind, c.relowner::regrole
FROM pg_class c WHERE c.relnamespace = 'tenant_t1'::regnamespace AND c.relkind NOT IN ('i')
ORDER BY c.relname COLLATE "C";
SELECT (SELECT count(*) FROM tenant_t1.patients) + (SELECT count(*) FROM tenant_t1.appointments)
     + (SELECT count(*) FROM tenant_t1.staff) + (SELECT count(*) FROM tenant_t1.invoices)
     + (SELECT count(*) FROM tenant_t1.shifts) + (SELECT count(*) FROM tenant_t1.room_bookings)
     + (SELECT count(*) FROM tenant_t1.appointment_notes) + (SELECT count(*) FROM tenant_t1.note_attachments)
     + (SELECT count(*) FROM tenant_t1.nurses) + (SELECT count(*) FROM tenant_t1.wards) AS rows;

-- the clone's structure: columns (types, defaults, NOT NULL, identity, generated,
-- storage, column grants and comments), CHECK / PRIMARY KEY / UNIQUE / EXCLUDE
-- constraints, indexes (partial, expression), comments, grants, reloptions
SELECT * FROM cm_regress.shape('tenant_t1') ORDER BY 1, 2, 3;

-- ... and it is the shared tables' structure, item for item, but the CHECK
-- that holds the copy to its tenant where the registry guard (0.9) keeps
-- its registry row (in place of patients' key to the registry)
SELECT * FROM cm_regress.shape('tenant_t1')
EXCEPT
SELECT * FROM cm_regress.shape('public') s
WHERE s.table_name IN (SELECT table_name FROM clinic_migrate.tenant_tables)
ORDER BY 1, 2, 3;
SELECT * FROM cm_regress.shape('public') s
WHERE s.table_name IN (SELECT table_name FROM clinic_migrate.tenant_tables)
EXCEPT
SELECT * FROM cm_regress.shape('tenant_t1')
ORDER BY 1, 2, 3;

-- serial columns own a new sequence in the tenant's schema, with the same
-- parameters, and the shared table keeps its own; so do identity columns
SELECT pg_get_serial_sequence('tenant_t1.appointments', 'id') AS tenant_serial,
       pg_get_serial_sequence('public.appointments', 'id') AS shared_serial,
       pg_get_serial_sequence('tenant_t1.invoices', 'invoice_no') AS tenant_identity,
       pg_get_serial_sequence('public.invoices', 'invoice_no') AS shared_identity;
SELECT c.relname, s.seqstart, s.seqincrement, s.seqmin, s.seqmax, s.seqcache, s.seqcycle,
       (SELECT count(*) FROM pg_sequence p
        WHERE p.seqrelid = ('public.' || c.relname)::regclass
          AND (p.seqstart, p.seqincrement, p.seqmin, p.seqmax, p.seqcache, p.seqcycle)
            = (s.seqstart, s.seqincrement, s.seqmin, s.seqmax, s.seqcache, s.seqcycle)) = 1 AS same_as_shared
FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid
WHERE c.relnamespace = 'tenant_t1'::regnamespace ORDER BY 1;
SELECT c.relname, d.refobjid::regclass AS owned_by_table, a.attname AS owned_by_column, d.deptype
FROM pg_depend d JOIN pg_class c ON c.oid = d.objid
JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
  AND c.relkind = 'S' AND c.relnamespace = 'tenant_t1'::regnamespace
ORDER BY 1;

-- foreign keys: among the tenant's tables they point at the tenant's copies
-- (the self-reference of staff, the cycle of nurses and wards included), to
-- shared tables (registry, reference) they still point at the shared table;
-- actions and validity are kept
SET search_path = pg_catalog;
SELECT con.conrelid::regclass AS table_name, con.conname, con.confrelid::regclass AS referenced,
       pg_get_constraintdef(con.oid) AS definition, con.convalidated
FROM pg_constraint con
WHERE con.contype = 'f' AND con.connamespace = 'tenant_t1'::regnamespace
ORDER BY 1::text COLLATE "C", 2;
RESET search_path;
-- the same foreign keys as the shared tables have: names, columns, actions
-- (column numbers differ: the shared patients has a dropped column), but
-- patients' key to the registry by the tenant column: from 0.9 the
-- registry's guard keeps its promise (one pair of triggers on the registry
-- for every tenant, not two triggers per table per tenant)
CREATE FUNCTION cm_regress.fk_columns(conrel oid, cols int2[]) RETURNS name[]
LANGUAGE sql STABLE
RETURN (SELECT array_agg(a.attname ORDER BY k.ord)
        FROM unnest(cols) WITH ORDINALITY k(attnum, ord)
        JOIN pg_attribute a ON a.attrelid = conrel AND a.attnum = k.attnum);
SELECT count(*) AS shared_fks,
       count(*) FILTER (WHERE EXISTS (
           SELECT 1 FROM pg_constraint t
           WHERE t.connamespace = 'tenant_t1'::regnamespace AND t.contype = 'f'
             AND t.conname = s.conname
             AND cm_regress.fk_columns(t.conrelid, t.conkey) = cm_regress.fk_columns(s.conrelid, s.conkey)
             AND cm_regress.fk_columns(t.confrelid, t.confkey) = cm_regress.fk_columns(s.confrelid, s.confkey)
             AND (t.confupdtype, t.confdeltype, t.confmatchtype, t.condeferrable, t.condeferred)
               = (s.confupdtype, s.confdeltype, s.confmatchtype, s.condeferrable, s.condeferred))) AS cloned
FROM pg_constraint s
WHERE s.contype = 'f' AND s.connamespace = 'public'::regnamespace
  AND s.conrelid::regclass::text IN (SELECT table_name FROM clinic_migrate.tenant_tables);

-- the constraints work in the clone (EXCLUDE, GENERATED ALWAYS identity)
BEGIN;
INSERT INTO tenant_t1.room_bookings VALUES ('t1', 1, 'A', '[1,5)');
INSERT INTO tenant_t1.room_bookings VALUES ('t1', 2, 'B', '[3,8)');
ROLLBACK;
BEGIN;
INSERT INTO tenant_t1.invoices (invoice_no, tenant_id, amount, issued_at, due_in)
VALUES (1, 't1', 1, '2024-01-01', '1 day');
ROLLBACK;

-- idempotent: a second call returns the same name and changes nothing
CREATE TEMP TABLE before_shape AS
SELECT * FROM cm_regress.shape('tenant_t1')
UNION ALL
SELECT c.relname, 'oid', NULL, c.oid::text FROM pg_class c WHERE c.relnamespace = 'tenant_t1'::regnamespace
UNION ALL
SELECT conrelid::regclass::text, 'fk', conname, pg_get_constraintdef(oid) || convalidated
FROM pg_constraint WHERE connamespace = 'tenant_t1'::regnamespace AND contype = 'f';
CREATE TEMP TABLE before_state AS SELECT * FROM clinic_migrate.tenant_tables;
SELECT clinic_migrate.create_tenant_schema('t1');
SELECT count(*) AS changed FROM (
    (SELECT * FROM cm_regress.shape('tenant_t1')
     UNION ALL
     SELECT c.relname, 'oid', NULL, c.oid::text FROM pg_class c WHERE c.relnamespace = 'tenant_t1'::regnamespace
     UNION ALL
     SELECT conrelid::regclass::text, 'fk', conname, pg_get_constraintdef(oid) || convalidated
     FROM pg_constraint WHERE connamespace = 'tenant_t1'::regnamespace AND contype = 'f')
    EXCEPT ALL SELECT * FROM before_shape) d;
SELECT count(*) AS changed FROM (
    SELECT * FROM before_shape
    EXCEPT ALL
    (SELECT * FROM cm_regress.shape('tenant_t1')
     UNION ALL
     SELECT c.relname, 'oid', NULL, c.oid::text FROM pg_class c WHERE c.relnamespace = 'tenant_t1'::regnamespace
     UNION ALL
     SELECT conrelid::regclass::text, 'fk', conname, pg_get_constraintdef(oid) || convalidated
     FROM pg_constraint WHERE connamespace = 'tenant_t1'::regnamespace AND contype = 'f')) d;
SELECT count(*) AS changed FROM (
    (SELECT * FROM clinic_migrate.tenant_tables EXCEPT SELECT * FROM before_state)
    UNION ALL
    (SELECT * FROM before_state EXCEPT SELECT * FROM clinic_migrate.tenant_tables)) d;
SELECT * FROM cm_regress.state;
SELECT tenant_id, action, status FROM clinic_migrate.runs ORDER BY run_id;
DROP TABLE before_shape, before_state;

-- schema names of hostile ids: at most 63 bytes, distinct, lower case
-- [a-z0-9_]; an id that is not a plain identifier gets a hash of its bytes
-- (shown as <hash>: its digits are not the point)
CREATE TEMP TABLE hostile (id text PRIMARY KEY);
INSERT INTO hostile VALUES
    ('x''; DROP TABLE patients; --'), ('"quoted"'), ('semi;colon'), ('with space'),
    ('UPPER'), ('Upper'), ('upper'), ('Zürich'), ('東京'), ('a-b'), ('a_b'), ('a.b'),
    (repeat('a', 100)), (repeat('a', 100) || 'b'), (repeat('a', 56)), (repeat('a', 57)),
    (repeat('é', 50)), ('pg_x'), ('0');
SELECT length(id) AS chars, octet_length(id) AS bytes,
       regexp_replace(clinic_migrate.schema_name_for(id), '_[0-9a-f]{8}$', '_<hash>') AS schema_name,
       octet_length(clinic_migrate.schema_name_for(id)) AS name_bytes
FROM hostile ORDER BY id COLLATE "C";
SELECT count(*) AS ids, count(DISTINCT clinic_migrate.schema_name_for(id)) AS names,
       bool_and(octet_length(clinic_migrate.schema_name_for(id)) <= 63) AS all_fit,
       bool_and(clinic_migrate.schema_name_for(id) ~ '^[a-z0-9_]+$') AS all_plain
FROM hostile;
-- another template
SET clinic_migrate.schema_template = 'clinic_%s_data';
SELECT count(DISTINCT clinic_migrate.schema_name_for(id)) AS names,
       bool_and(octet_length(clinic_migrate.schema_name_for(id)) <= 63) AS all_fit,
       bool_and(clinic_migrate.schema_name_for(id) ~ '^clinic_[a-z0-9_]+_data$') AS all_match
FROM hostile;
-- a tenant that has a schema keeps its recorded name
SELECT clinic_migrate.schema_name_for('t1') AS t1, clinic_migrate.schema_name_for('t2') AS t2;
RESET clinic_migrate.schema_template;

-- create_tenant_schema gives them exactly those names (they are in the registry)
INSERT INTO public.tenants SELECT id, 'hostile' FROM hostile WHERE id <> 'pg_x';
SELECT count(*) AS ids,
       count(*) FILTER (WHERE clinic_migrate.create_tenant_schema(id) = clinic_migrate.schema_name_for(id)) AS same_name
FROM hostile WHERE id <> 'pg_x';
SELECT count(*) AS ids, count(*) FILTER (WHERE h.id = t.tenant_id) AS recorded,
       count(*) FILTER (WHERE n.oid = t.schema_oid) AS schema_exists,
       count(*) FILTER (WHERE (SELECT count(*) FROM pg_class c WHERE c.relnamespace = n.oid AND c.relkind = 'r') = 10) AS all_tables
FROM hostile h
JOIN clinic_migrate.tenants t ON t.tenant_id = h.id
LEFT JOIN pg_namespace n ON n.nspname = t.schema_name;
-- the shared tables are all still there
SELECT count(*) AS public_tables FROM pg_tables WHERE schemaname = 'public';
-- clean up: roll them back and take them out of the registry
SET client_min_messages = warning;  -- DROP SCHEMA ... CASCADE lists every table
SELECT count(*) FILTER (WHERE clinic_migrate.rollback_tenant(id)) AS rolled_back FROM hostile;
RESET client_min_messages;
DELETE FROM public.tenants WHERE name = 'hostile';
SELECT * FROM cm_regress.schemas ORDER BY 1;
SELECT tenant_id FROM clinic_migrate.tenants ORDER BY 1;
DELETE FROM clinic_migrate.runs WHERE tenant_id IN (SELECT id FROM hostile);
DROP TABLE hostile;

-- t1 is migrated from scratch in the migrate suite (t4 shows a migration
-- into a schema made beforehand by create_tenant_schema)
SET client_min_messages = warning;
SELECT clinic_migrate.rollback_tenant('t1');
RESET client_min_messages;
SELECT * FROM cm_regress.schemas ORDER BY 1;
