# test/t/009_fan_out.pl: schema changes after the move, by fan_out. Three tenants
# finalized in schemas of their own, one copied (its copy follows the shared tables
# through the event trigger), one that never moved. The tables' owner (an ordinary
# role, with EXECUTE on fan_out) deploys version v1: the shared tables at once, then
# a schema_change job per finalized tenant, worked by the scheduler's two workers, as
# the owner, each with search_path set to its tenant's schema. A tenant whose schema
# was changed by hand fails v2 and keeps v1 (alerts() says so), refuses v3 until it
# has v2, and catches up when fan_out is called again after the fix.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('main');
$node->init;
$node->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'clinic_migrate'
clinic_migrate.databases = 'postgres'
clinic_migrate.max_workers = 2
clinic_migrate.scheduler_interval = 200
clinic_migrate.sync_interval = 200
max_worker_processes = 16
});
$node->start;

$node->safe_psql(
	'postgres', q{
CREATE EXTENSION clinic_migrate;
CREATE ROLE app_owner LOGIN;
GRANT CREATE ON SCHEMA public TO app_owner;
SET ROLE app_owner;
CREATE TABLE tenants (tenant_id text PRIMARY KEY);
CREATE TABLE patients (tenant_id text NOT NULL REFERENCES tenants, id integer NOT NULL,
                       name text, PRIMARY KEY (tenant_id, id));
CREATE TABLE visits (id serial PRIMARY KEY, tenant_id text NOT NULL, patient_id integer NOT NULL,
                     FOREIGN KEY (tenant_id, patient_id) REFERENCES patients);
CREATE INDEX ON visits (tenant_id, id);
INSERT INTO tenants SELECT 't' || i FROM generate_series(1, 5) i;
INSERT INTO patients SELECT 't' || (1 + i % 5), i, 'patient ' || i FROM generate_series(1, 100) i;
INSERT INTO visits (tenant_id, patient_id) SELECT tenant_id, id FROM patients;
RESET ROLE;
GRANT USAGE ON SCHEMA clinic_migrate TO app_owner;
GRANT EXECUTE ON FUNCTION clinic_migrate.fan_out(text, text) TO app_owner;
});
for my $t (qw(t1 t2 t3))
{
	$node->safe_psql('postgres', qq{
SELECT schema_name FROM clinic_migrate.migrate_tenant('$t');
SELECT schema_name FROM clinic_migrate.cutover('$t');
SELECT schema_name FROM clinic_migrate.finalize_tenant('$t');
});
}
$node->safe_psql('postgres', q{SELECT schema_name FROM clinic_migrate.migrate_tenant('t4')});
is( $node->safe_psql('postgres', q{SELECT string_agg(tenant_id || ' ' || state, ', ' ORDER BY tenant_id) FROM clinic_migrate.tenants}),
	't1 finalized, t2 finalized, t3 finalized, t4 copied', 'three tenants finalized, one copied');

sub as_owner
{
	my ($sql) = @_;
	my ($out, $err) = ('', '');
	$node->psql('postgres', $sql, stdout => \$out, stderr => \$err, extra_params => [ '-U', 'app_owner' ]);
	return ($out, $err);
}

sub wait_jobs
{
	my ($version) = @_;
	return $node->poll_query_until('postgres',
		qq{SELECT count(*) = 0 FROM clinic_migrate.job_queue
           WHERE schema_version = '$version' AND state IN ('queued', 'running')});
}

# the columns named phone, by schema
my $phones = q{SELECT string_agg(n.nspname, ' ' ORDER BY n.nspname) FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE a.attname = 'phone' AND NOT a.attisdropped AND c.relkind = 'r'};

# v1: a column and an index
my ($out, $err) = as_owner(q{SELECT clinic_migrate.fan_out('v1', 'ALTER TABLE patients ADD COLUMN phone text; CREATE INDEX patients_phone ON patients (phone)')});
is($out, '3', 'fan_out v1 queues a job per finalized tenant') or diag($err);
ok(wait_jobs('v1'), 'the v1 jobs end');
is($node->safe_psql('postgres', $phones), 'public tenant_t1 tenant_t2 tenant_t3 tenant_t4',
	'every schema has the column: the shared table, the finalized ones, the copy of t4');
