# test/t/008_rls.pl: row level security for the tenants that stay in the shared
# tables (0.4), as an application sees it behind pgbouncer in transaction pooling,
# where every transaction may run on a server connection that just served another
# tenant and set_tenant(tenant, true) is the only routing that holds.
#
#  1. enable_tenant_rls(ARRAY['app']) enforces the tenant policies for app, an
#     ordinary LOGIN role with only the README's grants. pgbench (4 clients, simple
#     protocol) goes through a pgbouncer of this test with 2 server connections: its
#     routed transactions (BEGIN; set_tenant(t, true); reads) must see every row of
#     their tenant and no row of another in patients, appointments, staff and
#     appointment_notes (a child table, tenant through its appointment); its
#     unrouted transactions (no set_tenant) must see no row at all, on server
#     connections that served a tenant the transaction before. What a transaction
#     sees wrong it writes into cm_test.violations, which must stay empty.
#  2. With the policies enforced, routed pgbench writers of every tenant run while
#     t3 migrates, and again while it is cut over: t3's copy is complete (EXCEPT ALL
#     both ways, row counts, validate_migration), no session of another tenant ever
#     saw a row of it, a write across tenants changes nothing or fails (42501), and
#     afterwards a routed t3 session reads its rows in tenant_t3, and sessions of
#     another tenant or of none read none of them by schema-qualified name
#     (tenant_t3.patients): the tenant's tables carry the tenant policy too.
#  3. Permissive mode: every row visible, and tenant_rls_report() counts exactly the
#     rows enforcing would have hidden (without a tenant; of other tenants); enforced
#     again, the same transaction sees nothing.
#  4. candidates after ANALYZE: every tenant of the registry, ranked by its real size;
#     enqueue_candidates queues the biggest shared tenants (no scheduler here, so the
#     jobs stay queued).
# Data: test/gen/clinic.sql with 4 tenants and about 40,000 rows (t1 twice t2's size).

use strict;
use warnings;

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use lib "$ENV{TESTDIR}/test/t";
use ClinicTest;

# shared_preload_libraries: the audit counters of the permissive mode live in
# shared memory. No clinic_migrate.databases: no scheduler, the calls run directly.
my $node = ClinicTest::start_clinic(
	tenants => 4,
	rows => 40000,
	conf => q{
shared_preload_libraries = 'clinic_migrate'
max_worker_processes = 16
clinic_migrate.sync_interval = 100
});

# ---- the application's role and the test's own tables (outside public) ----

$node->safe_psql(
	'postgres', q{
CREATE ROLE app LOGIN;
GRANT USAGE ON SCHEMA clinic_migrate TO app;
GRANT USAGE ON SCHEMA public TO app;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO app;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO app;

CREATE SCHEMA cm_test;
-- one row per pgbench transaction: the server connection it ran on, the tenant it
-- routed to (NULL: none) and app.current_tenant as the transaction saw it
CREATE TABLE cm_test.trace (id bigserial PRIMARY KEY, pid int NOT NULL, tenant text,
                            setting text, at timestamptz NOT NULL DEFAULT clock_timestamp());
-- what a transaction saw that it must not have
CREATE TABLE cm_test.violations (id bigserial PRIMARY KEY, tenant text, setting text,
                                 tbl text NOT NULL, what text NOT NULL, n bigint NOT NULL,
                                 at timestamptz NOT NULL DEFAULT clock_timestamp());
-- each tenant's rows per table, for the read-only load
CREATE TABLE cm_test.expected (tenant text, tbl text, n bigint, PRIMARY KEY (tenant, tbl));
INSERT INTO cm_test.expected
SELECT tenant_id, 'patients', count(*) FROM public.patients GROUP BY 1
UNION ALL SELECT tenant_id, 'appointments', count(*) FROM public.appointments GROUP BY 1
UNION ALL SELECT tenant_id, 'staff', count(*) FROM public.staff GROUP BY 1
UNION ALL SELECT a.tenant_id, 'appointment_notes', count(*)
          FROM public.appointment_notes n JOIN public.appointments a ON a.id = n.appointment_id GROUP BY 1;
GRANT USAGE ON SCHEMA cm_test TO app;
GRANT SELECT, INSERT ON cm_test.trace, cm_test.violations TO app;
GRANT SELECT ON cm_test.expected TO app;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA cm_test TO app;
});
is( $node->safe_psql('postgres',
		q{SELECT string_agg(tenant || ' ' || n, ', ' ORDER BY tenant) FROM cm_test.expected WHERE tbl = 'patients'}),
	't1 7680, t2 3840, t3 2560, t4 1920',
	'the generator gave the four tenants their Zipf shares of patients');

