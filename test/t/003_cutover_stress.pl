# test/t/003_cutover_stress.pl: a tenant's whole journey under concurrent writes.
# pgbench writes tenants t1, t2 and t3, routed by clinic_migrate.set_tenant (each
# transaction finds where its tenant lives, SET LOCAL), inserting, updating and
# deleting patients, appointments and notes (a child table without tenant column) and
# moving staff between tenants; every committed write goes into a ledger in the same
# transaction, and writes that fail with 40001 are retried by pgbench. Meanwhile t1
# migrates, cuts over, rolls back, migrates again, cuts over and finalizes, one step
# per pgbench run. After each step, with the load stopped: an independent comparison
# (EXCEPT ALL both ways, explicit columns) of t1's shared rows and its schema shows no
# difference, and the ledger shows every committed write in the place each tenant
# lives, and no row written by a failed transaction anywhere.
# Two shapes of write that replay once got wrong are in every transaction: a patient
# deleted and inserted again with the same e-mail (a unique value outside the key,
# reused at once), and, while t1 and t2 both live in the shared tables, a patient of
# one of them moved to the other with its appointments, whose notes (a child table
# without a tenant column) follow them without being written.
# pgbench runs as an application role with only the grants the README gives one.
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
clinic_migrate.sync_interval = 100
});
ClinicTest::create_ledger();

# Locum staff that no appointment references, so that they can move between tenants:
# 5001..5030 start spread over t1, t2 and t3. A move deletes the row where its tenant
# lives and inserts it where the next tenant lives, each found with set_tenant.
$node->safe_psql(
	'postgres', q{
INSERT INTO public.staff (tenant_id, staff_no, name)
SELECT 't' || (1 + s % 3), s, 'Locum ' || s FROM generate_series(5001, 5030) s;
CREATE FUNCTION cm_test.move_staff(s int) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    src text;
    dst text;
    r record;
BEGIN
    FOREACH src IN ARRAY ARRAY['t1', 't2', 't3'] LOOP
        PERFORM clinic_migrate.set_tenant(src, true);
        DELETE FROM staff WHERE tenant_id = src AND staff_no = s RETURNING * INTO r;
        IF FOUND THEN
            dst := CASE src WHEN 't1' THEN 't2' WHEN 't2' THEN 't3' ELSE 't1' END;
            PERFORM clinic_migrate.set_tenant(dst, true);
            INSERT INTO staff (tenant_id, staff_no, name, specialty_id, roles)
            VALUES (dst, s, r.name, r.specialty_id, r.roles);
            INSERT INTO cm_test.ledger (tenant, tbl, key, op)
            VALUES (src, 'staff', s, 'del'), (dst, 'staff', s, 'ins');
            RETURN;
        END IF;
    END LOOP;
END $$;
});

# What pgbench picks at random lies below these ids; the transfer pool lies above.
my ($maxp, $maxa, $maxn) = split /\|/,
  $node->safe_psql(
	'postgres', q{
SELECT (SELECT max(id) FROM public.patients), (SELECT max(id) FROM public.appointments),
       (SELECT max(id) FROM public.appointment_notes)});

