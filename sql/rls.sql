--
-- rls: row level security for the tenants that stay in the shared tables
-- (enable_tenant_rls, disable_tenant_rls, tenant_rls_report), and which
-- tenants to move (candidates, enqueue_candidates), in a database of its own.
--
SELECT current_database() AS regress_db \gset
SET client_min_messages = warning;
CREATE DATABASE regress_clinic_rls;
\c regress_clinic_rls
CREATE EXTENSION clinic_migrate;
RESET client_min_messages;
SET clinic_migrate.progress_interval = 0;
\pset null '(null)'

-- integer tenants; accounts has the tenant column, entries reaches it in one
-- foreign key hop, lines in two; ledgers already has row level security and a
-- policy of the application's own; branches is owned by the application role
CREATE ROLE regress_rls_app;
CREATE ROLE regress_rls_report;
CREATE ROLE regress_rls_other;
CREATE TABLE tenants (tenant_id integer PRIMARY KEY, name text NOT NULL);
INSERT INTO tenants SELECT i, 'Clinic ' || i FROM generate_series(1, 4) i;
CREATE TABLE accounts (tenant_id integer NOT NULL REFERENCES tenants, id integer NOT NULL,
                       owner text, PRIMARY KEY (tenant_id, id));
CREATE TABLE entries (id serial PRIMARY KEY, tenant_id_of integer, account_id integer,
                      amount integer NOT NULL,
                      FOREIGN KEY (tenant_id_of, account_id) REFERENCES accounts);
CREATE INDEX ON entries (tenant_id_of, account_id);
CREATE TABLE lines (id serial PRIMARY KEY, entry_id integer REFERENCES entries, memo text);
CREATE INDEX ON lines (entry_id);
CREATE TABLE ledgers (tenant_id integer NOT NULL, id integer NOT NULL, closed boolean NOT NULL DEFAULT false,
                      PRIMARY KEY (tenant_id, id));
ALTER TABLE ledgers ENABLE ROW LEVEL SECURITY;
CREATE POLICY open_ledgers ON ledgers USING (NOT closed);
CREATE TABLE branches (tenant_id integer NOT NULL, id integer NOT NULL, PRIMARY KEY (tenant_id, id));
INSERT INTO accounts SELECT 1 + i % 4, i, 'owner ' || i FROM generate_series(1, 40) i;
INSERT INTO accounts SELECT 1, i, 'big ' || i FROM generate_series(41, 400) i;
INSERT INTO entries (tenant_id_of, account_id, amount) SELECT tenant_id, id, id * 10 FROM accounts;
INSERT INTO lines (entry_id, memo) SELECT id, 'memo ' || id FROM entries;
INSERT INTO ledgers SELECT 1 + i % 4, i, i % 5 = 0 FROM generate_series(1, 20) i;
INSERT INTO branches SELECT 1 + i % 4, i FROM generate_series(1, 8) i;
GRANT USAGE ON SCHEMA public TO regress_rls_app, regress_rls_report;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO regress_rls_app, regress_rls_report;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO regress_rls_app;
ALTER TABLE branches OWNER TO regress_rls_app;

-- refused before anything changes: bad arguments, and a child table whose
-- parents have another owner
SELECT clinic_migrate.enable_tenant_rls(NULL);
SELECT clinic_migrate.enable_tenant_rls('{}');
SELECT clinic_migrate.enable_tenant_rls(ARRAY['regress_rls_app', NULL]);
SELECT clinic_migrate.enable_tenant_rls(ARRAY['regress_no_such_role']);
SELECT clinic_migrate.enable_tenant_rls(ARRAY['regress_rls_app'], 'audit');
SELECT clinic_migrate.enable_tenant_rls(ARRAY['regress_rls_app'], NULL);
ALTER TABLE lines OWNER TO regress_rls_other;
\set VERBOSITY default
SELECT clinic_migrate.enable_tenant_rls(ARRAY['regress_rls_app']);
\set VERBOSITY terse
SELECT count(*) AS policies FROM pg_policy WHERE polname LIKE 'clinic\_migrate\_%';
ALTER TABLE lines OWNER TO CURRENT_USER;
-- a policy of the application's own with clinic_migrate's name
CREATE POLICY clinic_migrate_tenant ON ledgers USING (true);
SELECT clinic_migrate.enable_tenant_rls(ARRAY['regress_rls_app']);
DROP POLICY clinic_migrate_tenant ON ledgers;
SELECT count(*) AS recorded FROM clinic_migrate.tenant_rls;
-- not the owner of the tables: PostgreSQL's own refusal, nothing changed
SET ROLE regress_rls_other;
SELECT clinic_migrate.enable_tenant_rls(ARRAY['regress_rls_app']);
RESET ROLE;
GRANT USAGE ON SCHEMA clinic_migrate TO regress_rls_other;
GRANT EXECUTE ON FUNCTION clinic_migrate.enable_tenant_rls(name[], text) TO regress_rls_other;
GRANT SELECT ON ALL TABLES IN SCHEMA clinic_migrate TO regress_rls_other;
SET ROLE regress_rls_other;
SELECT clinic_migrate.enable_tenant_rls(ARRAY['regress_rls_app']);
RESET ROLE;
SELECT count(*) AS recorded FROM clinic_migrate.tenant_rls;

