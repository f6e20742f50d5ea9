# test/t/002_capture.pl: change capture while a tenant is copied under concurrent load.
# pgbench writes to tenants t1 and t2 (updates, inserts, deletes of a child table
# without tenant column, staff moving between tenants) and records every committed
# write in a ledger; meanwhile migrate_tenant('t1') copies t1 in small throttled
# batches. Afterwards the copy must equal the shared rows exactly (EXCEPT ALL both
# ways), validate_migration must agree, and every committed write in the ledger must be
# in the copy. Then: single writes reach the copy through the sync worker; a
# transaction open before capture started is waited for; rollback ends capture; an
# application role without any grant on clinic_migrate writes through the triggers.
# Data: test/gen/clinic.sql with 4 tenants and about 40,000 rows.

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
	rows => 40000,
	conf => q{
shared_preload_libraries = 'clinic_migrate'
max_worker_processes = 16
restart_after_crash = on
clinic_migrate.sync_interval = 100
});

# Staff that no appointment references, so that pgbench can move them between t1 and
# t2: 5001..5030 start in t1, 5031..5040 in t2; 5001..5003 get an appointment each
# and must never move. The ledger lives in cm_test, outside public (not migrated).
$node->safe_psql(
	'postgres', q{
INSERT INTO public.staff (tenant_id, staff_no, name)
SELECT CASE WHEN s <= 5030 THEN 't1' ELSE 't2' END, s, 'Locum ' || s
FROM generate_series(5001, 5040) s;
INSERT INTO public.appointments (tenant_id, patient_id, staff_no, starts_at)
SELECT 't1', (SELECT min(id) FROM public.patients WHERE tenant_id = 't1'), s,
       timestamptz '2024-06-01 09:00+00' + s * interval '1 hour'
FROM generate_series(5001, 5003) s;
});
ClinicTest::create_ledger();

# Starts migrate_tenant(tenant) in a psql of its own; returns the harness and outputs.
sub start_migration
{
	my ($tenant, $batch_size, $batch_delay) = @_;
	my %s = (stdout => '', stderr => '');
	$s{h} = IPC::Run::start(
		[
			'psql', '-XAtq', '-v', 'ON_ERROR_STOP=1',
			'-d', $node->connstr('postgres'),
			'-c', "SET clinic_migrate.batch_size = $batch_size",
			'-c', "SET clinic_migrate.batch_delay = $batch_delay",
			'-c', 'SELECT * FROM clinic_migrate.migrate_tenant(' . ClinicTest::lit($tenant) . ')'
		],
		'<', \undef, '>', \$s{stdout}, '2>', \$s{stderr},
		IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
	return \%s;
}

# Waits for a session started by start_migration; true if psql exited with 0.
sub finish_session
{
	my ($s) = @_;
	my $ok = eval { $s->{h}->finish; };
	if ($@)
	{
		diag("session: $@");
		$s->{h}->kill_kill;
		return 0;
	}
	return $ok;
}

# 1. The load: pgbench on t1 and t2, every committed write in the ledger.
my ($maxp, $maxa, $maxn) = split /\|/,
  $node->safe_psql(
	'postgres', q{
SELECT (SELECT max(id) FROM public.patients), (SELECT max(id) FROM public.appointments),
       (SELECT max(id) FROM public.appointment_notes)});

my $script = "$PostgreSQL::Test::Utils::tmp_check/002_capture_load.sql";
PostgreSQL::Test::Utils::append_to_file(
	$script, q{
\set p random(1, :maxp)
\set a random(1, :maxa)
\set a2 random(1, :maxa)
\set n random(1, :maxn)
\set s random(5001, 5040)
\set st random(1, 3)
BEGIN;
WITH u AS (UPDATE public.patients SET balance = coalesce(balance, 0) + 1, notes = 'pgbench client ' || :client_id
           WHERE id = (SELECT id FROM public.patients WHERE tenant_id IN ('t1', 't2') AND id >= :p ORDER BY id LIMIT 1)
           RETURNING tenant_id, id)
INSERT INTO cm_test.ledger (tenant, tbl, key, op) SELECT tenant_id, 'patients', id, 'upd' FROM u;
WITH i AS (INSERT INTO public.patients (tenant_id, first_name, last_name, tags)
           VALUES ('t1', 'Bench', 'Client ' || :client_id, '{pgbench}') RETURNING tenant_id, id)
INSERT INTO cm_test.ledger (tenant, tbl, key, op) SELECT tenant_id, 'patients', id, 'ins' FROM i;
WITH d AS (DELETE FROM public.appointment_notes
           WHERE id = (SELECT n.id FROM public.appointment_notes n JOIN public.appointments a ON a.id = n.appointment_id
                       WHERE a.tenant_id = 't1' AND n.id >= :n ORDER BY n.id LIMIT 1)
           RETURNING id)
INSERT INTO cm_test.ledger (tenant, tbl, key, op) SELECT 't1', 'appointment_notes', id, 'del' FROM d;
WITH i AS (INSERT INTO public.appointment_notes (appointment_id, body)
           SELECT id, 'pgbench note ' || :client_id FROM public.appointments
           WHERE tenant_id = 't1' AND id >= :a2 ORDER BY id LIMIT 1
           RETURNING id)
INSERT INTO cm_test.ledger (tenant, tbl, key, op) SELECT 't1', 'appointment_notes', id, 'ins' FROM i;
WITH m AS (UPDATE public.staff s SET tenant_id = CASE s.tenant_id WHEN 't1' THEN 't2' ELSE 't1' END
           WHERE s.staff_no = :s AND s.tenant_id IN ('t1', 't2')
             AND NOT EXISTS (SELECT 1 FROM public.appointments a
                             WHERE a.tenant_id = s.tenant_id AND a.staff_no = s.staff_no)
           RETURNING s.tenant_id AS new_tenant, s.staff_no)
INSERT INTO cm_test.ledger (tenant, tbl, key, op)
SELECT CASE new_tenant WHEN 't1' THEN 't2' ELSE 't1' END, 'staff', staff_no, 'del' FROM m
UNION ALL
SELECT new_tenant, 'staff', staff_no, 'ins' FROM m;
WITH u AS (UPDATE public.appointments SET status = (ARRAY['booked', 'done', 'cancelled'])[:st]
           WHERE id = (SELECT id FROM public.appointments WHERE tenant_id = 't1' AND id >= :a ORDER BY id LIMIT 1)
           RETURNING tenant_id, id)
INSERT INTO cm_test.ledger (tenant, tbl, key, op) SELECT tenant_id, 'appointments', id, 'upd' FROM u;
END;
});

my ($bench_out, $bench_err) = ('', '');
my $bench = IPC::Run::start(
	[
		'/usr/lib/postgresql/15/bin/pgbench', '-n', '-c', '3', '-j', '3', '-T', '15',
		'-h', $node->host, '-p', $node->port,
		'-D', "maxp=$maxp", '-D', "maxa=$maxa", '-D', "maxn=$maxn",
		'-f', $script, 'postgres'
	],
	'<', \undef, '>', \$bench_out, '2>', \$bench_err,
	IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));

