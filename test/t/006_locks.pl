# test/t/006_locks.pl: no step of a migration makes an application transaction fail.
#
# 1. The interleaving that deadlocked on 0.1: an application transaction holds ROW
#    EXCLUSIVE on one planned table (appointments) while the migration of another
#    tenant installs its capture triggers, then writes a second planned table
#    (patients). 0.1 created the triggers one table at a time and kept the locks of
#    the tables done while it waited for the next, so the application waited for the
#    migration while the migration waited for it, and the deadlock detector killed the
#    application's transaction. Now the tables are locked all at once with a short
#    lock_timeout; an attempt that times out gives every lock back.
# 2. pgbench's own TPC-B tables (pgbench -i --foreign-keys, tenant column bid, no
#    registry, pgbench_history excluded for want of a key) and its built-in tpcb-like
#    script, 4 clients, no retries, as an application role: branch 3 migrates, is
#    validated, cut over (pgbench stopped: tpcb-like does not route) and rolled back,
#    with no failed transaction.
# 4. An idle transaction older than a tenant's capture: the copy waits for it at most
#    clinic_migrate.lock_retry_time, then fails with 55P03 naming it; then resumes.
# All run as the application role "app", with the README's grants for one.

use strict;
use warnings;

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use lib "$ENV{TESTDIR}/test/t";
use ClinicTest;

my $node = ClinicTest::start_clinic(
	tenants => 4,
	rows => 8000,
	conf => q{
shared_preload_libraries = 'clinic_migrate'
max_worker_processes = 16
clinic_migrate.sync_interval = 100
deadlock_timeout = 1s
log_lock_waits = on
});
$node->safe_psql(
	'postgres', q{
CREATE ROLE app LOGIN;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO app;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO app;
});

# ---- 1. the deadlock interleaving ----
{
	my $app = $node->background_psql('postgres', extra_params => [ '-U', 'app' ]);
	$app->query_safe('BEGIN');
	$app->query_safe(
		q{UPDATE appointments SET status = status WHERE id = (SELECT min(id) FROM appointments WHERE tenant_id = 't2')});

	my %m = (stdout => '', stderr => '');
	$m{h} = IPC::Run::start(
		[
			'psql', '-XAtq', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres'),
			'-c', q{SELECT schema_name FROM clinic_migrate.migrate_tenant('t1')}
		],
		'<', \undef, '>', \$m{stdout}, '2>', \$m{stderr},
		IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));

	# Until the migration's worker has asked for a lock the application holds.
	ok( ClinicTest::poll(
			q{
SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_stat_activity a USING (pid)
               WHERE a.backend_type = 'clinic_migrate' AND NOT l.granted AND l.locktype = 'relation')}),
		'deadlock: the worker waits for a table the application holds');

	# The application writes another planned table, with a statement_timeout so that
	# a wait behind the migration shows as a failure rather than a hang.
	my ($out, $err) = ('', '');
	$app->query_safe("SET statement_timeout = '20s'");
	my $res = $app->query(
		q{UPDATE patients SET notes = 'second table' WHERE id = (SELECT min(id) FROM patients WHERE tenant_id = 't2')});
	is($app->{stderr}, '', 'deadlock: the application\'s second write succeeds (no deadlock, no timeout)');
	$app->{stderr} = '';
	$app->query_safe('COMMIT');
	$app->quit;

	my $ok = eval { $m{h}->finish; };
	ok($ok, 'deadlock: the migration finishes') or diag("migrate: $@ $m{stderr}");
	like($m{stdout}, qr/^tenant_t1$/m, 'deadlock: t1 is migrated');
	like(ClinicTest::validate_mismatches('t1'), qr/^none of 4$/, 'deadlock: t1 validates');
	unlike(slurp_file($node->logfile), qr/deadlock detected/, 'deadlock: the server log has no deadlock');
}