-- permissive first: every row still visible, what enforcing would hide counted
\set VERBOSITY default
SELECT clinic_migrate.enable_tenant_rls(ARRAY['regress_rls_app', 'postgres'], 'permissive');
\set VERBOSITY terse
SELECT clinic_migrate.enable_tenant_rls(ARRAY['regress_rls_app'], 'permissive') AS tables;
SELECT table_name, mode, roles, rls_before, force_before, enabled_by = session_user AS by_me
FROM clinic_migrate.tenant_rls ORDER BY table_name::text;
SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity,
       array_agg(p.polname || CASE WHEN p.polpermissive THEN ' permissive ' ELSE ' restrictive ' END
                 || array_to_string(ARRAY(SELECT CASE WHEN r = 0 THEN 'public' ELSE pg_get_userbyid(r) END
                                          FROM unnest(p.polroles) r), ',')
                 ORDER BY p.polname) AS policies
FROM pg_class c LEFT JOIN pg_policy p ON p.polrelid = c.oid
WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r'
GROUP BY 1, 2, 3 ORDER BY 1;
-- the policies are the tables' own, as \d shows them
SELECT pg_get_expr(polqual, polrelid) FROM pg_policy
WHERE polrelid = 'lines'::regclass AND polname = 'clinic_migrate_tenant';
SET ROLE regress_rls_app;
SELECT count(*) AS accounts_seen FROM accounts;
BEGIN;
SELECT clinic_migrate.set_tenant('2', true) IS NOT NULL AS routed;
SELECT count(*) AS entries_seen FROM entries;
SELECT count(*) AS lines_of_tenant_2 FROM lines l JOIN entries e ON e.id = l.entry_id WHERE e.tenant_id_of = 2;
COMMIT;
RESET ROLE;
SET ROLE regress_rls_report;
SELECT count(*) AS other_role_sees FROM accounts;
RESET ROLE;
SELECT role, table_name, rows_of_other_tenants, rows_without_tenant, last_seen <= now() AS seen
FROM clinic_migrate.tenant_rls_report() ORDER BY role, table_name::text;

-- enforce: a role's session sees and writes only its tenant's rows
SELECT clinic_migrate.enable_tenant_rls(ARRAY['regress_rls_app']) AS tables;
SELECT count(*) AS counters_reset FROM clinic_migrate.tenant_rls_report();
SELECT table_name, mode FROM clinic_migrate.tenant_rls ORDER BY table_name::text;
SET ROLE regress_rls_app;
SELECT count(*) AS no_tenant_no_rows FROM accounts;
SELECT count(*) AS no_tenant_no_rows FROM lines;
BEGIN;
SELECT clinic_migrate.set_tenant('3', true) IS NOT NULL AS routed;
SELECT DISTINCT tenant_id FROM accounts;
SELECT count(*) AS entries, count(DISTINCT tenant_id_of) AS tenants FROM entries;
SELECT count(*) AS lines FROM lines;
SELECT DISTINCT tenant_id FROM branches;
SELECT tenant_id, id, closed FROM ledgers ORDER BY id;
UPDATE accounts SET owner = 'changed' WHERE id IN (1, 2, 3);
SELECT tenant_id, id, owner FROM accounts WHERE owner = 'changed';
INSERT INTO entries (tenant_id_of, account_id, amount) VALUES (3, 2, 1);
SAVEPOINT s;
INSERT INTO accounts VALUES (4, 1000, 'not mine');
ROLLBACK TO s;
INSERT INTO entries (tenant_id_of, account_id, amount) VALUES (4, 3, 1);
ROLLBACK TO s;
UPDATE accounts SET tenant_id = 4 WHERE id = 2;
ROLLBACK;
-- a tenant id that is not an integer: an error, not every row
BEGIN;
SELECT clinic_migrate.set_tenant('x', true) IS NOT NULL AS routed;
SELECT count(*) FROM accounts;
ROLLBACK;
RESET ROLE;
SELECT count(*) AS owner_sees_all FROM accounts;