# The transfer pool: patients of t1 and t2 above every id pgbench picks otherwise, each
# with two appointments and two notes on each. A transfer moves one to the other tenant
# (patient and appointments change tenant_id; the notes follow through their
# appointment), only while both tenants live in the shared tables.
$node->safe_psql(
	'postgres', q{
CREATE TABLE cm_test.pool (n int PRIMARY KEY, patient_id bigint NOT NULL);
WITH p AS (
    INSERT INTO public.patients (tenant_id, first_name, last_name, email)
    SELECT 't' || (1 + g % 2), 'Pool', 'Patient ' || g, 'pool' || g || '@example.org'
    FROM generate_series(1, 20) g RETURNING id)
INSERT INTO cm_test.pool SELECT row_number() OVER (ORDER BY id), id FROM p;
INSERT INTO public.appointments (tenant_id, patient_id, staff_no, starts_at)
SELECT p.tenant_id, p.id, 1, '2025-03-01 09:00+00'::timestamptz + a * interval '1 day'
FROM public.patients p JOIN cm_test.pool ON pool.patient_id = p.id CROSS JOIN generate_series(1, 2) a;
INSERT INTO public.appointment_notes (appointment_id, body)
SELECT a.id, 'pool note ' || x FROM public.appointments a JOIN cm_test.pool ON a.patient_id = pool.patient_id
CROSS JOIN generate_series(1, 2) x;
CREATE FUNCTION cm_test.transfer(k int) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    pid bigint;
    src text;
    dst text;
BEGIN
    IF clinic_migrate.tenant_schema('t1') <> 'public' OR clinic_migrate.tenant_schema('t2') <> 'public' THEN
        RETURN;
    END IF;
    SELECT p.id, p.tenant_id INTO pid, src FROM public.patients p JOIN cm_test.pool ON pool.patient_id = p.id
    WHERE pool.n = k FOR UPDATE OF p;
    dst := CASE src WHEN 't1' THEN 't2' ELSE 't1' END;
    -- no note may be added under these appointments before the move commits
    PERFORM 1 FROM public.appointments WHERE patient_id = pid FOR UPDATE;
    UPDATE public.patients SET tenant_id = dst WHERE id = pid;
    UPDATE public.appointments SET tenant_id = dst WHERE patient_id = pid;
    INSERT INTO cm_test.ledger (tenant, tbl, key, op)
    SELECT t, 'patients', pid, o FROM (VALUES (src, 'del'), (dst, 'ins')) v(t, o)
    UNION ALL
    SELECT t, 'appointments', a.id, o FROM public.appointments a, (VALUES (src, 'del'), (dst, 'ins')) v(t, o)
    WHERE a.patient_id = pid
    UNION ALL
    SELECT t, 'appointment_notes', n.id, o
    FROM public.appointment_notes n JOIN public.appointments a ON a.id = n.appointment_id,
         (VALUES (src, 'del'), (dst, 'ins')) v(t, o)
    WHERE a.patient_id = pid;
END $$;

-- The application's role: the README's grants for one, nothing on clinic_migrate.
CREATE ROLE app LOGIN;
GRANT USAGE ON SCHEMA public, cm_test TO app;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO app;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO app;
GRANT SELECT, INSERT ON cm_test.ledger TO app;
GRANT SELECT ON cm_test.pool TO app;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA cm_test TO app;
});