my ($maxp, $maxa) = split /\|/,
  $node->safe_psql('postgres',
	q{SELECT (SELECT max(id) FROM public.patients), (SELECT max(id) FROM public.appointments)});

# ---- pgbouncer, transaction pooling, 2 server connections per user and database ----

my $bdir = PostgreSQL::Test::Utils::tempdir('pgbouncer');
my $bport = PostgreSQL::Test::Cluster::get_free_port();
my $bpidfile = "$bdir/pgbouncer.pid";
my $blog = "$PostgreSQL::Test::Utils::log_path/008_rls_pgbouncer.log";
PostgreSQL::Test::Utils::append_to_file("$bdir/userlist.txt", qq{"app" ""\n"postgres" ""\n});
PostgreSQL::Test::Utils::append_to_file(
	"$bdir/pgbouncer.ini", qq{
[databases]
postgres = host=@{[ $node->host ]} port=@{[ $node->port ]} dbname=postgres

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $bport
unix_socket_dir =
auth_type = trust
auth_file = $bdir/userlist.txt
pool_mode = transaction
default_pool_size = 2
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = 50
server_reset_query =
logfile = $blog
pidfile = $bpidfile
});
my $bpid;
my $bstopped = 0;
system_or_bail('/usr/sbin/pgbouncer', '-d', '-q', "$bdir/pgbouncer.ini");

# Stops pgbouncer by its pid, once (also when the test dies before its end).
sub stop_pgbouncer
{
	return 1 if $bstopped;
	$bpid //= -s $bpidfile ? slurp_file($bpidfile) : undef;
	return 0 unless $bpid;
	chomp $bpid;
	kill 'TERM', $bpid;
	for (1 .. 10 * $PostgreSQL::Test::Utils::timeout_default)
	{
		last unless kill 0, $bpid;
		usleep(100_000);
	}
	$bstopped = !kill 0, $bpid;
	return $bstopped;
}
END { stop_pgbouncer(); }

my $bconn = "host=127.0.0.1 port=$bport dbname=postgres user=app";

