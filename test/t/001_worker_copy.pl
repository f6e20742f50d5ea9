# test/t/001_worker_copy.pl: the copy that migrate_tenant runs in a background worker
# ("clinic_migrate"): a plain migration, a copy whose worker is killed (crash and
# restart of every backend), a copy cut short by an immediate shutdown, both resumed
# and validated, and tenant ids that are hostile as SQL or too long for a schema name.
# Data: test/gen/clinic.sql with 5 tenants and about 60,000 rows.

use strict;
use warnings;

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $gen = "$ENV{TESTDIR}/test/gen/clinic.sql";
die "the data generator $gen is missing" unless -f $gen;

# A server that restarts after a backend crash, as production servers do; the test
# framework turns that off by default.
my $node = PostgreSQL::Test::Cluster->new('main');
$node->init(extra => [ '--encoding=UTF8', '--no-locale' ]);
$node->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'clinic_migrate'
max_worker_processes = 16
restart_after_crash = on
});
$node->start;

$node->safe_psql('postgres', 'CREATE EXTENSION clinic_migrate');
$node->command_ok(
	[
		'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-v', 'tenants=5',
		'-v', 'rows=60000', '-d', 'postgres', '-f', $gen
	],
	'clinic.sql generates the shared tables');

# Row counts of a tenant: in the shared tables (appointment_notes has no tenant column:
# its rows belong to the tenant of their appointment) and in the tenant's schema.
# Kept outside public, which is the schema being migrated.
$node->safe_psql(
	'postgres', q{
CREATE SCHEMA cm_test;
CREATE FUNCTION cm_test.counts(tenant text, target_schema name)
RETURNS TABLE (tbl text, source_rows bigint, target_rows bigint)
LANGUAGE plpgsql AS $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['staff', 'patients', 'appointments'] LOOP
        tbl := t;
        EXECUTE format('SELECT count(*) FROM public.%I WHERE tenant_id = $1', t)
            INTO source_rows USING tenant;
        EXECUTE format('SELECT count(*) FROM %I.%I', target_schema, t) INTO target_rows;
        RETURN NEXT;
    END LOOP;
    tbl := 'appointment_notes';
    SELECT count(*) INTO source_rows
    FROM public.appointment_notes n JOIN public.appointments a ON a.id = n.appointment_id
    WHERE a.tenant_id = tenant;
    EXECUTE format('SELECT count(*) FROM %I.appointment_notes', target_schema)
        INTO target_rows;
    RETURN NEXT;
END
$$;
-- Keys in one side and not the other, for the tables with a surrogate key.
CREATE FUNCTION cm_test.key_differences(tenant text, target_schema name)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    t text;
    n bigint;
    total bigint := 0;
BEGIN
    FOREACH t IN ARRAY ARRAY['patients', 'appointments'] LOOP
        EXECUTE format('SELECT count(*) FROM ((SELECT id FROM public.%1$I WHERE tenant_id = $1
                                              EXCEPT SELECT id FROM %2$I.%1$I)
                                             UNION ALL
                                             (SELECT id FROM %2$I.%1$I
                                              EXCEPT SELECT id FROM public.%1$I WHERE tenant_id = $1)) d',
                       t, target_schema)
            INTO n USING tenant;
        total := total + n;
    END LOOP;
    RETURN total;
END
$$;
});

# A string as an SQL literal (standard_conforming_strings is on).
sub lit
{
	my ($s) = @_;
	$s =~ s/'/''/g;
	return "'$s'";
}

# The tenant's schema, as clinic_migrate recorded it.
sub schema_of
{
	my ($tenant) = @_;
	return $node->safe_psql('postgres',
		'SELECT schema_name FROM clinic_migrate.tenants WHERE tenant_id = '
		  . lit($tenant));
}

# validate_migration finds every table equal, and the tenant's rows are all in its
# schema: the same counts as the shared tables, the same keys.
sub check_migrated
{
	my ($tenant, $label) = @_;
	my $t = lit($tenant);
	my $schema = schema_of($tenant);
	isnt($schema, '', "$label: has a schema");

	my $bad = $node->safe_psql(
		'postgres', qq{
SELECT coalesce(string_agg(table_name || ': ' || source_rows || ' / ' || target_rows
                           || ' missing ' || coalesce(missing_keys::text, '-')
                           || ' extra ' || coalesce(extra_keys::text, '-')
                           || ' different ' || coalesce(different_keys::text, '-')
                           || ' fk_orphans ' || coalesce(fk_orphans::text, '-')
                           || ' sequences_ok ' || coalesce(sequences_ok::text, '-'),
                           E'\\n' ORDER BY table_name)
                FILTER (WHERE match IS NOT TRUE), 'none')
       || ' of ' || count(*)
FROM clinic_migrate.validate_migration($t)});
	like($bad, qr/^none of [4-9]\d*$/,
		"$label: validate_migration matches on every table");

	my $counts = $node->safe_psql(
		'postgres', qq{
SELECT string_agg(tbl || ' ' || source_rows || ' ' || target_rows, ', ' ORDER BY tbl)
FROM cm_test.counts($t, } . lit($schema) . q{)});
	my $same = $node->safe_psql(
		'postgres', qq{
SELECT bool_and(source_rows = target_rows) AND sum(source_rows) > 0
FROM cm_test.counts($t, } . lit($schema) . q{)});
	is($same, 't', "$label: row counts equal the shared tables ($counts)");
	is( $node->safe_psql(
			'postgres',
			"SELECT cm_test.key_differences($t, " . lit($schema) . ')'),
		'0',
		"$label: the same patient and appointment ids");
	return;
}