# One transaction: everything unqualified, found through set_tenant's search_path.
my $script = "$PostgreSQL::Test::Utils::tmp_check/003_load.sql";
PostgreSQL::Test::Utils::append_to_file(
	$script, q{
\set t random(1, 3)
\set p random(1, :maxp)
\set a random(1, :maxa)
\set n random(1, :maxn)
\set s random(5001, 5030)
\set st random(1, 3)
\set k random(1, 20)
BEGIN;
SELECT clinic_migrate.set_tenant('t' || :t, true);
WITH u AS (UPDATE patients SET balance = coalesce(balance, 0) + 1,
                               notes = 'client ' || :client_id || ' xact ' || txid_current()
           WHERE id = (SELECT id FROM patients WHERE tenant_id = 't' || :t AND id >= :p AND id <= :maxp ORDER BY id LIMIT 1)
           RETURNING tenant_id, id, notes)
INSERT INTO cm_test.ledger (tenant, tbl, key, op, val) SELECT tenant_id, 'patients', id, 'upd', notes FROM u;
WITH i AS (INSERT INTO patients (tenant_id, first_name, last_name, tags)
           VALUES ('t' || :t, 'Bench', 'Client ' || :client_id, '{pgbench}') RETURNING tenant_id, id)
INSERT INTO cm_test.ledger (tenant, tbl, key, op) SELECT tenant_id, 'patients', id, 'ins' FROM i;
WITH d AS (DELETE FROM appointment_notes
           WHERE id = (SELECT n.id FROM appointment_notes n JOIN appointments a ON a.id = n.appointment_id
                       WHERE a.tenant_id = 't' || :t AND n.id >= :n AND n.id <= :maxn AND a.id <= :maxa
                       ORDER BY n.id LIMIT 1)
           RETURNING id)
INSERT INTO cm_test.ledger (tenant, tbl, key, op) SELECT 't' || :t, 'appointment_notes', id, 'del' FROM d;
WITH i AS (INSERT INTO appointment_notes (appointment_id, body)
           SELECT id, 'pgbench note ' || :client_id FROM appointments
           WHERE tenant_id = 't' || :t AND id >= :a AND id <= :maxa ORDER BY id LIMIT 1
           RETURNING id)
INSERT INTO cm_test.ledger (tenant, tbl, key, op) SELECT 't' || :t, 'appointment_notes', id, 'ins' FROM i;
WITH u AS (UPDATE appointments SET status = (ARRAY['booked', 'done', 'cancelled'])[:st]
           WHERE id = (SELECT id FROM appointments WHERE tenant_id = 't' || :t AND id >= :a AND id <= :maxa ORDER BY id LIMIT 1)
           RETURNING tenant_id, id, status)
INSERT INTO cm_test.ledger (tenant, tbl, key, op, val) SELECT tenant_id, 'appointments', id, 'upd', status FROM u;
WITH d AS (DELETE FROM patients WHERE tenant_id = 't' || :t AND email = 'again' || :client_id || '@example.org'
           RETURNING tenant_id, id)
INSERT INTO cm_test.ledger (tenant, tbl, key, op) SELECT tenant_id, 'patients', id, 'del' FROM d;
WITH i AS (INSERT INTO patients (tenant_id, first_name, last_name, email, tags)
           VALUES ('t' || :t, 'Again', 'Client ' || :client_id, 'again' || :client_id || '@example.org', '{pgbench}')
           RETURNING tenant_id, id)
INSERT INTO cm_test.ledger (tenant, tbl, key, op) SELECT tenant_id, 'patients', id, 'ins' FROM i;
SELECT cm_test.move_staff(:s);
SELECT cm_test.transfer(:k);
END;
});

