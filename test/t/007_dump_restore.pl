# test/t/007_dump_restore.pl: a database dumped with pg_dump and restored in the middle
# of its moves carries on.
#
# The clinic data set, four tenants: t1 copied and kept in sync (with changes captured
# and not yet replayed), t2 cut over (with writes in its schema to send back), t3 a
# migration job queued (the queue paused, so that it stays queued). pg_dump -Fc, then
# pg_restore into two new databases: whole, and section by section (pre-data, data,
# post-data, as a restore that loads data in parallel or separately runs it). In each
# restored database: status, history and the queue are back; the cut-over guard refuses
# a write to t2's shared rows; capture goes on for t1; the queued job runs; t1 and t3
# validate, cut over and finalize; t2 validates and is rolled back. No OID is left in
# the state that points at the old database's objects.
#
# On 0.2 the state tables came back empty (not marked for pg_dump), the tenant schemas
# and triggers were orphans, and a write to t2's shared rows was accepted.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use lib "$ENV{TESTDIR}/test/t";
use ClinicTest;

my $node = ClinicTest::start_clinic(
	tenants => 4,
	rows => 4000,
	conf => q{
shared_preload_libraries = 'clinic_migrate'
max_worker_processes = 16
clinic_migrate.databases = 'postgres'
clinic_migrate.sync_interval = 100
clinic_migrate.scheduler_interval = 200
});

$node->safe_psql(
	'postgres', q{
CREATE ROLE app LOGIN;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO app;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO app;
});

sub app_psql
{
	my ($db, $sql, %opt) = @_;
	return $node->psql($db, $sql, extra_params => [ '-U', 'app' ], %opt);
}

# validate_migration's mismatching tables, "none of N" when all match
sub mismatches
{
	my ($db, $tenant) = @_;
	return $node->safe_psql(
		$db, qq{
SELECT coalesce(string_agg(table_name, ', ' ORDER BY table_name) FILTER (WHERE match IS NOT TRUE), 'none')
       || ' of ' || count(*)
FROM clinic_migrate.validate_migration('$tenant')});
}

# ---- the source database, mid-move ----
is( $node->safe_psql(
		'postgres', q{
SELECT schema_name FROM clinic_migrate.migrate_tenant('t1');
SELECT schema_name FROM clinic_migrate.migrate_tenant('t2');
SELECT clinic_migrate.sync_now('t2') >= 0;
SELECT schema_name FROM clinic_migrate.cutover('t2');
SELECT clinic_migrate.pause_queue();
SELECT count(*) FROM clinic_migrate.enqueue(ARRAY['t3'], 'migrate');
}),
	"tenant_t1\ntenant_t2\nt\ntenant_t2\nt\n1",
	'source: t1 copied, t2 cut over, a job queued for t3');

# t2's writes land in its schema; reverse capture logs them for the shared tables
is(app_psql(
		'postgres', q{
SELECT clinic_migrate.set_tenant('t2');
UPDATE patients SET notes = 'written in tenant_t2 before the dump' WHERE id = (SELECT min(id) FROM patients);
INSERT INTO patients (tenant_id, first_name, last_name) VALUES ('t2', 'Before', 'Dump');
}),
	0, 'source: t2 writes in its schema');

# t1's shared rows change with the sync worker stopped: the dump holds logged keys
# that no round has replayed yet
$node->safe_psql('postgres', q{ALTER SYSTEM SET clinic_migrate.sync_interval = 600000; SELECT pg_reload_conf()});
$node->safe_psql('postgres', 'SELECT clinic_migrate.sync_now(\'t1\')');
is(app_psql(
		'postgres', q{
UPDATE patients SET notes = 'changed before the dump' WHERE tenant_id = 't1' AND id % 7 = 0;
DELETE FROM appointment_notes WHERE appointment_id IN (SELECT id FROM appointments WHERE tenant_id = 't1' AND id % 5 = 0);
INSERT INTO patients (tenant_id, first_name, last_name) VALUES ('t1', 'Logged', 'Only');
}),
	0, 'source: t1 changes after its last replay');
ok($node->safe_psql('postgres', q{SELECT clinic_migrate.capture_lag('t1') > 0}) eq 't',
	'source: t1 has captured changes pending');

my $dump = "$PostgreSQL::Test::Utils::tmp_check/clinic.dump";
$node->command_ok(
	[ 'pg_dump', '-Fc', '-f', $dump, '-h', $node->host, '-p', $node->port, 'postgres' ],
	'pg_dump -Fc');
$node->safe_psql('postgres', q{ALTER SYSTEM RESET clinic_migrate.sync_interval; SELECT pg_reload_conf()});

# ---- restore: whole, and by sections ----
$node->safe_psql('postgres', 'CREATE DATABASE restored');
$node->command_ok(
	[ 'pg_restore', '--exit-on-error', '-d', 'restored', '-h', $node->host, '-p', $node->port, $dump ],
	'pg_restore, whole');
$node->safe_psql('postgres', 'CREATE DATABASE restored_sections');
for my $section (qw(pre-data data post-data))
{
	$node->command_ok(
		[
			'pg_restore', '--exit-on-error', "--section=$section", '-d', 'restored_sections',
			'-h', $node->host, '-p', $node->port, $dump
		],
		"pg_restore --section=$section");
}