-- a table that leaves the plan loses its policies when enabled again
SELECT clinic_migrate.exclude_table('ledgers', 'kept shared, no tenant policy');
SELECT clinic_migrate.enable_tenant_rls(ARRAY['regress_rls_app']) AS tables;
SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity, array_agg(p.polname ORDER BY p.polname) AS policies
FROM pg_class c LEFT JOIN pg_policy p ON p.polrelid = c.oid
WHERE c.oid = 'ledgers'::regclass GROUP BY 1, 2, 3;
SELECT clinic_migrate.include_table('ledgers');
SELECT clinic_migrate.enable_tenant_rls(ARRAY['regress_rls_app']) AS tables;

-- a tenant moves while the policies hold: its copy is whole, the clone takes
-- the tables' own policies (open_ledgers), not clinic_migrate's
SELECT schema_name, tables, rows_copied FROM clinic_migrate.migrate_tenant('2');
SELECT table_name, source_rows, target_rows, match FROM clinic_migrate.validate_migration('2')
ORDER BY table_name;
SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity, array_agg(p.polname ORDER BY p.polname) AS policies
FROM pg_class c LEFT JOIN pg_policy p ON p.polrelid = c.oid
WHERE c.relnamespace = 'tenant_2'::regnamespace AND c.relkind = 'r' GROUP BY 1, 2, 3 ORDER BY 1;
SELECT schema_name FROM clinic_migrate.cutover('2');
SET ROLE regress_rls_app;
BEGIN;
SELECT clinic_migrate.set_tenant('2', true) AS routed_to;
SELECT count(*) AS accounts_in_schema FROM accounts;
SELECT count(*) AS lines_in_schema FROM lines;
COMMIT;
BEGIN;
SELECT clinic_migrate.set_tenant('1', true) AS routed_to;
SELECT count(*) AS tenant_2_rows_seen_by_1 FROM public.accounts WHERE tenant_id = 2;
COMMIT;
RESET ROLE;

-- which tenants to move: estimates from the statistics, nothing counted
ANALYZE;
SELECT rank, tenant, state, estimated_rows, estimated_bytes > 0 AS has_bytes, from_statistics
FROM clinic_migrate.candidates ORDER BY rank, tenant;
SELECT count(*) AS jobs FROM clinic_migrate.enqueue_candidates(1000000, 5);
SELECT count(*) AS jobs FROM clinic_migrate.enqueue_candidates(50, 0);
SELECT count(*) AS jobs FROM clinic_migrate.enqueue_candidates(50, 2);
SELECT tenant_id, action, state FROM clinic_migrate.job_queue ORDER BY job_id;
-- queued already: not again
SELECT count(*) AS jobs FROM clinic_migrate.enqueue_candidates(50, 2);
SELECT clinic_migrate.enqueue_candidates(NULL, 2);

-- a role with the owner's rights is the owner for PostgreSQL: FORCE holds it
CREATE ROLE regress_rls_web IN ROLE regress_rls_app;
SELECT clinic_migrate.enable_tenant_rls(ARRAY['regress_rls_web']) AS tables;
SELECT relname, relforcerowsecurity FROM pg_class
WHERE relname IN ('accounts', 'branches') AND relnamespace = 'public'::regnamespace ORDER BY 1;
SET ROLE regress_rls_web;
SELECT count(*) AS branches_without_tenant FROM branches;
RESET ROLE;
SELECT clinic_migrate.enable_tenant_rls(ARRAY['regress_rls_app']) AS tables;
SELECT relname, relforcerowsecurity FROM pg_class
WHERE relname IN ('accounts', 'branches') AND relnamespace = 'public'::regnamespace ORDER BY 1;