# pgbench for $secs seconds, 3 clients, 40001 and deadlocks retried without limit.
sub start_load
{
	my ($secs) = @_;
	my %b = (out => '', err => '');
	$b{h} = IPC::Run::start(
		[
			'/usr/lib/postgresql/15/bin/pgbench', '-n', '-c', '3', '-j', '3', '-T', $secs,
			'--max-tries=0', '-h', $node->host, '-p', $node->port, '-U', 'app',
			'-D', "maxp=$maxp", '-D', "maxa=$maxa", '-D', "maxn=$maxn",
			'-f', $script, 'postgres'
		],
		'<', \undef, '>', \$b{out}, '2>', \$b{err},
		IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
	return \%b;
}

sub ledger_max
{
	return $node->safe_psql('postgres', 'SELECT coalesce(max(id), 0) FROM cm_test.ledger');
}

sub t1_writes_since
{
	my ($id) = @_;
	return $node->safe_psql('postgres',
		"SELECT count(*) FROM cm_test.ledger WHERE tenant = 't1' AND id > $id");
}

# Where each tenant lives now, and the place the ledger checks: 'shared' or a schema.
sub place_of
{
	my ($tenant) = @_;
	my $schema = $node->safe_psql('postgres',
		"SELECT clinic_migrate.tenant_schema('$tenant')");
	return $schema eq 'public' ? 'shared' : $schema;
}

# Rows written by pgbench (inserted patients and notes) in the place a tenant lives
# that no ledger entry accounts for: what a failed transaction would have left.
sub unaccounted_rows
{
	my ($tenant) = @_;
	my $place = place_of($tenant);
	my $p = ClinicTest::rows_in('patients', $tenant, $place, 'id, tags');
	my $n = ClinicTest::rows_in('appointment_notes', $tenant, $place, 'id, body');
	return $node->safe_psql(
		'postgres', qq{
SELECT (SELECT count(*) FROM ($p) r(id, tags) WHERE tags = '{pgbench}'
          AND NOT EXISTS (SELECT 1 FROM cm_test.ledger l WHERE l.tenant = '$tenant'
                          AND l.tbl = 'patients' AND l.key = r.id AND l.op = 'ins'))
     + (SELECT count(*) FROM ($n) r(id, body) WHERE body LIKE 'pgbench note %'
          AND NOT EXISTS (SELECT 1 FROM cm_test.ledger l WHERE l.tenant = '$tenant'
                          AND l.tbl = 'appointment_notes' AND l.key = r.id AND l.op = 'ins'))});
}

# One step of t1's journey under load: pgbench runs, the step runs in its own psql
# once writes are flowing, pgbench goes on after it and exits cleanly.
sub step_under_load
{
	my ($name, $sql) = @_;
	my $b = start_load(8);
	my $start = ledger_max();
	ok( ClinicTest::poll(
			"SELECT count(*) > 30 FROM cm_test.ledger WHERE id > $start AND tenant = 't1'"),
		"$name: pgbench writes t1");
	my $before = ledger_max();
	my ($out, $err) = ('', '');
	my $rc = $node->psql('postgres', $sql, stdout => \$out, stderr => \$err,
		on_error_stop => 1);
	is($rc, 0, "$name: succeeds under load") or diag($err);
	note("$name:\n$out");
	my $after = ledger_max();
	ok($b->{h}->pumpable, "$name: pgbench was still writing when it finished");
	my $ok = eval { $b->{h}->finish; };
	my $fail = $@;
	$b->{h}->kill_kill if $fail;
	ok($ok && !$fail, "$name: pgbench exits with 0")
	  or diag("pgbench: " . ($fail || "exit $?") . "\n$b->{out}\n$b->{err}");
	like($b->{out}, qr/^number of failed transactions: 0 /m,
		"$name: no transaction failed for good (40001 is retried)");
	my ($retried) = $b->{out} =~ /^number of transactions retried: (\d+)/m;
	note("$name: pgbench retried " . ($retried // 0) . " transactions");
	ok(t1_writes_since($before) > 0 && t1_writes_since($after) > 0,
		"$name: t1 was written during it and after it");
	return $out;
}

# With the load stopped: no change pending, the tenant's shared rows and its schema
# equal (when it has both), the ledger right about every tenant, nothing unaccounted.
sub check_quiet
{
	my ($name, $compare_t1) = @_;
	ok(ClinicTest::wait_replayed(), "$name: nothing pending replay");
	if ($compare_t1)
	{
		my $q = ClinicTest::comparison_query('t1', 'shared', 'tenant_t1');
		my $cmp = $node->safe_psql('postgres', $q);
		is($cmp, ClinicTest::zero_comparison(),
			"$name: t1's shared rows and tenant_t1 are equal (EXCEPT ALL both ways)")
		  or ClinicTest::diag_differences('t1', 'shared', 'tenant_t1');
		like(ClinicTest::validate_mismatches('t1'), qr/^none of 4$/,
			"$name: validate_migration matches on every table");
	}
	for my $tenant (qw(t1 t2 t3))
	{
		my $place = place_of($tenant);
		my $lines = ClinicTest::ledger_check($tenant, $place);
		ok(ClinicTest::ledger_all_right($lines),
			"$name: every committed write of $tenant is in $place, every delete gone")
		  or diag($lines);
		is(unaccounted_rows($tenant), 0,
			"$name: no row of a failed transaction of $tenant in $place");
	}
	return;
}

# 1. The copy, while t1 is written.
step_under_load('migrate',
	q{SET clinic_migrate.batch_size = 2000; SET clinic_migrate.batch_delay = 20;
	  SELECT schema_name, rows_copied > 0 FROM clinic_migrate.migrate_tenant('t1')});
is(place_of('t1'), 'shared', 'migrate: t1 still lives in the shared tables');
check_quiet('migrate', 1);
ClinicTest::check_capture_method('copied', 'migrate');

# 2. Cutover: t1's writers pause, then find tenant_t1.
step_under_load('cutover', q{SELECT * FROM clinic_migrate.cutover('t1')});
is(place_of('t1'), 'tenant_t1', 'cutover: t1 lives in tenant_t1');
check_quiet('cutover', 1);

# 3. Rollback after cutover: every write made in tenant_t1 is in the shared rows.
step_under_load('rollback', q{SELECT clinic_migrate.rollback_tenant('t1')});
is(place_of('t1'), 'shared', 'rollback: t1 lives in the shared tables again');
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_namespace WHERE nspname = 'tenant_t1'}),
	'0', 'rollback: tenant_t1 is gone');