# Before their schedulers start: the state as it was dumped.
for my $db (qw(restored restored_sections))
{
	is( $node->safe_psql(
			$db, q{
SELECT string_agg(tenant_id || ' ' || state, ', ' ORDER BY tenant_id) FROM clinic_migrate.status;
SELECT string_agg(tenant_id || ' ' || action || ' ' || state, ', ' ORDER BY job_id) FROM clinic_migrate.job_queue;
SELECT count(*) > 0 FROM clinic_migrate.runs WHERE tenant_id = 't2' AND action = 'cutover' AND status = 'completed';
SELECT count(*) FROM clinic_migrate.cutovers WHERE tenant_id = 't2' AND outcome = 'done';
SELECT clinic_migrate.capture_lag('t1') > 0;
}),
		"t1 copied, t2 cut_over\nt1 migrate done, t2 migrate done, t2 cutover done, t3 migrate queued\nt\n1\nt",
		"$db: status, queue and history are back");

	# no OID of the old database in the state
	is( $node->safe_psql(
			$db, q{
SELECT count(*) FROM clinic_migrate.tenants t
WHERE (SELECT nspname FROM pg_namespace WHERE oid = t.schema_oid) IS DISTINCT FROM t.schema_name;
SELECT count(*) FROM clinic_migrate.tenant_tables tt
WHERE (SELECT relname FROM pg_class WHERE oid = tt.source_table) IS DISTINCT FROM tt.table_name
   OR (SELECT relname FROM pg_class WHERE oid = tt.target_table) IS DISTINCT FROM tt.table_name;
SELECT count(*) FROM clinic_migrate.capture_logs l
WHERE NOT EXISTS (SELECT FROM pg_class WHERE oid = l.source_table)
   OR NOT EXISTS (SELECT FROM pg_class WHERE oid = l.log_table);
}),
		"0\n0\n0", "$db: every OID in the state names this database's objects");
}

# their schedulers, from the next start
$node->append_conf('postgresql.conf',
	"clinic_migrate.databases = 'postgres, restored, restored_sections'");
$node->restart;

for my $db (qw(restored restored_sections))
{
	# the cut-over guard: t2's shared rows are not to be written
	my ($out, $err) = ('', '');
	app_psql($db, q{UPDATE public.patients SET notes = 'wrong place' WHERE tenant_id = 't2'},
		stdout => \$out, stderr => \$err);
	like($err, qr/tenant "t2" has moved to schema "tenant_t2"/, "$db: the guard refuses a write to t2's shared rows");

	# t1: what was captured before the dump, and what is written now, is replayed
	is(app_psql(
			$db, q{
UPDATE patients SET notes = 'changed after the restore' WHERE tenant_id = 't1' AND id % 11 = 0;
INSERT INTO patients (tenant_id, first_name, last_name) VALUES ('t1', 'After', 'Restore');
}),
		0, "$db: t1 writes after the restore");
	ok( $node->poll_query_until(
			$db, q{SELECT clinic_migrate.sync_now('t1') >= 0 AND clinic_migrate.capture_lag('t1') = 0}),
		"$db: t1's changes are replayed");
	is(mismatches($db, 't1'), 'none of 4', "$db: t1 validates");

	# t2: written in its schema after the restore too, validated, rolled back
	is(app_psql(
			$db, q{
SELECT clinic_migrate.set_tenant('t2');
INSERT INTO patients (tenant_id, first_name, last_name) VALUES ('t2', 'After', 'Restore');
}),
		0, "$db: t2 writes in its schema after the restore");
	$node->safe_psql($db, q{SELECT clinic_migrate.sync_now('t2')});
	is(mismatches($db, 't2'), 'none of 4', "$db: t2 validates");
	is( $node->safe_psql(
			$db, q{
SELECT clinic_migrate.rollback_tenant('t2');
SELECT count(*) FROM public.patients WHERE tenant_id = 't2' AND last_name IN ('Dump', 'Restore');
SELECT notes FROM public.patients WHERE tenant_id = 't2' AND notes LIKE 'written in tenant_t2%';
}),
		"t\n2\nwritten in tenant_t2 before the dump",
		"$db: t2 rolls back with what was written in its schema before and after the dump");

	# t3: the queued job runs (a restored queue is not paused: queue_control is not dumped)
	ok( $node->poll_query_until(
			$db, q{SELECT state FROM clinic_migrate.job_queue WHERE tenant_id = 't3'}, 'done'),
		"$db: t3's queued job runs");
	is(mismatches($db, 't3'), 'none of 4', "$db: t3 validates");

	# t1 and t3 go on to cutover and finalize
	is( $node->safe_psql(
			$db, q{
SELECT schema_name FROM clinic_migrate.cutover('t1');
SELECT schema_name FROM clinic_migrate.cutover('t3');
SELECT schema_name FROM clinic_migrate.finalize_tenant('t1');
SELECT schema_name FROM clinic_migrate.finalize_tenant('t3');
SELECT string_agg(tenant_id || ' ' || state, ', ' ORDER BY tenant_id) FROM clinic_migrate.status;
SELECT count(*) FROM public.patients WHERE tenant_id IN ('t1', 't3');
SELECT count(*) FROM tenant_t1.patients WHERE last_name IN ('Only', 'Restore');
}),
		"tenant_t1\ntenant_t3\ntenant_t1\ntenant_t3\nt1 finalized, t3 finalized\n0\n2",
		"$db: t1 and t3 are cut over and finalized");
}

# the source database never noticed
is(mismatches('postgres', 't1'), 'none of 4', 'source: t1 still validates');

$node->stop;
done_testing();