ok($node->poll_query_until('postgres', 'SELECT count(*) > 50 FROM cm_test.ledger'),
	'pgbench is writing');

# 2. migrate_tenant('t1') under the load.
my $ledger_at_start =
  $node->safe_psql('postgres', 'SELECT count(*) FROM cm_test.ledger');
my $migrate_out = $node->safe_psql(
	'postgres', q{
SET clinic_migrate.batch_size = 1000;
SET clinic_migrate.batch_delay = 30;
SELECT schema_name, tables, rows_copied > 0 FROM clinic_migrate.migrate_tenant('t1');
});
is($migrate_out, 'tenant_t1|4|t', 'migrate_tenant(t1) succeeds under load');
my $ledger_at_end =
  $node->safe_psql('postgres', 'SELECT count(*) FROM cm_test.ledger');
ok($bench->pumpable, 'pgbench was still running when migrate_tenant returned');
is( $node->safe_psql(
		'postgres', q{SELECT state FROM clinic_migrate.status WHERE tenant_id = 't1'}),
	'copied',
	'status shows t1 copied');

# 3. pgbench finishes cleanly; the copy converges to the shared rows exactly.
{
	my $ok = eval { $bench->finish; };
	my $err = $@;
	$bench->kill_kill if $err;
	ok($ok && !$err, 'pgbench exits with 0')
	  or diag("pgbench: " . ($err || "exit $?") . "\nstdout:\n$bench_out\nstderr:\n$bench_err");
	like($bench_out, qr/^number of failed transactions: 0 /m,
		'pgbench reports 0 failed transactions');
	note("pgbench:\n$bench_out");
}
my $ledger_total = $node->safe_psql('postgres', 'SELECT count(*) FROM cm_test.ledger');
ok( $ledger_at_start > 0 && $ledger_at_end > $ledger_at_start && $ledger_total > $ledger_at_end,
	"writes committed before ($ledger_at_start), during ($ledger_at_end) and after "
	  . "($ledger_total) the copy");
