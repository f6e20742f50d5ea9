--
-- upgrade_0_5: a tenant moved half-way under version 0.5 finishes its move after
-- ALTER EXTENSION clinic_migrate UPDATE (0.5 -> 0.6), in a database of its own.
--
\set from '0.5'
\ir sql/upgrade_start.psql
-- what 0.6 added: the event triggers, their functions not open to PUBLIC
SELECT evtname, evtevent, evtenabled, evttags, evtfoid::regprocedure,
       has_function_privilege('public', evtfoid, 'EXECUTE') AS public_may_call
FROM pg_event_trigger WHERE evtname LIKE 'clinic\_migrate%' ORDER BY evtname;
-- the deploy that reached u1 half-way: a new table, which its copy gets now,
-- and an index dropped from its copy too
CREATE TABLE invoices (tenant_id text NOT NULL REFERENCES tenants, id bigserial,
                       amount integer NOT NULL, PRIMARY KEY (tenant_id, id));
INSERT INTO invoices (tenant_id, amount) VALUES ('u1', 10), ('u2', 20);
DROP INDEX rooms_tenant_id_id_idx;
SELECT tenant_id, table_name, copied FROM clinic_migrate.tenant_tables WHERE table_name = 'invoices';
SELECT count(*) AS rooms_indexes_left FROM pg_class WHERE relname = 'rooms_tenant_id_id_idx';
SELECT clinic_migrate.sync_now('u1') >= 0 AS replayed;
SELECT tenant_id, amount FROM tenant_u1.invoices;
\ir sql/upgrade_finish.psql
