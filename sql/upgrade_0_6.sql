--
-- upgrade_0_6: a tenant moved half-way under version 0.6 finishes its move after
-- ALTER EXTENSION clinic_migrate UPDATE (0.6 -> 0.7), in a database of its own.
--
\set from '0.6'
\ir sql/upgrade_start.psql
-- what 0.7 added: an event trigger at the start of ALTER and DROP TABLE, its
-- function not open to PUBLIC, nor are the trigger functions
SELECT evtname, evtevent, evtenabled, evttags, evtfoid::regprocedure
FROM pg_event_trigger WHERE evtname LIKE 'clinic\_migrate%' ORDER BY evtname;
SELECT p.oid::regprocedure AS function, has_function_privilege('public', p.oid, 'EXECUTE') AS public_may_call
FROM pg_proc p WHERE p.pronamespace = 'clinic_migrate'::regnamespace
  AND p.proname IN ('capture', 'capture_reverse', 'guard_truncate', 'guard_ddl')
ORDER BY 1::text;
-- a partitioned table made now moves with u1's next move, partitions and all
CREATE TABLE readings (tenant_id text NOT NULL REFERENCES tenants, id integer NOT NULL,
                       at date NOT NULL, PRIMARY KEY (tenant_id, id, at)) PARTITION BY RANGE (at);
CREATE TABLE readings_2026 PARTITION OF readings FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
INSERT INTO readings VALUES ('u1', 1, '2026-05-01'), ('u2', 2, '2026-05-02');
SELECT tableoid::regclass AS partition, id FROM tenant_u1.readings;
SELECT table_name, kind FROM clinic_migrate.plan() WHERE table_name = 'readings'::regclass;
\ir sql/upgrade_finish.psql