is( $node->safe_psql('postgres',
		q{SELECT count(*) FROM pg_class WHERE relname = 'patients_phone' AND relkind = 'i'}),
	'5', 'and the index');
is( $node->safe_psql('postgres',
		q{SELECT string_agg(j.tenant_id || ' ' || j.state || ' ' || j.enqueued_by, ', ' ORDER BY j.tenant_id)
          FROM clinic_migrate.job_queue j WHERE schema_version = 'v1'}),
	't1 done app_owner, t2 done app_owner, t3 done app_owner', 'run as the owner who queued them');
is( $node->safe_psql('postgres',
		q{SELECT string_agg(tenant_id || ' ' || coalesce(schema_version, '-'), ', ' ORDER BY tenant_id) FROM clinic_migrate.status}),
	't1 v1, t2 v1, t3 v1, t4 v1', 'status: every tenant at v1');

# a tenant's schema changed by hand: v2 fails there, the others take it
$node->safe_psql('postgres', q{ALTER TABLE tenant_t2.visits RENAME TO visits_by_hand});
($out, $err) = as_owner(q{SELECT clinic_migrate.fan_out('v2', 'ALTER TABLE visits ADD COLUMN note text')});
is($out, '3', 'fan_out v2') or diag($err);
ok(wait_jobs('v2'), 'the v2 jobs end');
is( $node->safe_psql('postgres',
		q{SELECT string_agg(tenant_id || ' ' || state || coalesce(' ' || sqlstate, ''), ', ' ORDER BY tenant_id)
          FROM clinic_migrate.job_queue WHERE schema_version = 'v2'}),
	't1 done, t2 failed 42P01, t3 done', 't2 fails v2 (no table visits), the others take it');
is( $node->safe_psql('postgres',
		q{SELECT string_agg(tenant_id || ' ' || schema_version, ', ' ORDER BY tenant_id) FROM clinic_migrate.status}),
	't1 v2, t2 v1, t3 v2, t4 v2', 't2 stays at v1');
like($node->safe_psql('postgres', q{SELECT string_agg(tenant_id || ': ' || message, E'\n') FROM clinic_migrate.alerts()}),
	qr/^t2: .*visits/m, 'alerts() shows t2');

# v3 waits for v2 in t2; after the fix, fan_out again brings t2 to v3
($out, $err) = as_owner(q{SELECT clinic_migrate.fan_out('v3', 'ALTER TABLE patients ADD COLUMN email text')});
ok(wait_jobs('v3'), 'the v3 jobs end');
is( $node->safe_psql('postgres',
		q{SELECT state || ' ' || sqlstate || ' ' || error FROM clinic_migrate.job_queue
          WHERE schema_version = 'v3' AND tenant_id = 't2'}),
	'failed 55000 tenant "t2" lacks schema version "v2", which comes before "v3"',
	't2 refuses v3 before v2');
$node->safe_psql('postgres', q{ALTER TABLE tenant_t2.visits_by_hand RENAME TO visits});
($out, $err) = as_owner(q{SELECT clinic_migrate.fan_out('v2', NULL)});
is($out, '1', 'fan_out v2 again queues t2 only') or diag($err);
ok(wait_jobs('v2'), 't2 takes v2');
($out, $err) = as_owner(q{SELECT clinic_migrate.fan_out('v3')});
is($out, '1', 'then v3') or diag($err);
ok(wait_jobs('v3'), 't2 takes v3');
is( $node->safe_psql('postgres',
		q{SELECT string_agg(tenant_id || ' ' || schema_version, ', ' ORDER BY tenant_id) FROM clinic_migrate.status}),
	't1 v3, t2 v3, t3 v3, t4 v3', 'every tenant at v3');
is( $node->safe_psql('postgres',
		q{SELECT count(*) FROM pg_attribute WHERE attname IN ('note', 'email') AND NOT attisdropped}),
	'10', 'note on the five visits, email on the five patients');

# the copied tenant still validates, and finishes its move with the new shape
is( $node->safe_psql('postgres',
		q{SELECT bool_and(match) FROM clinic_migrate.validate_migration('t4')}),
	't', 't4 validates');
($out, $err) = as_owner(q{SELECT clinic_migrate.fan_out('v3', 'ALTER TABLE patients DROP COLUMN email')});
like($err, qr/schema version "v3" exists with another change/, 'a version is one change');

$node->stop;
done_testing();