check_quiet('rollback', 0);

# 4. Again: migrate and cut over.
step_under_load('migrate again and cut over',
	q{SET clinic_migrate.batch_size = 2000;
	  SELECT schema_name FROM clinic_migrate.migrate_tenant('t1');
	  SELECT * FROM clinic_migrate.cutover('t1')});
is(place_of('t1'), 'tenant_t1', 'migrate again and cut over: t1 lives in tenant_t1');
check_quiet('migrate again and cut over', 1);

# 5. Finalize: the shared rows of t1 go to the archive, t1 keeps being written.
step_under_load('finalize', q{SELECT * FROM clinic_migrate.finalize_tenant('t1')});
is( $node->safe_psql(
		'postgres', q{
SELECT (SELECT count(*) FROM public.patients WHERE tenant_id = 't1')
     + (SELECT count(*) FROM public.appointments WHERE tenant_id = 't1')
     + (SELECT count(*) FROM public.staff WHERE tenant_id = 't1')}),
	'0',
	'finalize: no row of t1 is left in the shared tables');
ok( $node->safe_psql('postgres',
		q{SELECT count(*) > 0 FROM clinic_migrate_archive.patients WHERE tenant_id = 't1'}),
	'finalize: the archive has t1\'s shared rows');
check_quiet('finalize', 0);

# The two shapes of write the load was made for did happen to t1, in both directions
# (the pool's 80 notes come right after the data set's, its 20 patients too).
is( $node->safe_psql(
		'postgres', qq{
SELECT (SELECT count(*) > 0 FROM cm_test.ledger WHERE tenant = 't1' AND tbl = 'appointment_notes'
          AND key BETWEEN $maxn + 1 AND $maxn + 80 AND op = 'del'),
       (SELECT count(*) > 0 FROM cm_test.ledger WHERE tenant = 't1' AND tbl = 'appointment_notes'
          AND key BETWEEN $maxn + 1 AND $maxn + 80 AND op = 'ins'),
       (SELECT count(*) > 0 FROM cm_test.ledger WHERE tenant = 't1' AND tbl = 'patients'
          AND key > $maxp + 20 AND op = 'del')}),
	't|t|t',
	'notes moved with their appointments out of t1 and into it; t1 reused e-mails of deleted patients');

# The pauses, as recorded.
note(
	$node->safe_psql(
		'postgres', q{
SELECT string_agg(direction || ' ' || attempt || ' ' || outcome || ' ' || pause_ms || ' ms, '
                  || keys_drained || ' drained', E'\n' ORDER BY cutover_id)
FROM clinic_migrate.cutovers}));
is( $node->safe_psql(
		'postgres',
		q{SELECT string_agg(DISTINCT direction, ',') FROM clinic_migrate.cutovers WHERE outcome = 'done'}),
	'cutover,finalize,rollback',
	'every switch is recorded');

$node->stop;
done_testing();