# Starts migrate_tenant(tenant) in a psql of its own, throttled so that the copy takes
# a while; returns the IPC::Run harness and its outputs.
sub start_slow_migration
{
	my ($tenant, $batch_size, $batch_delay) = @_;
	my %s = (stdout => '', stderr => '');
	$s{h} = IPC::Run::start(
		[
			'psql', '-XAtq', '-v', 'ON_ERROR_STOP=1',
			'-d', $node->connstr('postgres'),
			'-c', "SET clinic_migrate.batch_size = $batch_size",
			'-c', "SET clinic_migrate.batch_delay = $batch_delay",
			'-c', 'SELECT * FROM clinic_migrate.migrate_tenant(' . lit($tenant) . ')'
		],
		'<', \undef, '>', \$s{stdout}, '2>', \$s{stderr},
		IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
	return \%s;
}

# Waits until the tenant's copy has committed rows and has tables left to copy.
sub wait_mid_copy
{
	my ($tenant, $label) = @_;
	ok( $node->poll_query_until(
			'postgres', q{
SELECT sum(rows_copied) > 0 AND bool_or(NOT copied)
FROM clinic_migrate.tenant_tables WHERE tenant_id = } . lit($tenant)),
		"$label: the copy is under way");
	return;
}

# The interrupted migrate_tenant call ended with an error, not a result.
sub check_session_failed
{
	my ($s, $label) = @_;
	my $finished = eval { $s->{h}->finish; };
	my $err = $@;
	ok(!$err && !$finished, "$label: the interrupted migrate_tenant call failed")
	  or diag("finish: " . ($err || 'succeeded')
		  . "\nstdout: $s->{stdout}\nstderr: $s->{stderr}");
	$s->{h}->kill_kill if $err;
	return;
}

# After the interruption: status says so, and migrate_tenant resumes and completes.
sub check_resume
{
	my ($tenant, $label) = @_;
	my $t = lit($tenant);
	is( $node->safe_psql(
			'postgres', qq{
SELECT sum(rows_copied) > 0 AND bool_or(NOT copied)
FROM clinic_migrate.tenant_tables WHERE tenant_id = $t}),
		't',
		"$label: the batches committed before the interruption are kept");
	is( $node->safe_psql(
			'postgres',
			"SELECT state FROM clinic_migrate.status WHERE tenant_id = $t"),
		'interrupted',
		"$label: status shows the tenant interrupted");
	is( $node->safe_psql(
			'postgres',
			"SELECT resumed FROM clinic_migrate.migrate_tenant($t)"),
		't',
		"$label: migrate_tenant resumes the copy");
	is( $node->safe_psql(
			'postgres',
			"SELECT state FROM clinic_migrate.status WHERE tenant_id = $t"),
		'copied',
		"$label: status shows the tenant copied");
	check_migrated($tenant, $label);
	is( $node->safe_psql(
			'postgres', qq{
SELECT string_agg(status, ',' ORDER BY run_id)
FROM clinic_migrate.runs WHERE tenant_id = $t AND action = 'migrate'}),
		'interrupted,completed',
		"$label: runs records the interrupted run and the completed one");
	return;
}

# 1. A plain migration of t2.
{
	my $res = $node->safe_psql('postgres',
		q{SELECT schema_name, tables > 0, rows_copied > 0, resumed
		  FROM clinic_migrate.migrate_tenant('t2')});
	is($res, 'tenant_t2|t|t|f', 't2: migrate_tenant copies the tenant');
	is( $node->safe_psql(
			'postgres',
			q{SELECT state FROM clinic_migrate.status WHERE tenant_id = 't2'}),
		'copied',
		't2: status shows the tenant copied');
	is( $node->safe_psql(
			'postgres', q{
SELECT string_agg(status, ',' ORDER BY run_id)
FROM clinic_migrate.runs WHERE tenant_id = 't2' AND action = 'migrate'}),
		'completed',
		't2: runs records one completed run');
	is( $node->safe_psql(
			'postgres', q{
SELECT count(*) FROM pg_stat_activity
WHERE backend_type = 'clinic_migrate' AND query LIKE 'clinic_migrate: copying%'}),
		'0',
		't2: no worker is left copying');
	ok( $node->poll_query_until(
			'postgres', q{SELECT syncing FROM clinic_migrate.status WHERE tenant_id = 't2'}),
		't2: its worker stays on to keep the copy in sync');
	check_migrated('t2', 't2');
}

# 2. The worker copying t1, the biggest tenant, is killed: the postmaster treats that as
# a crash and restarts every backend.
{
	my $s = start_slow_migration('t1', 500, 20);
	wait_mid_copy('t1', 't1 kill -9');

	my $pid = $node->safe_psql(
		'postgres', q{
SELECT pid FROM pg_stat_activity
WHERE backend_type = 'clinic_migrate' AND query LIKE 'clinic_migrate: copying%'});
	like($pid, qr/^\d+$/, 't1 kill -9: one copy worker shows in pg_stat_activity');

	my $log_offset = -s $node->logfile;
	ok(kill('KILL', $pid), "t1 kill -9: worker $pid killed");
	$node->wait_for_log(qr/all server processes terminated; reinitializing/,
		$log_offset);
	ok($node->poll_query_until('postgres', 'SELECT true'),
		't1 kill -9: the server accepts connections again');
	check_session_failed($s, 't1 kill -9');
	check_resume('t1', 't1 kill -9');
}

# 3. An immediate shutdown in the middle of the copy of t3.
{
	my $s = start_slow_migration('t3', 200, 40);
	wait_mid_copy('t3', 't3 immediate stop');
	$node->stop('immediate');
	check_session_failed($s, 't3 immediate stop');
	$node->start;
	check_resume('t3', 't3 immediate stop');
}

# 4. Tenant ids that are hostile as SQL, or whose schema name would not fit in 63 bytes
# (two of them alike in their first 99 characters).
{
	my $e = "\xc3\xa9";    # é in UTF-8
	my @hostile = (
		q{x'; DROP TABLE patients; --},
		$e x 100,
		($e x 99) . "\xc3\xa8",    # ...è
	);
	my $patients_before =
	  $node->safe_psql('postgres', 'SELECT count(*) FROM public.patients');
	my $n = 0;
	for my $id (@hostile)
	{
		my $t = lit($id);
		$n++;
		$node->safe_psql(
			'postgres', qq{
INSERT INTO public.tenants (tenant_id, name) VALUES ($t, 'Hostile clinic $n');
INSERT INTO public.staff (tenant_id, staff_no, name) VALUES ($t, 1, 'Dr. Quote '' Mark');
INSERT INTO public.patients (tenant_id, first_name, last_name, notes)
SELECT $t, 'Robert''); DROP TABLE patients;--', 'Tables ' || i, $t
FROM generate_series(1, 3 * $n) i;
INSERT INTO public.appointments (tenant_id, patient_id, staff_no, starts_at)
SELECT $t, id, 1, timestamptz '2024-01-01 10:00+00' + id * interval '1 hour'
FROM public.patients WHERE tenant_id = $t;
INSERT INTO public.appointment_notes (appointment_id, body)
SELECT id, 'note for ' || $t FROM public.appointments WHERE tenant_id = $t;
});
		is( $node->safe_psql(
				'postgres', qq{
SELECT m.schema_name = clinic_migrate.schema_name_for($t) AND m.tables > 0
       AND m.rows_copied > 0 AND NOT m.resumed
FROM clinic_migrate.migrate_tenant($t) m}),
			't',
			"hostile id $n: migrate_tenant copies the tenant");
		check_migrated($id, "hostile id $n");
	}
	$patients_before += 3 + 6 + 9;
	is( $node->safe_psql(
			'postgres', q{
SELECT to_regclass('public.patients') IS NOT NULL, count(*) FROM public.patients}),
		"t|$patients_before",
		'public.patients is still there with all its rows');
	is( $node->safe_psql(
			'postgres', q{
SELECT bool_and(octet_length(t.schema_name::text) <= 63),
       count(DISTINCT t.schema_name) = count(*),
       count(n.oid) = count(*),
       count(*)
FROM clinic_migrate.tenants t
LEFT JOIN pg_namespace n ON n.oid = t.schema_oid AND n.nspname = t.schema_name}),
		't|t|t|6',
		'schema names fit in 63 bytes, are distinct and exist');
}

$node->stop;
done_testing();