is( $node->safe_psql(
		'postgres', q{
SELECT string_agg(tbl || ' ' || op, ', ' ORDER BY tbl, op)
FROM (SELECT DISTINCT tbl, op FROM cm_test.ledger WHERE tenant = 't1') l}),
	'appointment_notes del, appointment_notes ins, appointments upd, patients ins, '
	  . 'patients upd, staff del, staff ins',
	'the ledger holds every kind of write to t1');

ok( ClinicTest::poll(
		q{SELECT capture_lag = 0 FROM clinic_migrate.status WHERE tenant_id = 't1'}),
	't1: capture_lag reaches 0');
my $cmp_t1 = ClinicTest::comparison_query('t1', 'shared', 'tenant_t1');
ok(ClinicTest::poll($cmp_t1, ClinicTest::zero_comparison()),
	't1: the copy converges to the shared rows');
my $cmp = $node->safe_psql('postgres', $cmp_t1);
for my $tbl (@ClinicTest::table_order)
{
	my ($missing, $extra) = $cmp =~ /\b$tbl (\d+)\/(\d+)/;
	is($missing, 0, "t1 $tbl: no shared row is missing from the copy");
	is($extra, 0, "t1 $tbl: the copy has no row that is not shared");
}
ClinicTest::diag_differences('t1', 'shared', 'tenant_t1') if $cmp ne ClinicTest::zero_comparison();
like(ClinicTest::validate_mismatches('t1'), qr/^none of 4$/,
	't1: validate_migration matches on every table');
{
	my $copy = ClinicTest::ledger_check('t1', 'tenant_t1');
	my $shared = ClinicTest::ledger_check('t1', 'shared');
	note("ledger of t1 (table op entries wrong), shared:\n$shared\ncopy:\n$copy");
	ok(ClinicTest::ledger_all_right($shared), 't1: the ledger agrees with the shared rows')
	  or diag($shared);
	ok(ClinicTest::ledger_all_right($copy),
		't1: every write in the ledger is in the copy, every delete is gone')
	  or diag($copy);
}
is( $node->safe_psql(
		'postgres', q{
SELECT string_agg(staff_no::text, ',' ORDER BY staff_no) FROM tenant_t1.staff
WHERE staff_no BETWEEN 5001 AND 5003}),
	'5001,5002,5003',
	't1: staff with appointments never moved');

# 4. The sync worker applies single writes (recorded in the ledger too).
{
	my $new_id = $node->safe_psql(
		'postgres', q{
WITH i AS (INSERT INTO public.patients (tenant_id, first_name, last_name)
           VALUES ('t1', 'Single', 'Write') RETURNING id)
INSERT INTO cm_test.ledger (tenant, tbl, key, op) SELECT 't1', 'patients', id, 'ins' FROM i
RETURNING key});
	my $gone_id = $node->safe_psql(
		'postgres', q{
WITH d AS (DELETE FROM public.patients
           WHERE id = (SELECT min(id) FROM public.patients WHERE tenant_id = 't1' AND tags = '{pgbench}')
           RETURNING id)
INSERT INTO cm_test.ledger (tenant, tbl, key, op) SELECT 't1', 'patients', id, 'del' FROM d
RETURNING key});
	like($gone_id, qr/^\d+$/, 'sync: deleted a t1 patient');
	my $staff_no = $node->safe_psql(
		'postgres', q{
WITH m AS (UPDATE public.staff SET tenant_id = 't2'
           WHERE tenant_id = 't1'
             AND staff_no = (SELECT min(staff_no) FROM public.staff s
                             WHERE tenant_id = 't1' AND staff_no > 5003
                               AND NOT EXISTS (SELECT 1 FROM public.appointments a
                                               WHERE a.tenant_id = 't1' AND a.staff_no = s.staff_no))
           RETURNING staff_no)
INSERT INTO cm_test.ledger (tenant, tbl, key, op)
SELECT 't1', 'staff', staff_no, 'del' FROM m UNION ALL SELECT 't2', 'staff', staff_no, 'ins' FROM m
RETURNING key});
	($staff_no) = split /\n/, $staff_no;
	like($staff_no, qr/^\d+$/, 'sync: moved a t1 staff member to t2');
	ok( ClinicTest::poll(
			"SELECT EXISTS (SELECT 1 FROM tenant_t1.patients WHERE id = $new_id AND last_name = 'Write')"
		),
		'sync: the inserted patient reaches tenant_t1');
	ok( ClinicTest::poll(
			"SELECT NOT EXISTS (SELECT 1 FROM tenant_t1.patients WHERE id = $gone_id)"),
		'sync: the deleted patient leaves tenant_t1');
	ok( ClinicTest::poll(
			"SELECT NOT EXISTS (SELECT 1 FROM tenant_t1.staff WHERE staff_no = $staff_no)"),
		'sync: the staff member moved to t2 leaves tenant_t1');
	ok(ClinicTest::poll($cmp_t1, ClinicTest::zero_comparison()),
		'sync: the copy still equals the shared rows');
	my $copy = ClinicTest::ledger_check('t1', 'tenant_t1');
	ok(ClinicTest::ledger_all_right($copy), 'sync: the ledger of t1 agrees with the copy')
	  or diag($copy);
	is( $node->safe_psql(
			'postgres', q{SELECT syncing FROM clinic_migrate.status WHERE tenant_id = 't1'}),
		't',
		'sync: status shows t1 syncing');
}