-- the policies of another source schema are its own: enabling there leaves public's
CREATE SCHEMA other;
CREATE TABLE other.tenants (tenant_id integer PRIMARY KEY);
CREATE TABLE other.items (tenant_id integer NOT NULL REFERENCES other.tenants, id integer PRIMARY KEY);
SET clinic_migrate.source_schema = other;
SELECT clinic_migrate.enable_tenant_rls(ARRAY['regress_rls_app'], 'permissive') AS tables;
SELECT source_schema, count(*) AS tables, min(mode) AS mode FROM clinic_migrate.tenant_rls GROUP BY 1 ORDER BY 1;
SELECT clinic_migrate.disable_tenant_rls() AS tables;
RESET clinic_migrate.source_schema;
SELECT source_schema, count(*) AS tables, min(mode) AS mode FROM clinic_migrate.tenant_rls GROUP BY 1 ORDER BY 1;
DROP SCHEMA other CASCADE;

-- a child whose key names the tenant in another collation than its root's:
-- 'T3' references 't3' case-insensitively, so the policy asks the parent
CREATE COLLATION regress_ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
CREATE SCHEMA ci;
CREATE TABLE ci.tenants (tenant_id text COLLATE regress_ci PRIMARY KEY);
CREATE TABLE ci.accounts (tenant_id text COLLATE regress_ci NOT NULL REFERENCES ci.tenants,
                          id integer NOT NULL, PRIMARY KEY (tenant_id, id));
CREATE TABLE ci.entries (id integer PRIMARY KEY, account_tenant text, account_id integer,
                         FOREIGN KEY (account_tenant, account_id) REFERENCES ci.accounts);
INSERT INTO ci.tenants VALUES ('t3'), ('t4');
INSERT INTO ci.accounts VALUES ('t3', 1), ('t4', 2);
INSERT INTO ci.entries VALUES (1, 'T3', 1), (2, 't4', 2);
GRANT USAGE ON SCHEMA ci TO regress_rls_app;
GRANT SELECT ON ALL TABLES IN SCHEMA ci TO regress_rls_app;
SET clinic_migrate.source_schema = ci;
SELECT clinic_migrate.enable_tenant_rls(ARRAY['regress_rls_app']) AS tables;
SET ROLE regress_rls_app;
BEGIN;
SELECT clinic_migrate.set_tenant('t3', true) IS NOT NULL AS routed;
SELECT id, account_tenant FROM ci.entries ORDER BY id;
ROLLBACK;
RESET ROLE;
SELECT clinic_migrate.disable_tenant_rls() AS tables;
RESET clinic_migrate.source_schema;
DROP SCHEMA ci CASCADE;
DROP COLLATION regress_ci;

-- the audit counts only tables that carry the tenant policy: made-up ones are not kept
SELECT count(*) AS admitted FROM generate_series(1, 5000) g
WHERE clinic_migrate.tenant_rls_audit(g::oid::regclass);
SELECT count(*) AS counters FROM clinic_migrate.tenant_rls_report();

-- the estimates show the tenant column's values: only to who may read it
GRANT USAGE ON SCHEMA clinic_migrate TO regress_rls_report;
GRANT EXECUTE ON FUNCTION clinic_migrate.tenant_estimates() TO regress_rls_report;
GRANT SELECT ON ALL TABLES IN SCHEMA clinic_migrate TO regress_rls_report;
REVOKE SELECT ON branches FROM regress_rls_report;
SET ROLE regress_rls_report;
\set VERBOSITY default
SELECT count(*) FROM clinic_migrate.tenant_estimates();
\set VERBOSITY terse
RESET ROLE;

-- disable: every table as it was before, ledgers with its own policy
SELECT clinic_migrate.disable_tenant_rls() AS tables;
SELECT clinic_migrate.disable_tenant_rls() AS tables;
SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity, array_agg(p.polname ORDER BY p.polname) AS policies
FROM pg_class c LEFT JOIN pg_policy p ON p.polrelid = c.oid
WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r'
GROUP BY 1, 2, 3 ORDER BY 1;
SELECT count(*) AS recorded FROM clinic_migrate.tenant_rls;

\c :regress_db
SET client_min_messages = warning;
DROP DATABASE regress_clinic_rls WITH (FORCE);
DROP ROLE regress_rls_web, regress_rls_app, regress_rls_report, regress_rls_other;
