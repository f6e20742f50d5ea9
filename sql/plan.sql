--
-- plan: which tables of public hold tenant rows, how they are reached and in
-- which order they are copied (parents first).
--
\pset null '(null)'

-- the whole plan: audit_log has no key, note_attachments no index on its
-- foreign key; nurses and wards reference each other (a cycle), staff itself
SELECT * FROM clinic_migrate.plan();

-- the copy order puts every table after the tables it references (cycles
-- and self-references aside)
SELECT c.conrelid::regclass AS child, c.confrelid::regclass AS parent,
       pc.position AS child_position, pp.position AS parent_position
FROM pg_constraint c
JOIN clinic_migrate.plan() pc ON pc.table_name = c.conrelid
JOIN clinic_migrate.plan() pp ON pp.table_name = c.confrelid
WHERE c.contype = 'f' AND pc.position IS NOT NULL AND pp.position IS NOT NULL
  AND pc.position < pp.position
ORDER BY 1::text COLLATE "C", 2::text COLLATE "C";

-- the hints are statements that can be run as they are
SELECT m[1] AS hint
FROM clinic_migrate.plan(), regexp_matches(note, 'CREATE INDEX ON [^;]*', 'g') m
ORDER BY 1 \gexec
SELECT table_name, note FROM clinic_migrate.plan() WHERE note IS NOT NULL ORDER BY 1::text COLLATE "C";

-- a tenant table without an index on (tenant column, key) gets a note too
CREATE TABLE public.scratch (tenant_id text NOT NULL, id integer PRIMARY KEY);
SELECT position, kind, key_columns, batch_index, note
FROM clinic_migrate.plan() WHERE table_name = 'public.scratch'::regclass;
DROP TABLE public.scratch;

-- excluding: the table stays shared; excluding twice only updates the reason
SELECT clinic_migrate.exclude_table('audit_log', 'no key');
SELECT clinic_migrate.exclude_table('audit_log', 'kept shared: no key');
SELECT table_name, reason, excluded_by = current_user AS by_me
FROM clinic_migrate.excluded_tables ORDER BY 1::text COLLATE "C";
SELECT position, table_name, kind, note FROM clinic_migrate.plan()
WHERE table_name = 'audit_log'::regclass;

-- excluding a parent keeps it shared, but its children are still found
-- through it and copied (their foreign keys then point at the shared parent)
SELECT clinic_migrate.exclude_table('appointments');
SELECT position, table_name, kind, tenant_path
FROM clinic_migrate.plan() ORDER BY position NULLS LAST, 2::text COLLATE "C";
SELECT clinic_migrate.include_table('appointments');
SELECT clinic_migrate.include_table('appointments');   -- not excluded any more
SELECT clinic_migrate.exclude_table('no_such_table');  -- not a table

-- the final plan used by the following suites
SELECT position, table_name, kind, key_columns, batch_index, note
FROM clinic_migrate.plan() ORDER BY position NULLS LAST, 2::text COLLATE "C";

-- another source schema and tenant column
CREATE SCHEMA other_src;
CREATE TABLE other_src.things (org text, id int, PRIMARY KEY (org, id));
CREATE TABLE other_src.parts (id int PRIMARY KEY, org text, thing int,
                              FOREIGN KEY (org, thing) REFERENCES other_src.things);
SET clinic_migrate.source_schema = other_src;
SET clinic_migrate.tenant_column = org;
SELECT * FROM clinic_migrate.plan();
SET clinic_migrate.tenant_column = no_such_column;
SELECT * FROM clinic_migrate.plan();
RESET clinic_migrate.source_schema;
RESET clinic_migrate.tenant_column;
DROP SCHEMA other_src CASCADE;