# 5. A transaction open before the capture of t3 started, which wrote a t3 row: the
# worker waits for it before copying, so the copy has its write.
{
	my $open = $node->background_psql('postgres');
	$open->query_safe('BEGIN');
	my $open_pid = $open->query_safe('SELECT pg_backend_pid()');
	my $p3 = $open->query_safe(
		q{
UPDATE public.patients SET notes = 'written before the capture of t3'
WHERE id = (SELECT min(id) FROM public.patients WHERE tenant_id = 't3')
RETURNING id});
	like($p3, qr/^\d+$/, "t3: an open transaction updated patient $p3");

	my $s = start_migration('t3', 1000, 0);
	# Until the worker waits for the open transaction, or the migration is over (which
	# it must not be while the transaction is open).
	my $worker_waits = qq{
SELECT query FROM pg_stat_activity
WHERE backend_type = 'clinic_migrate' AND query LIKE 'clinic_migrate: waiting for%older%'
  AND $open_pid = ANY (pg_blocking_pids(pid))};
	ok( ClinicTest::poll(
			qq{
SELECT EXISTS ($worker_waits)
       OR EXISTS (SELECT 1 FROM clinic_migrate.status WHERE tenant_id = 't3' AND state = 'copied')}
		),
		't3: the migration waits or is over');
	like(
		$node->safe_psql('postgres', $worker_waits),
		qr/^clinic_migrate: waiting for (older transactions|transactions older)/,
		't3: the worker waits for the transaction that was open before the capture');
	is( $node->safe_psql(
			'postgres',
			q{SELECT state FROM clinic_migrate.status WHERE tenant_id = 't3'}),
		'copying',
		't3: the copy has not finished while the transaction is open');

	$open->query_safe('COMMIT');
	$open->quit;
	ok(finish_session($s), 't3: migrate_tenant completes once the transaction commits')
	  or diag("stdout: $s->{stdout}\nstderr: $s->{stderr}");
	ClinicTest::check_capture_method('copied', 't3');
	ok( ClinicTest::poll(
			q{SELECT capture_lag = 0 FROM clinic_migrate.status WHERE tenant_id = 't3'}),
		't3: capture_lag reaches 0');
	is( $node->safe_psql(
			'postgres', "SELECT notes FROM tenant_t3.patients WHERE id = $p3"),
		'written before the capture of t3',
		't3: the copy has the update of the transaction that was open');
	my $cmp_t3 = ClinicTest::comparison_query('t3', 'shared', 'tenant_t3');
	ok(ClinicTest::poll($cmp_t3, ClinicTest::zero_comparison()),
		't3: the copy equals the shared rows')
	  or ClinicTest::diag_differences('t3', 'shared', 'tenant_t3');
}

# 6. Rollback ends the sync and the capture of t1.
{
	is($node->safe_psql('postgres', q{SELECT clinic_migrate.rollback_tenant('t1')}),
		't', 'rollback_tenant(t1) returns true');
	is( $node->safe_psql(
			'postgres',
			q{SELECT count(*) FROM pg_namespace WHERE nspname = 'tenant_t1'}),
		'0',
		'rollback: schema tenant_t1 is gone');
	is( $node->safe_psql(
			'postgres',
			q{SELECT count(*) FROM clinic_migrate.status WHERE tenant_id = 't1'}),
		'0',
		'rollback: status has no t1');
	ok( ClinicTest::poll(q{
SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity
                   WHERE query LIKE 'clinic_migrate: keeping tenant\_t1 %')}),
		'rollback: no worker keeps tenant_t1 in sync');
	is($node->safe_psql('postgres', q{SELECT clinic_migrate.capture_lag('t1')}),
		'0', 'rollback: capture_lag(t1) is 0');
	$node->safe_psql(
		'postgres', q{
UPDATE public.patients SET notes = 'after the rollback'
WHERE id = (SELECT max(id) FROM public.patients WHERE tenant_id = 't1')});
	is($node->safe_psql('postgres', q{SELECT clinic_migrate.capture_lag('t1')}),
		'0', 'rollback: a write to t1 afterwards is not captured');
}