# psql through pgbouncer as app: (exit code, stdout, stderr).
sub app_psql
{
	my ($sql) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run(
		[ 'psql', '-X', '-A', '-t', '-q', '-v', 'ON_ERROR_STOP=1', '-v', 'VERBOSITY=verbose', '-d', $bconn ],
		'<', \$sql, '>', \$out, '2>', \$err,
		IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
	my $rc = $? >> 8;
	chomp $out;
	note("app through pgbouncer: exit $rc\n$sql\nstdout: $out\nstderr: $err");
	return ($rc, $out, $err);
}

# pgbouncer takes connections (polled, at most timeout_default).
{
	my $up = 0;
	for (1 .. 10 * $PostgreSQL::Test::Utils::timeout_default)
	{
		my ($out, $err) = ('', '');
		IPC::Run::run([ 'psql', '-X', '-A', '-t', '-d', $bconn, '-c', 'SELECT current_user' ],
			'>', \$out, '2>', \$err);
		if ($? == 0 && $out =~ /^app$/m) { $up = 1; last; }
		usleep(100_000);
	}
	ok($up, "pgbouncer listens on port $bport and connects app to the cluster");
	$bpid = slurp_file($bpidfile);
	chomp $bpid;
}

# ---- the pgbench scripts ----

# The rows a routed transaction of tenant 't' || :t must not see, and, when :own is
# 1, its own rows that it must see (read-only load: cm_test.expected is exact).
my $routed_reads = q{
INSERT INTO cm_test.trace (pid, tenant, setting)
VALUES (pg_backend_pid(), 't' || :t, current_setting('app.current_tenant', true));
INSERT INTO cm_test.violations (tenant, setting, tbl, what, n)
SELECT 't' || :t, current_setting('app.current_tenant', true), v.tbl, v.what, v.n
FROM (
  SELECT 'patients' AS tbl, 'rows of another tenant' AS what, count(*) AS n
  FROM patients WHERE tenant_id IS DISTINCT FROM 't' || :t
  UNION ALL
  SELECT 'appointments', 'rows of another tenant', count(*)
  FROM appointments WHERE tenant_id IS DISTINCT FROM 't' || :t
  UNION ALL
  SELECT 'staff', 'rows of another tenant', count(*)
  FROM staff WHERE tenant_id IS DISTINCT FROM 't' || :t
  UNION ALL
  SELECT 'appointment_notes', 'notes under no appointment of the tenant', count(*)
  FROM appointment_notes n
  WHERE NOT EXISTS (SELECT FROM appointments a WHERE a.id = n.appointment_id AND a.tenant_id = 't' || :t)
  UNION ALL
  SELECT e.tbl, 'own rows: ' || x.n || ' of ' || e.n, 1
  FROM cm_test.expected e
  JOIN (SELECT 'patients' AS tbl, count(*) AS n FROM patients
        UNION ALL SELECT 'appointments', count(*) FROM appointments
        UNION ALL SELECT 'staff', count(*) FROM staff
        UNION ALL SELECT 'appointment_notes', count(*) FROM appointment_notes) x ON x.tbl = e.tbl
  WHERE :own = 1 AND e.tenant = 't' || :t AND x.n <> e.n
  UNION ALL
  SELECT 'setting', 'app.current_tenant is ' || coalesce(current_setting('app.current_tenant', true), 'unset'), 1
  WHERE current_setting('app.current_tenant', true) IS DISTINCT FROM 't' || :t
) v
WHERE v.n > 0;
};

my $script_read = "$PostgreSQL::Test::Utils::tmp_check/008_routed_read.sql";
PostgreSQL::Test::Utils::append_to_file(
	$script_read, q{
\set t random(1, 4)
BEGIN;
SELECT clinic_migrate.set_tenant('t' || :t, true);
} . $routed_reads . q{
END;
});

# Routed writes through the policies (no tenant_id in any WHERE: the policy picks
# the rows), a write aimed at a random patient of any tenant that must change none
# of another, then the reads.
my $script_write = "$PostgreSQL::Test::Utils::tmp_check/008_routed_write.sql";
PostgreSQL::Test::Utils::append_to_file(
	$script_write, q{
\set t random(1, 4)
\set p random(1, :maxp)
\set a random(1, :maxa)
\set q random(1, :maxp)
BEGIN;
SELECT clinic_migrate.set_tenant('t' || :t, true);
INSERT INTO patients (tenant_id, first_name, last_name, tags)
VALUES ('t' || :t, 'Bench', 'Client ' || :client_id, '{pgbench}');
UPDATE patients SET balance = coalesce(balance, 0) + 1, notes = 'client ' || :client_id
WHERE id = (SELECT id FROM patients WHERE id >= :p ORDER BY id LIMIT 1);
INSERT INTO appointment_notes (appointment_id, body)
SELECT id, 'pgbench note ' || :client_id FROM appointments WHERE id >= :a ORDER BY id LIMIT 1;
UPDATE appointments SET status = 'done'
WHERE id = (SELECT id FROM appointments WHERE id >= :a ORDER BY id LIMIT 1);
WITH u AS (UPDATE patients SET notes = 'crossed from ' || :t WHERE id = :q AND tenant_id <> 't' || :t
           RETURNING tenant_id)
INSERT INTO cm_test.violations (tenant, setting, tbl, what, n)
SELECT 't' || :t, current_setting('app.current_tenant', true), 'patients', 'updated a row of ' || tenant_id, 1
FROM u;
} . $routed_reads . q{
END;
});

# No set_tenant: nothing of any tenant, whatever the server connection served before.
my $script_none = "$PostgreSQL::Test::Utils::tmp_check/008_unrouted.sql";
PostgreSQL::Test::Utils::append_to_file(
	$script_none, q{
BEGIN;
INSERT INTO cm_test.trace (pid, tenant, setting)
VALUES (pg_backend_pid(), NULL, current_setting('app.current_tenant', true));
INSERT INTO cm_test.violations (tenant, setting, tbl, what, n)
SELECT NULL, current_setting('app.current_tenant', true), v.tbl, v.what, v.n
FROM (
  SELECT 'patients' AS tbl, 'rows without set_tenant' AS what, count(*) AS n FROM patients
  UNION ALL SELECT 'appointments', 'rows without set_tenant', count(*) FROM appointments
  UNION ALL SELECT 'staff', 'rows without set_tenant', count(*) FROM staff
  UNION ALL SELECT 'appointment_notes', 'rows without set_tenant', count(*) FROM appointment_notes
  UNION ALL SELECT 'search_path', 'search_path is ' || current_setting('search_path'), 1
  WHERE current_setting('search_path') <> '"$user", public'
) v
WHERE v.n > 0;
END;
});

# pgbench through pgbouncer for $secs seconds: 4 clients, simple protocol, three
# routed transactions for one unrouted; 40001 and deadlocks retried.
sub start_load
{
	my ($secs, $routed, $own) = @_;
	my %b = (out => '', err => '');
	$b{h} = IPC::Run::start(
		[
			'pgbench', '-n', '-M', 'simple', '-c', '4', '-j', '4', '-T', $secs,
			'--max-tries=0', '-D', "maxp=$maxp", '-D', "maxa=$maxa", '-D', "own=$own",
			'-f', "$routed\@3", '-f', "$script_none\@1", $bconn
		],
		'<', \undef, '>', \$b{out}, '2>', \$b{err},
		IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default + $secs));
	return \%b;
}