# ---- 3. writers that take the tenant's tables child to parent, while finalize locks them ----
# finalize_tenant drops its triggers on every table of the tenant, so it locks them all
# at once. It asks for them in the plan's order, parents first; these writers take them
# the other way round (as a foreign key check does: the child's row, then the parent).
# Holding the parents while waiting for a child that such a writer holds is a cycle
# that only our lock_timeout breaks, and on 0.2 as first shipped the next attempt
# asked in the same order and met the same cycle: with three writers always mid-way,
# finalize gave up after lock_retry_time. Now the table an attempt gave up on is
# asked for first next time.
{
	$node->safe_psql(
		'postgres', q{
SELECT schema_name FROM clinic_migrate.migrate_tenant('t3');
SELECT clinic_migrate.sync_now('t3') >= 0;
SELECT schema_name FROM clinic_migrate.cutover('t3');
});
	my ($maxn, $maxa, $maxp, $maxs) = split /\|/, $node->safe_psql(
		'postgres', q{
SELECT (SELECT max(id) FROM tenant_t3.appointment_notes), (SELECT max(id) FROM tenant_t3.appointments),
       (SELECT max(id) FROM tenant_t3.patients), (SELECT max(staff_no) FROM tenant_t3.staff)});
	my $script = "$PostgreSQL::Test::Utils::tmp_check/006_child_first.sql";
	PostgreSQL::Test::Utils::append_to_file(
		$script, qq{
\\set n random(1, $maxn)
\\set a random(1, $maxa)
\\set p random(1, $maxp)
\\set s random(1, $maxs)
BEGIN;
SELECT clinic_migrate.set_tenant('t3', true);
UPDATE appointment_notes SET body = body WHERE id = (SELECT min(id) FROM appointment_notes WHERE id >= :n);
UPDATE appointments SET status = status WHERE id = (SELECT min(id) FROM appointments WHERE id >= :a);
UPDATE patients SET balance = balance WHERE id = (SELECT min(id) FROM patients WHERE id >= :p);
UPDATE staff SET name = name WHERE staff_no = (SELECT min(staff_no) FROM staff WHERE staff_no >= :s);
END;
});
	my %b = (out => '', err => '');
	$b{h} = IPC::Run::start(
		[
			'pgbench', '-n', '-c', '3', '-j', '3', '-T', '15', '-h', $node->host, '-p', $node->port,
			'-U', 'app', '-f', $script, 'postgres'
		],
		'<', \undef, '>', \$b{out}, '2>', \$b{err},
		IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
	ok( ClinicTest::poll(
			q{SELECT count(*) >= 3 FROM pg_stat_activity WHERE usename = 'app' AND xact_start IS NOT NULL}),
		'child first: 3 writers write t3');
	my ($out, $err) = ('', '');
	is( $node->psql(
			'postgres',
			q{SET clinic_migrate.lock_retry_time = '8s';
SELECT count(*) FROM clinic_migrate.finalize_tenant('t3')},
			stdout => \$out, stderr => \$err, on_error_stop => 1),
		0, 'child first: finalize locks the tables the writers take the other way round')
	  or diag($err);
	my $ok = eval { $b{h}->finish; };
	ok($ok, 'child first: pgbench exits with 0') or diag("pgbench: $@\n$b{out}\n$b{err}");
	like($b{out}, qr/^number of failed transactions: 0 /m, 'child first: no writer\'s transaction failed')
	  or diag($b{out} . $b{err});
	is($node->safe_psql('postgres', q{SELECT state FROM clinic_migrate.tenants WHERE tenant_id = 't3'}),
		'finalized', 'child first: t3 is finalized');
}

# ---- 4. an idle transaction older than the capture: a bounded wait, then 55P03 ----
# A copy must wait for every transaction that may have written the tenant's rows
# before its capture began. Behind one left idle in transaction it waits at most
# clinic_migrate.lock_retry_time, then fails with 55P03 naming the session (0.2
# waited for ever); the tenant is failed, its writes still captured; run again once
# that transaction has ended, the copy resumes, and the idle transaction's write is
# in it.
{
	my $app = $node->background_psql('postgres', extra_params => [ '-U', 'app' ]);
	$app->query_safe('BEGIN');
	$app->query_safe(
		q{UPDATE patients SET notes = 'idle secret' WHERE id = (SELECT min(id) FROM patients WHERE tenant_id = 't4')});
	my $app_pid = $node->safe_psql('postgres',
		q{SELECT pid FROM pg_stat_activity WHERE usename = 'app' AND state = 'idle in transaction'});

	my ($out, $err, $timed_out) = ('', '', 0);
	my $started = time();
	my $rc = $node->psql('postgres',
		q{SET clinic_migrate.lock_retry_time = '2s'; SELECT schema_name FROM clinic_migrate.migrate_tenant('t4')},
		stdout => \$out, stderr => \$err, timeout => 60, timed_out => \$timed_out,
		extra_params => [ '-v', 'VERBOSITY=verbose' ]);
	my $waited = time() - $started;
	ok(!$timed_out, 'idle writer: migrate_tenant does not wait for ever');
	isnt($rc, 0, 'idle writer: migrate_tenant gives up');
	like($err, qr/ERROR:  55P03: /, 'idle writer: with SQLSTATE 55P03');
	like($err, qr/pid $app_pid\b/, 'idle writer: naming the idle session in its detail');
	unlike($err, qr/idle secret/, 'idle writer: but not its statement, which is kept in runs and job_queue');
	like($err, qr/HINT: .*migrate_tenant/, 'idle writer: with a hint');
	ok($waited < 30, "idle writer: within lock_retry_time, not forever ($waited s)");
	is( $node->safe_psql(
			'postgres', q{
SELECT state, last_error LIKE 'a transaction that began before the capture is still open%',
       clinic_migrate.capturing('t4')
FROM clinic_migrate.tenants WHERE tenant_id = 't4'}),
		'failed|t|t', 'idle writer: t4 is failed with the error, and still captured, to be resumed');

	# A cancelled caller stops its worker while it waits, at once: the tenant is free.
	my %m = (stdout => '', stderr => '');
	$m{h} = IPC::Run::start(
		[
			'psql', '-XAtq', '-d', $node->connstr('postgres'),
			'-c', q{SET clinic_migrate.lock_retry_time = '120s'},
			'-c', q{SELECT schema_name FROM clinic_migrate.migrate_tenant('t4')}
		],
		'<', \undef, '>', \$m{stdout}, '2>', \$m{stderr},
		IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
	ok( ClinicTest::poll(
			q{
SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE backend_type = 'clinic_migrate'
                 AND query LIKE 'clinic_migrate: waiting for transactions older than the capture%')}),
		'idle writer: the worker waits for the idle transaction');
	my $cancelled_at = time();
	$node->safe_psql('postgres',
		q{SELECT pg_cancel_backend(pid) FROM pg_stat_activity
          WHERE backend_type = 'client backend' AND query LIKE '%migrate_tenant(''t4'')%'});
	eval { $m{h}->finish; };
	like($m{stderr}, qr/canceling statement due to user request/, 'idle writer: the caller is cancelled');
	ok( ClinicTest::poll(q{SELECT NOT clinic_migrate.migration_active('t4')}),
		'idle writer: its worker stops and frees the tenant');
	my $stopped_in = time() - $cancelled_at;
	ok($stopped_in < 15, "idle writer: within seconds of the cancel ($stopped_in s), not when the idle transaction ends");

	$app->query_safe('COMMIT');
	$app->quit;
	is($node->safe_psql('postgres', q{SELECT schema_name FROM clinic_migrate.migrate_tenant('t4')}),
		'tenant_t4', 'idle writer: once it has ended, the copy resumes');
	is( $node->safe_psql(
			'postgres', q{
SELECT clinic_migrate.sync_now('t4') >= 0;
SELECT count(*) FILTER (WHERE NOT match) FROM clinic_migrate.validate_migration('t4')}),
		"t\n0", 'idle writer: t4 validates, the idle transaction\'s write included');
}

# ---- 2. pgbench's TPC-B tables and its tpcb-like script ----
$node->safe_psql('postgres', 'CREATE DATABASE bench');
$node->safe_psql('bench', 'CREATE EXTENSION clinic_migrate');
$node->command_ok([ 'pgbench', '-i', '-q', '-s', '4', '--foreign-keys', '-h', $node->host,
		'-p', $node->port, 'bench' ], 'pgbench -i --foreign-keys');
$node->safe_psql(
	'bench', q{
ALTER DATABASE bench SET clinic_migrate.tenant_column = 'bid';
ALTER DATABASE bench SET clinic_migrate.registry_table = '';
SELECT clinic_migrate.exclude_table('pgbench_history');
CREATE ROLE bench_app LOGIN;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO bench_app;
});

# tpcb-like for $secs seconds, 4 clients, no retries (pgbench's default)
sub start_tpcb
{
	my ($secs) = @_;
	my %b = (out => '', err => '');
	$b{h} = IPC::Run::start(
		[
			'pgbench', '-n', '-b', 'tpcb-like', '-c', '4', '-j', '2', '-T', $secs,
			'-h', $node->host, '-p', $node->port, '-U', 'bench_app', 'bench'
		],
		'<', \undef, '>', \$b{out}, '2>', \$b{err},
		IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
	return \%b;
}

sub finish_tpcb
{
	my ($b, $name) = @_;
	my $ok = eval { $b->{h}->finish; };
	ok($ok, "$name: pgbench exits with 0") or diag("pgbench: $@\n$b->{out}\n$b->{err}");
	like($b->{out}, qr/^number of failed transactions: 0 /m, "$name: no transaction failed")
	  or diag($b->{out} . $b->{err});
	unlike($b->{err}, qr/deadlock|lock timeout/, "$name: no deadlock, no lock timeout")
	  or diag($b->{err});
	return;
}

sub tpcb_running
{
	return ClinicTest::poll(
		q{SELECT count(*) >= 4 FROM pg_stat_activity WHERE usename = 'bench_app'});
}

{
	my $b = start_tpcb(12);
	ok(tpcb_running(), 'tpcb-like: 4 clients write');
	my ($out, $err) = ('', '');
	is( $node->psql('bench', q{SELECT schema_name FROM clinic_migrate.migrate_tenant('3')},
			stdout => \$out, stderr => \$err, on_error_stop => 1),
		0, 'tpcb-like: branch 3 migrates under load') or diag($err);
	like($out, qr/^tenant_3$/m, 'tpcb-like: into tenant_3');
	finish_tpcb($b, 'migrate');

	is( $node->safe_psql(
			'bench', q{
SELECT clinic_migrate.sync_now('3') >= 0;
SELECT string_agg(table_name || ' ' || match, ', ' ORDER BY table_name)
FROM clinic_migrate.validate_migration('3')}),
		"t\npgbench_accounts true, pgbench_branches true, pgbench_tellers true",
		'tpcb-like: branch 3 validates after the load');

	is( $node->psql('bench', q{SELECT schema_name FROM clinic_migrate.cutover('3')},
			stdout => \$out, stderr => \$err, on_error_stop => 1),
		0, 'tpcb-like: cutover') or diag($err);

	# tpcb-like writes every branch's rows in the shared tables, and branch 3's are
	# refused (40001) while it is cut over: the rollback runs with pgbench stopped.
	is( $node->psql('bench', q{SELECT clinic_migrate.rollback_tenant('3')},
			stdout => \$out, stderr => \$err, on_error_stop => 1),
		0, 'tpcb-like: rollback after cutover') or diag($err);
	like($out, qr/^t$/m, 'tpcb-like: rolled back');

	# the copy and its rollback before cutover, under load again
	$b = start_tpcb(10);
	ok(tpcb_running(), 'tpcb-like: 4 clients write a third time');
	is( $node->psql('bench',
			q{SELECT schema_name FROM clinic_migrate.migrate_tenant('3'); SELECT clinic_migrate.rollback_tenant('3')},
			stdout => \$out, stderr => \$err, on_error_stop => 1),
		0, 'tpcb-like: migrate and roll back under load') or diag($err);
	finish_tpcb($b, 'migrate and roll back');
}

# ---- 5. writers that take the tables in both orders, while capture is installed ----
# Half the transactions write accounts, tellers, branches; the other half branches,
# tellers, accounts (other branches' rows: they never wait for each other). A first
# migration installs the capture triggers. 0.7 locked every table in one transaction:
# whichever order it asked in, a writer mid-way held a table it had not got yet and
# wanted one it held, its lock_timeout broke the cycle, and the next attempt met the
# same; under steady load it gave up after lock_retry_time with 55P03 (010 saw it
# starve for 40 s behind three writers). Now each table is locked in a transaction of
# its own, waiting for that table's writers only.
{
	ok( $node->poll_query_until('bench',
			q{SELECT NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname LIKE 'clinic_migrate_capture%')}),
		'both orders: no capture trigger is left from the moves above');
	my $forward = "$PostgreSQL::Test::Utils::tmp_check/006_forward.sql";
	my $backward = "$PostgreSQL::Test::Utils::tmp_check/006_backward.sql";
	PostgreSQL::Test::Utils::append_to_file(
		$forward, q{
\set aid random(1, 100000)
\set tid random(1, 10)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;
UPDATE pgbench_tellers SET tbalance = tbalance + 1 WHERE tid = :tid;
UPDATE pgbench_branches SET bbalance = bbalance + 1 WHERE bid = 1;
END;
});
	PostgreSQL::Test::Utils::append_to_file(
		$backward, q{
\set aid random(100001, 200000)
\set tid random(11, 20)
BEGIN;
UPDATE pgbench_branches SET bbalance = bbalance + 1 WHERE bid = 2;
UPDATE pgbench_tellers SET tbalance = tbalance + 1 WHERE tid = :tid;
UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;
END;
});
	my %b = (out => '', err => '');
	$b{h} = IPC::Run::start(
		[
			'pgbench', '-n', '-c', '4', '-j', '2', '-T', '15', '-h', $node->host, '-p', $node->port,
			'-U', 'bench_app', '-f', $forward, '-f', $backward, 'bench'
		],
		'<', \undef, '>', \$b{out}, '2>', \$b{err},
		IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
	ok(tpcb_running(), 'both orders: 4 clients write');
	my ($out, $err) = ('', '');
	is( $node->psql('bench',
			q{SET clinic_migrate.lock_retry_time = '8s';
SELECT schema_name FROM clinic_migrate.migrate_tenant('4')},
			stdout => \$out, stderr => \$err, on_error_stop => 1),
		0, 'both orders: branch 4 migrates, its capture installed under the load') or diag($err);
	finish_tpcb(\%b, 'both orders');
	is( $node->safe_psql(
			'bench', q{
SELECT clinic_migrate.sync_now('4') >= 0;
SELECT count(*) FILTER (WHERE match) FROM clinic_migrate.validate_migration('4');
SELECT clinic_migrate.rollback_tenant('4')}),
		"t\n3\nt", 'both orders: branch 4 validates and rolls back');
}

unlike(slurp_file($node->logfile), qr/deadlock detected/, 'the server log has no deadlock');

$node->stop;
done_testing();