# 7. An application role with no grant on clinic_migrate writes a migrated tenant.
{
	$node->safe_psql(
		'postgres', q{
CREATE ROLE app LOGIN;
GRANT USAGE ON SCHEMA public TO app;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO app;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO app;
});
	is( $node->safe_psql(
			'postgres',
			q{SELECT schema_name FROM clinic_migrate.migrate_tenant('t2')}),
		'tenant_t2',
		'app: t2 is migrated');
	is( $node->safe_psql(
			'postgres', q{
SELECT has_schema_privilege('app', 'clinic_migrate', 'USAGE'),
       has_function_privilege('app', 'clinic_migrate.capture()', 'EXECUTE')}),
		't|f',
		'app: USAGE on the schema (every role has it, for routing), no EXECUTE on capture()');

	# As app: the statement succeeds (no error), returns its output.
	my $as_app = sub {
		my ($sql, $label) = @_;
		my ($out, $err) = ('', '');
		my $rc = $node->psql(
			'postgres', $sql,
			stdout => \$out,
			stderr => \$err,
			on_error_stop => 1,
			extra_params => [ '-U', 'app' ]);
		ok($rc == 0 && $err eq '', "app: $label") or diag("exit $rc: $err");
		return $out;
	};
	my ($kept, $dropped) = split /\n/, $as_app->(
		q{
INSERT INTO public.patients (tenant_id, first_name, last_name)
VALUES ('t2', 'App', 'Kept'), ('t2', 'App', 'Dropped') RETURNING id}, 'inserts t2 patients');
	my $updated = $as_app->(
		q{
UPDATE public.patients SET notes = 'updated by app'
WHERE id = (SELECT min(id) FROM public.patients WHERE tenant_id = 't2') RETURNING id},
		'updates a t2 patient');
	$as_app->("DELETE FROM public.patients WHERE id = $dropped", 'deletes a t2 patient');
	my $note = $as_app->(
		q{
INSERT INTO public.appointment_notes (appointment_id, body)
SELECT min(id), 'note by app' FROM public.appointments WHERE tenant_id = 't2'
RETURNING id}, 'inserts a t2 note');
	my ($note_upd, $note_del) = split /\|/,
	  $node->safe_psql(
		'postgres', q{
SELECT min(n.id), max(n.id) FROM public.appointment_notes n
JOIN public.appointments a ON a.id = n.appointment_id
WHERE a.tenant_id = 't2' AND n.body <> 'note by app'});
	$as_app->(
		"UPDATE public.appointment_notes SET body = 'note edited by app' WHERE id = $note_upd",
		'updates a t2 note');
	$as_app->("DELETE FROM public.appointment_notes WHERE id = $note_del",
		'deletes a t2 note');

	ok( ClinicTest::poll(qq{
SELECT EXISTS (SELECT 1 FROM tenant_t2.patients WHERE id = $kept AND last_name = 'Kept')
   AND NOT EXISTS (SELECT 1 FROM tenant_t2.patients WHERE id = $dropped)
   AND EXISTS (SELECT 1 FROM tenant_t2.patients WHERE id = $updated AND notes = 'updated by app')
   AND EXISTS (SELECT 1 FROM tenant_t2.appointment_notes WHERE id = $note AND body = 'note by app')
   AND EXISTS (SELECT 1 FROM tenant_t2.appointment_notes
               WHERE id = $note_upd AND body = 'note edited by app')
   AND NOT EXISTS (SELECT 1 FROM tenant_t2.appointment_notes WHERE id = $note_del)}),
		"app: the writes reach tenant_t2");
	my $cmp_t2 = ClinicTest::comparison_query('t2', 'shared', 'tenant_t2');
	ok(ClinicTest::poll($cmp_t2, ClinicTest::zero_comparison()),
		'app: the t2 copy equals the shared rows')
	  or ClinicTest::diag_differences('t2', 'shared', 'tenant_t2');
	like(ClinicTest::validate_mismatches('t2'), qr/^none of 4$/,
		't2: validate_migration matches on every table');
	my $copy = ClinicTest::ledger_check('t2', 'tenant_t2');
	ok(ClinicTest::ledger_all_right($copy), 't2: every pgbench write of t2 in the ledger is in the copy')
	  or diag($copy);
}

$node->stop;
done_testing();