# pgbench ends: exit 0, no failed transaction, some processed. Returns its output.
sub finish_load
{
	my ($b, $name) = @_;
	my $ok = eval { $b->{h}->finish; };
	my $fail = $@;
	$b->{h}->kill_kill if $fail;
	ok($ok && !$fail, "$name: pgbench exits with 0")
	  or diag("pgbench: " . ($fail || "exit $?") . "\n$b->{out}\n$b->{err}");
	like($b->{out}, qr/^number of failed transactions: 0 /m, "$name: no transaction failed");
	my ($done) = $b->{out} =~ /^number of transactions actually processed: (\d+)/m;
	ok(($done // 0) > 0, "$name: pgbench processed transactions")
	  or diag($b->{out});
	note("$name: pgbench:\n$b->{out}");
	return $b->{out};
}

sub trace_max
{
	return $node->safe_psql('postgres', 'SELECT coalesce(max(id), 0) FROM cm_test.trace');
}

sub violations
{
	return $node->safe_psql(
		'postgres', q{
SELECT count(*) || coalesce(': ' || string_agg(coalesce(tenant, 'none') || '/' || coalesce(setting, 'NULL')
                                               || ' ' || tbl || ' ' || what || ' (' || n || ')', '; '
                                               ORDER BY id), '')
FROM (SELECT * FROM cm_test.violations ORDER BY id LIMIT 20) v});
}

# ---- 1. enforced, read-only load behind pgbouncer ----

is($node->safe_psql('postgres', q{SELECT clinic_migrate.enable_tenant_rls(ARRAY['app'])}),
	'4', 'enable_tenant_rls covers the four planned tables');
is( $node->safe_psql(
		'postgres', q{
SELECT string_agg(tablename || ' ' || policyname || ' ' || permissive || ' ' || roles::text, E'\n'
                  ORDER BY tablename, policyname)
FROM pg_policies WHERE schemaname = 'public'}),
	join("\n",
		'appointment_notes clinic_migrate_open PERMISSIVE {public}',
		'appointment_notes clinic_migrate_tenant RESTRICTIVE {app}',
		'appointments clinic_migrate_open PERMISSIVE {public}',
		'appointments clinic_migrate_tenant RESTRICTIVE {app}',
		'patients clinic_migrate_open PERMISSIVE {public}',
		'patients clinic_migrate_tenant RESTRICTIVE {app}',
		'staff clinic_migrate_open PERMISSIVE {public}',
		'staff clinic_migrate_tenant RESTRICTIVE {app}'),
	'a restrictive tenant policy for app and an open one for PUBLIC on each planned table');
is( $node->safe_psql(
		'postgres', q{
SELECT string_agg(relname || ' ' || relrowsecurity || ' ' || relforcerowsecurity, ', ' ORDER BY relname)
FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'}),
	'appointment_notes true false, appointments true false, patients true false, specialties false false, '
	  . 'staff true false, tenants false false',
	'row level security on the planned tables only, not forced (app owns none)');

{
	my $b = start_load(6, $script_read, 1);
	finish_load($b, 'read-only load');
	is(violations(), '0', 'read-only load: no transaction saw a row it must not, or missed one of its own');
	my ($routed, $unrouted, $pids, $tenants_per_pid, $after_other) = split /\|/,
	  $node->safe_psql(
		'postgres', q{
SELECT count(*) FILTER (WHERE tenant IS NOT NULL), count(*) FILTER (WHERE tenant IS NULL),
       count(DISTINCT pid),
       (SELECT min(n) FROM (SELECT count(DISTINCT tenant) AS n FROM cm_test.trace GROUP BY pid) x),
       (SELECT count(*) FROM (SELECT tenant, lag(tenant) OVER (PARTITION BY pid ORDER BY id) AS prev
                              FROM cm_test.trace) x
        WHERE tenant IS NULL AND prev IS NOT NULL)
FROM cm_test.trace});
	note("read-only load: $routed routed and $unrouted unrouted transactions on $pids server "
		  . "connections; $after_other unrouted right after a routed one on the same connection");
	ok($pids >= 1 && $pids <= 2, "read-only load: pgbouncer used at most 2 server connections ($pids)");
	is($tenants_per_pid, '4', 'read-only load: every server connection served all four tenants');
	ok($after_other > 0,
		'read-only load: unrouted transactions ran on a connection right after another tenant\'s');
}

# A write across tenants is refused by the policy (its WITH CHECK).
{
	my ($rc, $out, $err) = app_psql(q{
BEGIN;
SELECT clinic_migrate.set_tenant('t2', true);
INSERT INTO patients (tenant_id, first_name, last_name) VALUES ('t1', 'Cross', 'Tenant');
COMMIT;
});
	like($err, qr/ERROR:  42501: new row violates row-level security policy "clinic_migrate_tenant" for table "patients"/,
		'a t2 transaction cannot insert a patient of t1 (42501)');
	($rc, $out, $err) = app_psql(q{
BEGIN;
SELECT clinic_migrate.set_tenant('t2', true);
UPDATE patients SET tenant_id = 't1' WHERE id = (SELECT min(id) FROM patients);
COMMIT;
});
	like($err, qr/ERROR:  42501: new row violates row-level security policy "clinic_migrate_tenant" for table "patients"/,
		'a t2 transaction cannot move its patient to t1 (42501)');
	my $appt1 = $node->safe_psql('postgres', q{SELECT min(id) FROM public.appointments WHERE tenant_id = 't1'});
	($rc, $out, $err) = app_psql(qq{
BEGIN;
SELECT clinic_migrate.set_tenant('t2', true);
INSERT INTO appointment_notes (appointment_id, body) VALUES ($appt1, 'cross');
COMMIT;
});
	like($err, qr/ERROR:  42501: new row violates row-level security policy "clinic_migrate_tenant" for table "appointment_notes"/,
		'a t2 transaction cannot put a note under an appointment of t1 (42501)');
	is($node->safe_psql('postgres', q{SELECT count(*) FROM public.appointment_notes WHERE body = 'cross'}),
		'0', 'no note of t2 under t1\'s appointment');
}

# ---- 2. t3 migrates, then is cut over, under routed writers of every tenant ----

# One step of t3 under load: pgbench writes every tenant, the step runs once t3's
# transactions flow, pgbench goes on after it.
sub step_under_load
{
	my ($name, $sql) = @_;
	my $b = start_load(8, $script_write, 0);
	my $start = trace_max();
	ok( ClinicTest::poll(
			"SELECT count(*) > 5 FROM cm_test.trace WHERE id > $start AND tenant = 't3'"),
		"$name: pgbench writes t3");
	my ($out, $err) = ('', '');
	my $rc = $node->psql('postgres', $sql, stdout => \$out, stderr => \$err, on_error_stop => 1);
	is($rc, 0, "$name: succeeds under load") or diag($err);
	note("$name:\n$out");
	my $after = trace_max();
	ok($b->{h}->pumpable, "$name: pgbench was still running when it finished");
	my $bout = finish_load($b, $name);
	my ($retried) = $bout =~ /^number of transactions retried: (\d+)/m;
	note("$name: pgbench retried " . ($retried // 0) . " transactions");
	ok( $node->safe_psql('postgres',
			"SELECT count(*) > 0 FROM cm_test.trace WHERE id > $after AND tenant = 't3'"),
		"$name: t3 was written after it too");
	is(violations(), '0', "$name: no session saw or changed a row of another tenant, none saw one unrouted");
	return $out;
}

# Sessions of another tenant (t1) and with no tenant read t3's schema by name. The
# tables of tenant_t3 get the shared tables' grants (app: USAGE on the schema, DML),
# and the tenant policy comparing the session's tenant with t3: those sessions read
# none of t3's rows there, as they could not while t3 was only shared.
sub t3_schema_by_name
{
	my ($name) = @_;
	for my $routing ("SELECT clinic_migrate.set_tenant('t1', true);", '')
	{
		my $who = $routing ? 'a t1 session' : 'a session without set_tenant';
		my ($rc, $out, $err) = app_psql(qq{
BEGIN;
$routing
SELECT (SELECT count(*) FROM tenant_t3.patients) + (SELECT count(*) FROM tenant_t3.appointment_notes);
COMMIT;
});
		$out =~ s/^public\n//;
		note("$name: $who reads $out rows of tenant_t3.patients and appointment_notes by name (exit $rc)");
		is("$rc $out", '0 0', "$name: $who reads no row of t3 in tenant_t3 by name");
	}
	return;
}

# t3's rows per table: "shared" place or tenant_t3.
sub t3_counts
{
	my ($place) = @_;
	return join(', ',
		map {
			my $q = ClinicTest::rows_in($_, 't3', $place, $ClinicTest::tables{$_}{key});
			"$_ " . $node->safe_psql('postgres', "SELECT count(*) FROM ($q) r")
		} @ClinicTest::table_order);
}

sub check_t3_copy
{
	my ($name) = @_;
	ok(ClinicTest::poll(q{SELECT clinic_migrate.capture_lag('t3') = 0}),
		"$name: nothing of t3 pending replay");
	my $cmp = $node->safe_psql('postgres', ClinicTest::comparison_query('t3', 'shared', 'tenant_t3'));
	is($cmp, ClinicTest::zero_comparison(),
		"$name: t3's shared rows and tenant_t3 are equal (EXCEPT ALL both ways)")
	  or ClinicTest::diag_differences('t3', 'shared', 'tenant_t3');
	my $shared = t3_counts('shared');
	is(t3_counts('tenant_t3'), $shared, "$name: t3's row counts are the same in both ($shared)");
	is(ClinicTest::validate_mismatches('t3'), 'none of 4', "$name: validate_migration matches on every table");
	return;
}

step_under_load('migrate t3',
	q{SET clinic_migrate.batch_size = 1000; SET clinic_migrate.batch_delay = 20;
	  SELECT schema_name, rows_copied > 0 FROM clinic_migrate.migrate_tenant('t3')});
is( $node->safe_psql('postgres', q{SELECT state || ' ' || lives_in FROM clinic_migrate.status WHERE tenant_id = 't3'}),
	'copied public', 'migrate t3: t3 is copied and still lives in public');
check_t3_copy('migrate t3');
ok( $node->safe_psql('postgres',
		q{SELECT count(*) > 0 FROM public.patients WHERE tenant_id = 't3' AND tags = '{pgbench}'}),
	'migrate t3: pgbench inserted patients of t3 while it was copied');
is( $node->safe_psql(
		'postgres', q{
SELECT string_agg(DISTINCT pg_get_expr(polqual, polrelid), ' | ')
FROM pg_policy WHERE polname = 'clinic_migrate_tenant'
  AND polrelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'tenant_t3'::regnamespace)}),
	"( SELECT (clinic_migrate.current_tenant(NULL::text) = 't3'::text))",
	'migrate t3: the tables of tenant_t3 get the tenant policy for t3, not the shared tables\' form');
is( $node->safe_psql(
		'postgres', q{
SELECT string_agg(relname || ' ' || relrowsecurity || ' ' || relforcerowsecurity, ', ' ORDER BY relname)
FROM pg_class WHERE relnamespace = 'tenant_t3'::regnamespace AND relkind = 'r'}),
	'appointment_notes true false, appointments true false, patients true false, staff true false',
	'migrate t3: tenant_t3\'s tables have row level security on (the shared tables had none: not forced)');
t3_schema_by_name('migrate t3');

step_under_load('cut t3 over', q{SELECT schema_name FROM clinic_migrate.cutover('t3')});
note('cutover pauses: '
	  . $node->safe_psql('postgres',
		q{SELECT string_agg(attempt || ' ' || outcome || ' ' || pause_ms || ' ms', ', ' ORDER BY cutover_id)
FROM clinic_migrate.cutovers WHERE tenant_id = 't3'}));
is( $node->safe_psql('postgres', q{SELECT state || ' ' || lives_in FROM clinic_migrate.status WHERE tenant_id = 't3'}),
	'cut_over tenant_t3', 'cut t3 over: t3 lives in tenant_t3');
check_t3_copy('cut t3 over');
ok( $node->safe_psql(
		'postgres', q{SELECT count(*) > 0 FROM tenant_t3.appointment_notes n
JOIN tenant_t3.appointments a ON a.id = n.appointment_id WHERE n.written_at > (SELECT cut_over_at FROM clinic_migrate.status WHERE tenant_id = 't3')}),
	'cut t3 over: pgbench wrote notes of t3 into tenant_t3 after the cutover');
t3_schema_by_name('cut t3 over');

# A routed t3 session reads its rows in tenant_t3, all of them.
{
	my $expect = $node->safe_psql(
		'postgres', q{
SELECT (SELECT count(*) FROM tenant_t3.patients) || '|' || (SELECT count(*) FROM tenant_t3.appointments)
       || '|' || (SELECT count(*) FROM tenant_t3.appointment_notes)});
	my ($rc, $out, $err) = app_psql(q{
BEGIN;
SELECT clinic_migrate.set_tenant('t3', true);
SELECT current_setting('search_path');
SELECT (SELECT count(*) FROM patients) || '|' || (SELECT count(*) FROM appointments)
       || '|' || (SELECT count(*) FROM appointment_notes);
SELECT count(*) FROM patients WHERE tenant_id <> 't3';
COMMIT;
});
	is($out, "tenant_t3\ntenant_t3, public\n$expect\n0",
		'a routed t3 session after cutover: search_path tenant_t3, public; every row of t3 in tenant_t3, no other');
	($rc, $out, $err) = app_psql(q{
BEGIN;
SELECT clinic_migrate.set_tenant('t3', true);
EXPLAIN (COSTS OFF, VERBOSE) SELECT count(*) FROM patients;
COMMIT;
});
	like($out, qr/ on tenant_t3\.patients/, 'a routed t3 session reads tenant_t3.patients')
	  or diag($out);
	like($out, qr/InitPlan 1 \(returns \$0\).*Filter: \$0/s,
		'... its tenant policy read once per query (an InitPlan), not per row: tenant_t3 holds only t3');
}

# ---- 3. permissive mode ----

{
	my ($all, $t2) = split /\|/,
	  $node->safe_psql('postgres',
		q{SELECT count(*), count(*) FILTER (WHERE tenant_id = 't2') FROM public.patients});
	is($node->safe_psql('postgres', q{SELECT clinic_migrate.enable_tenant_rls(ARRAY['app'], 'permissive')}),
		'8', 'permissive: enable_tenant_rls covers the four shared tables and tenant_t3\'s');
	is($node->safe_psql('postgres', q{SELECT count(*) FROM clinic_migrate.tenant_rls_report()}),
		'0', 'permissive: the report starts empty');
	my ($rc, $out, $err) = app_psql(q{
BEGIN;
SELECT count(*) FROM patients;
COMMIT;
});
	is($out, $all, "permissive: app without set_tenant sees every patient ($all)");
	is( $node->safe_psql(
			'postgres', q{
SELECT role || ' ' || table_name || ' ' || rows_of_other_tenants || ' ' || rows_without_tenant || ' '
       || (last_seen IS NOT NULL AND last_seen <= now())
FROM clinic_migrate.tenant_rls_report() ORDER BY 1}),
		"app patients 0 $all true",
		'permissive: tenant_rls_report counts every patient read without a tenant');
	($rc, $out, $err) = app_psql(q{
BEGIN;
SELECT clinic_migrate.set_tenant('t2', true);
SELECT count(*) FROM patients;
COMMIT;
});
	is($out, "public\n$all", "permissive: a routed t2 transaction sees every patient ($all)");
	my $others = $all - $t2;
	is( $node->safe_psql(
			'postgres', q{
SELECT role || ' ' || table_name || ' ' || rows_of_other_tenants || ' ' || rows_without_tenant
FROM clinic_migrate.tenant_rls_report() ORDER BY 1}),
		"app patients $others $all",
		"permissive: ... and the report counts the $others patients of other tenants");

	is($node->safe_psql('postgres', q{SELECT clinic_migrate.enable_tenant_rls(ARRAY['app'], 'enforce')}),
		'8', 'enforce again: enable_tenant_rls covers the four shared tables and tenant_t3\'s');
	($rc, $out, $err) = app_psql(q{
BEGIN;
SELECT count(*) FROM patients;
COMMIT;
});
	is($out, '0', 'enforce again: app without set_tenant sees no patient');
	($rc, $out, $err) = app_psql(q{
BEGIN;
SELECT clinic_migrate.set_tenant('t2', true);
SELECT count(*) FROM patients;
COMMIT;
});
	is($out, "public\n$t2", "enforce again: a routed t2 transaction sees its $t2 patients");
	is($node->safe_psql('postgres', q{SELECT count(*) FROM clinic_migrate.tenant_rls_report()}),
		'0', 'enforce again: nothing counted');
}

# ---- 4. candidates ----

$node->safe_psql('postgres', 'ANALYZE public.patients, public.appointments, public.staff, public.appointment_notes');
{
	# the real sizes of each tenant's rows in the shared tables
	my $real = $node->safe_psql(
		'postgres', q{
SELECT string_agg(tenant, ',' ORDER BY n DESC, tenant) FROM (
  SELECT tenant, sum(n) AS n FROM (
    SELECT tenant_id AS tenant, count(*) AS n FROM public.patients GROUP BY 1
    UNION ALL SELECT tenant_id, count(*) FROM public.appointments GROUP BY 1
    UNION ALL SELECT tenant_id, count(*) FROM public.staff GROUP BY 1
    UNION ALL SELECT a.tenant_id, count(*) FROM public.appointment_notes n
              JOIN public.appointments a ON a.id = n.appointment_id GROUP BY 1) x
  GROUP BY tenant) y});
	is($real, 't1,t2,t3,t4', 'the tenants by real size: t1, t2, t3, t4');
	is( $node->safe_psql(
			'postgres', q{
SELECT string_agg(rank || ' ' || tenant || ' ' || state || ' ' || from_statistics, ', ' ORDER BY rank, tenant)
FROM clinic_migrate.candidates}),
		'1 t1 shared true, 2 t2 shared true, 3 t3 cut_over true, 4 t4 shared true',
		'candidates: every tenant of the registry, ranked by size, with its state');
	is( $node->safe_psql(
			'postgres', q{
SELECT tenant FROM clinic_migrate.candidates
WHERE rank = 1 AND estimated_rows = (SELECT max(estimated_rows) FROM clinic_migrate.candidates)}),
		't1', 'candidates: rank 1 is t1, with the most estimated rows');
	my $off = $node->safe_psql(
		'postgres', q{
WITH r AS (
  SELECT tenant, sum(n) AS n FROM (
    SELECT tenant_id AS tenant, count(*) AS n FROM public.patients GROUP BY 1
    UNION ALL SELECT tenant_id, count(*) FROM public.appointments GROUP BY 1
    UNION ALL SELECT tenant_id, count(*) FROM public.staff GROUP BY 1
    UNION ALL SELECT a.tenant_id, count(*) FROM public.appointment_notes n
              JOIN public.appointments a ON a.id = n.appointment_id GROUP BY 1) x
  GROUP BY tenant)
SELECT coalesce(string_agg(c.tenant || ' estimated ' || c.estimated_rows || ' real ' || r.n, ', '), 'none')
FROM clinic_migrate.candidates c JOIN r USING (tenant)
WHERE abs(c.estimated_rows - r.n) > 0.1 * r.n OR c.estimated_bytes <= 0});
	is($off, 'none', 'candidates: every estimate within 10% of the real rows, bytes positive');

	my ($t1est, $t4est) = split /\|/,
	  $node->safe_psql('postgres',
		q{SELECT (SELECT estimated_rows FROM clinic_migrate.candidates WHERE tenant = 't1'),
		         (SELECT estimated_rows FROM clinic_migrate.candidates WHERE tenant = 't4')});
	is( $node->safe_psql('postgres',
			'SELECT count(*) FROM clinic_migrate.enqueue_candidates(' . ($t1est + 1) . ', 10)'),
		'0', 'enqueue_candidates: no tenant has more rows than t1');
	my $job = $node->safe_psql('postgres', 'SELECT * FROM clinic_migrate.enqueue_candidates(0, 1)');
	like($job, qr/^\d+$/, 'enqueue_candidates(0, 1) queues one job');
	is( $node->safe_psql('postgres',
			"SELECT tenant_id || ' ' || action || ' ' || state FROM clinic_migrate.job_queue WHERE job_id = $job"),
		't1 migrate queued', 'enqueue_candidates(0, 1): a migrate job of t1, the biggest shared tenant, queued');
	my $jobs = $node->safe_psql('postgres',
		'SELECT string_agg(j::text, \',\') FROM clinic_migrate.enqueue_candidates(' . ($t4est + 1) . ', 10) j');
	is( $node->safe_psql(
			'postgres', qq{
SELECT string_agg(tenant_id || ' ' || action || ' ' || state, ', ' ORDER BY job_id)
FROM clinic_migrate.job_queue WHERE job_id = ANY ('{$jobs}'::bigint[])}),
		't2 migrate queued',
		'enqueue_candidates(above t4, 10): t2 only (t1 queued already, t3 cut over, t4 too small)');
	is( $node->safe_psql('postgres',
			q{SELECT string_agg(tenant_id || ' ' || state, ', ' ORDER BY job_id) FROM clinic_migrate.job_queue}),
		't1 queued, t2 queued', 'the queue holds those two jobs, nothing else');
}

# ---- the end: the policies come off ----

is($node->safe_psql('postgres', q{SELECT clinic_migrate.disable_tenant_rls()}),
	'8', 'disable_tenant_rls takes the policies off the four shared tables and tenant_t3\'s four');
is( $node->safe_psql(
		'postgres', q{
SELECT count(*) FROM pg_policy WHERE polrelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'public'::regnamespace)}) . ' '
	  . $node->safe_psql('postgres',
		q{SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relrowsecurity}),
	'0 0', 'no policy left, row level security off again on every shared table');
{
	my ($rc, $out, $err) = app_psql(q{SELECT count(*) > 0 FROM patients});
	is($out, 't', 'app sees the shared rows again without set_tenant');
}

ok(stop_pgbouncer(), 'pgbouncer stops');
$node->stop;
done_testing();
