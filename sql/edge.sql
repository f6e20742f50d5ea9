--
-- Edge cases found in review, each pinned with its reproducer.
--
SET clinic_migrate.progress_interval = 0;
SET client_min_messages = warning;
CREATE SCHEMA edge;
CREATE SCHEMA edge_out;
SET clinic_migrate.source_schema = edge;
SET clinic_migrate.tenant_column = clinic_no;
SET clinic_migrate.registry_table = clinics;
CREATE TABLE edge.clinics (clinic_no int PRIMARY KEY, name text NOT NULL);
CREATE TABLE edge.wards (clinic_no int NOT NULL REFERENCES edge.clinics,
                         ward_id int PRIMARY KEY, head_nurse int);
CREATE INDEX ON edge.wards (clinic_no, ward_id);
CREATE TABLE edge.nurses (nurse_id int PRIMARY KEY,
                          ward_id int NOT NULL REFERENCES edge.wards,
                          mentor int REFERENCES edge.nurses);
CREATE INDEX ON edge.nurses (ward_id);
-- a cycle: wards -> nurses -> wards
ALTER TABLE edge.wards ADD FOREIGN KEY (head_nurse) REFERENCES edge.nurses
    DEFERRABLE INITIALLY DEFERRED;
INSERT INTO edge.clinics VALUES (1, 'one'), (2, 'two'), (3, 'three');
BEGIN;
INSERT INTO edge.wards VALUES (1, 10, 100), (1, 11, 101), (2, 20, 200), (3, 30, NULL);
-- nurse 100's mentor is 101: a forward self-reference in key order
INSERT INTO edge.nurses VALUES (100, 10, 101), (101, 11, NULL), (200, 20, NULL), (300, 30, NULL);
COMMIT;

-- create_tenant_schema puts keys and foreign keys on the empty tables; a
-- later copy in batches of one must still get through the cycle
SELECT clinic_migrate.create_tenant_schema('1');
SET clinic_migrate.batch_size = 1;
SELECT schema_name, tables, rows_copied, resumed FROM clinic_migrate.migrate_tenant('1');
SELECT table_name, source_rows, target_rows, match
FROM clinic_migrate.validate_migration('1') ORDER BY table_name;
SELECT count(*) AS foreign_keys FROM pg_constraint
WHERE contype = 'f' AND connamespace = 'tenant_1'::regnamespace;
RESET clinic_migrate.batch_size;

-- '01' and ' 1' are tenant 1 of an integer column: same schema, no second copy
SELECT clinic_migrate.schema_name_for('01') AS for_01, clinic_migrate.schema_name_for(' 1') AS for_space_1;
SELECT schema_name, rows_copied, resumed FROM clinic_migrate.migrate_tenant('01');
SELECT tenant_id, schema_name FROM clinic_migrate.tenants ORDER BY tenant_id;
SELECT * FROM clinic_migrate.migrate_tenant('1.5');
\echo :LAST_ERROR_SQLSTATE

-- not inside a transaction block: the worker could not see its writes and
-- would wait for its locks
BEGIN;
SELECT * FROM clinic_migrate.migrate_tenant('2');
ROLLBACK;
SELECT count(*) AS tenant_2 FROM clinic_migrate.tenants WHERE tenant_id = '2';

-- rollback refuses to take objects outside the schema with it
CREATE VIEW edge_out.ward_names AS SELECT ward_id FROM tenant_1.wards;
SELECT clinic_migrate.rollback_tenant('1');
SELECT count(*) AS tenant_1_still_there FROM clinic_migrate.tenants WHERE tenant_id = '1';
DROP VIEW edge_out.ward_names;
SELECT clinic_migrate.rollback_tenant('01') AS rolled_back;

-- a partitioned table with tenant rows moves with the tenant (0.7), partitions and all
CREATE TABLE edge.events (clinic_no int NOT NULL, id int NOT NULL, PRIMARY KEY (clinic_no, id))
    PARTITION BY LIST (clinic_no);
CREATE TABLE edge.events_all PARTITION OF edge.events FOR VALUES IN (1, 2, 3);
INSERT INTO edge.events VALUES (3, 1);
SELECT schema_name, tables FROM clinic_migrate.migrate_tenant('3');
SELECT tableoid::regclass AS partition, clinic_no, id FROM tenant_3.events;
DROP TABLE edge.events;

-- a duplicated row is named; max_keys = 0 names nothing but still fails
ALTER TABLE tenant_3.nurses DROP CONSTRAINT nurses_mentor_fkey;
ALTER TABLE tenant_3.nurses DROP CONSTRAINT nurses_pkey CASCADE;
INSERT INTO tenant_3.nurses SELECT * FROM tenant_3.nurses;
SELECT table_name, source_rows, target_rows, missing_keys, extra_keys, different_keys, match
FROM clinic_migrate.validate_migration('3') WHERE table_name = 'nurses';
SELECT * FROM clinic_migrate.validate_differences('3');
SELECT table_name, missing_keys, extra_keys, different_keys, match
FROM clinic_migrate.validate_migration('3', 0) WHERE table_name = 'nurses';
SELECT clinic_migrate.rollback_tenant('3') AS rolled_back;

-- composite keys read back unambiguously
RESET clinic_migrate.tenant_column;
RESET clinic_migrate.registry_table;
CREATE TABLE edge.tags (tenant_id text NOT NULL, tag text NOT NULL, PRIMARY KEY (tenant_id, tag));
SET clinic_migrate.registry_table = '';
INSERT INTO edge.tags VALUES ('k', 'a,b'), ('k', 'x)'), ('k', 'q"r');
SELECT schema_name FROM clinic_migrate.migrate_tenant('k');
DELETE FROM tenant_k.tags;
SELECT key, difference FROM clinic_migrate.validate_differences('k') ORDER BY key;
SELECT clinic_migrate.rollback_tenant('k') AS rolled_back;

-- two ids whose schema names meet: the error says so
CREATE TABLE edge.notes (tenant_id text NOT NULL, id int NOT NULL, PRIMARY KEY (tenant_id, id));
INSERT INTO edge.notes VALUES ('UPPER', 1);
SELECT clinic_migrate.create_tenant_schema('UPPER') IS NOT NULL AS created;
SELECT substr(clinic_migrate.schema_name_for('UPPER'), 8) AS lookalike \gset
INSERT INTO edge.notes VALUES (:'lookalike', 1);
SET cm.lookalike = :'lookalike';
DO $$
BEGIN
    PERFORM clinic_migrate.create_tenant_schema(current_setting('cm.lookalike'));
EXCEPTION WHEN duplicate_schema THEN
    RAISE WARNING 'duplicate_schema: %', SQLERRM LIKE 'tenants % map to the same schema name %';
END $$;
RESET cm.lookalike;
SELECT clinic_migrate.rollback_tenant('UPPER') AS rolled_back;

RESET clinic_migrate.source_schema;
RESET clinic_migrate.tenant_column;
RESET clinic_migrate.registry_table;
DROP SCHEMA edge CASCADE;
DROP SCHEMA edge_out;
