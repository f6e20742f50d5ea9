# test/t/ClinicTest.pm: what the TAP tests that run pgbench against the clinic data set
# (test/gen/clinic.sql) share: an independent comparison of a tenant's rows in two
# places (EXCEPT ALL both ways, explicit columns), a ledger of every committed write
# and its verdict, validate_migration's mismatches, and a bounded poll.
#
#   use lib "$ENV{TESTDIR}/test/t";
#   use ClinicTest;
#   my $node = ClinicTest::start_clinic(conf => '...', tenants => 4, rows => 40000);
#   ClinicTest::init($node);        # or: the PostgreSQL::Test::Cluster to query
#   ClinicTest::create_ledger();    # cm_test.ledger, outside the migrated schema
#
# A "place" is 'shared' (the tenant's rows of the shared tables in public, notes
# through their appointment) or the name of a schema holding only the tenant's rows.
package ClinicTest;

use strict;
use warnings;

use Test::More;
use Time::HiRes qw(usleep);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;

our $node;

# The migrated tables: explicit columns, the key the ledger records, and the column
# an update's ledger entry records the value of (checked when the entry has one).
our %tables = (
	staff => {
		cols => 'tenant_id, staff_no, name, specialty_id, roles',
		key => 'staff_no',
	},
	patients => {
		cols => 'id, tenant_id, first_name, last_name, full_name, birth_date, email, '
		  . 'profile, photo, tags, notes, referred_by, balance, created_at',
		key => 'id',
		val => 'notes',
	},
	appointments => {
		cols => 'id, tenant_id, patient_id, staff_no, specialty_id, starts_at, '
		  . 'duration, status',
		key => 'id',
		val => 'status',
	},
	appointment_notes => {
		cols => 'id, appointment_id, body, written_at',
		key => 'id',
	},
);
our @table_order = qw(staff patients appointments appointment_notes);

sub init
{
	($node) = @_;
	return;
}

# A started node named 'main' with the extra postgresql.conf lines, clinic_migrate
# created in database postgres, and test/gen/clinic.sql loaded with that many tenants
# and rows (one test). Returns the node, also the one the other functions query.
sub start_clinic
{
	my (%opt) = @_;
	my $gen = "$ENV{TESTDIR}/test/gen/clinic.sql";
	die "the data generator $gen is missing" unless -f $gen;
	my $n = PostgreSQL::Test::Cluster->new('main');
	$n->init(extra => [ '--encoding=UTF8', '--no-locale' ]);
	$n->append_conf('postgresql.conf', $opt{conf});
	# CLINIC_CAPTURE_METHOD=wal: the same test with capture from the WAL
	$n->append_conf('postgresql.conf', capture_conf());
	$n->start;
	init($n);
	$n->safe_psql('postgres', 'CREATE EXTENSION clinic_migrate');
	$n->command_ok(
		[
			'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-v', "tenants=$opt{tenants}",
			'-v', "rows=$opt{rows}", '-d', 'postgres', '-f', $gen
		],
		'clinic.sql generates the shared tables');
	return $n;
}

# The capture method a test runs with (CLINIC_CAPTURE_METHOD, default trigger), and
# the postgresql.conf lines it needs.
sub capture_method
{
	return $ENV{CLINIC_CAPTURE_METHOD} // 'trigger';
}

sub capture_conf
{
	return "clinic_migrate.capture_method = trigger\n" if capture_method() eq 'trigger';
	# the sync worker's drains cut into transactions of a few changes: the
	# exactness checks of every WAL test run through that path too
	return "wal_level = logical\nmax_replication_slots = 10\nclinic_migrate.capture_method = wal\n"
	  . "clinic_migrate.drain_max_changes = 25\n";
}

# After a kill -9 of a backend: true once the server takes queries again.  Until the
# postmaster has restarted every backend, a psql fed its query on stdin may exit
# before reading it and IPC::Run dies of the broken pipe: each try is in an eval.
sub back_after_crash
{
	for (my $i = 0; $i < 1200; $i++)
	{
		return 1 if eval { $node->safe_psql('postgres', 'SELECT 1') eq '1' };
		usleep(100_000);
	}
	return 0;
}

# The tenants in a state captured the way the test runs (ok when all are).
sub check_capture_method
{
	my ($state, $name) = @_;
	is( $node->safe_psql(
			'postgres',
			"SELECT string_agg(DISTINCT coalesce(capture_method, '-'), ',') FROM clinic_migrate.tenants WHERE state = "
			  . lit($state)),
		capture_method(),
		"$name: the tenants $state are captured by " . capture_method());
	return;
}

# True once every change made so far is replayed: captured from the WAL, the slot read
# past the WAL written by now (capture_lag counts what has been read from the slot
# only; no slot: nothing to wait for); then, in a later query (whose snapshot sees what
# that read logged), nothing logged and not replayed.
sub wait_replayed
{
	my $lsn = $node->safe_psql('postgres', 'SELECT pg_current_wal_flush_lsn()');
	return poll(qq{SELECT coalesce((SELECT bool_and(confirmed_flush_lsn >= '$lsn') FROM pg_replication_slots
                                WHERE slot_name LIKE 'clinic\\_migrate\\_%'), true)})
	  && poll(q{SELECT coalesce(sum(capture_lag), 0) = 0 FROM clinic_migrate.status});
}

# A string as an SQL literal (standard_conforming_strings is on).
sub lit
{
	my ($s) = @_;
	$s =~ s/'/''/g;
	return "'$s'";
}

# The ledger: every write a test makes commits an entry in the same transaction.
sub create_ledger
{
	$node->safe_psql(
		'postgres', q{
CREATE SCHEMA IF NOT EXISTS cm_test;
CREATE TABLE cm_test.ledger (id bigserial PRIMARY KEY, tenant text NOT NULL,
                             tbl text NOT NULL, key bigint NOT NULL, op text NOT NULL,
                             val text);
});
	return;
}

# SELECT of one table's rows of a tenant in a place; $cols defaults to the explicit list.
sub rows_in
{
	my ($tbl, $tenant, $place, $cols) = @_;
	$cols //= $tables{$tbl}{cols};
	if ($place ne 'shared')
	{
		return "SELECT $cols FROM " . quote_ident($place) . ".$tbl";
	}
	my $t = lit($tenant);
	if ($tbl eq 'appointment_notes')
	{
		my $c = join(', ', map { $_ eq 'NULL' ? $_ : "n.$_" } split(/, /, $cols));
		return "SELECT $c FROM public.appointment_notes n "
		  . "JOIN public.appointments a ON a.id = n.appointment_id WHERE a.tenant_id = $t";
	}
	return "SELECT $cols FROM public.$tbl WHERE tenant_id = $t";
}

sub quote_ident
{
	my ($s) = @_;
	return $s if $s =~ /^[a-z_][a-z0-9_]*$/;
	$s =~ s/"/""/g;
	return qq{"$s"};
}

# "staff 0/0, patients 0/0, ...": the tenant's rows in place $a missing from place $b
# / rows of $b missing from $a, EXCEPT ALL over explicit columns.
sub comparison_query
{
	my ($tenant, $a, $b) = @_;
	my @parts;
	for my $tbl (@table_order)
	{
		my $ra = rows_in($tbl, $tenant, $a);
		my $rb = rows_in($tbl, $tenant, $b);
		push @parts,
		  "SELECT '$tbl' || ' ' || (SELECT count(*) FROM ($ra EXCEPT ALL $rb) d) || '/'"
		  . " || (SELECT count(*) FROM ($rb EXCEPT ALL $ra) d)";
	}
	return 'SELECT string_agg(x, \', \') FROM (' . join(' UNION ALL ', @parts) . ') r(x)';
}

sub zero_comparison
{
	return join(', ', map { "$_ 0/0" } @table_order);
}

# The rows that differ between two places, for a failure message.
sub diag_differences
{
	my ($tenant, $a, $b) = @_;
	for my $tbl (@table_order)
	{
		my $ra = rows_in($tbl, $tenant, $a);
		my $rb = rows_in($tbl, $tenant, $b);
		my $out = $node->safe_psql(
			'postgres', qq{
SELECT '$a only: ' || d::text FROM ($ra EXCEPT ALL $rb) d
UNION ALL
SELECT '$b only: ' || d::text FROM ($rb EXCEPT ALL $ra) d
LIMIT 20});
		diag("$tbl:\n$out") if $out ne '';
	}
	return;
}

# validate_migration: the tables that do not match, "none" if all do.
sub validate_mismatches
{
	my ($tenant) = @_;
	return $node->safe_psql(
		'postgres', q{
SELECT coalesce(string_agg(table_name || ': ' || source_rows || ' / ' || target_rows
                           || ' missing ' || coalesce(missing_keys::text, '-')
                           || ' extra ' || coalesce(extra_keys::text, '-')
                           || ' different ' || coalesce(different_keys::text, '-'),
                           E'\n' ORDER BY table_name)
                FILTER (WHERE match IS NOT TRUE), 'none')
       || ' of ' || count(*)
FROM clinic_migrate.validate_migration(} . lit($tenant) . ')');
}

# The ledger's verdict for a tenant in a place: for every (table, key) of the tenant,
# its last entry says whether the key must be there ('ins', 'upd') or not ('del'),
# and an 'upd' entry with a value says which.  Returns "tbl op entries wrong" lines.
sub ledger_check
{
	my ($tenant, $place) = @_;
	my @parts;
	for my $tbl (@table_order)
	{
		my $key = $tables{$tbl}{key};
		my $val = $tables{$tbl}{val} // 'NULL';
		my $rows = rows_in($tbl, $tenant, $place, "$key, $val");
		push @parts, qq{
SELECT l.tbl, l.op, count(*) AS entries,
       count(*) FILTER (WHERE (l.op = 'del') = (r.k IS NOT NULL)
                           OR (l.op = 'upd' AND l.val IS NOT NULL AND r.v::text IS DISTINCT FROM l.val))
         AS wrong
FROM last l LEFT JOIN ($rows) r(k, v) ON r.k = l.key
WHERE l.tbl = '$tbl'
GROUP BY l.tbl, l.op};
	}
	return $node->safe_psql(
		'postgres', q{
WITH last AS (
    SELECT DISTINCT ON (tbl, key) tbl, key, op, val
    FROM cm_test.ledger WHERE tenant = } . lit($tenant) . q{
    ORDER BY tbl, key, id DESC)
SELECT string_agg(tbl || ' ' || op || ' ' || entries || ' ' || wrong, E'\n' ORDER BY tbl, op)
FROM (} . join(' UNION ALL ', @parts) . ') c');
}

# Ledger lines "tbl op entries wrong" with no wrong entry.
sub ledger_all_right
{
	my ($lines) = @_;
	return 0 if $lines eq '';
	for my $l (split /\n/, $lines)
	{
		my (undef, undef, undef, $wrong) = split / /, $l;
		return 0 if $wrong != 0;
	}
	return 1;
}

# poll_query_until with a bound fit for these tests: what they wait for takes about
# a second (sync_interval is 100 ms), so a failure should not take minutes.
sub poll
{
	my ($query, $expected) = @_;
	local $PostgreSQL::Test::Utils::timeout_default = 30;
	return $node->poll_query_until('postgres', $query, $expected);
}

1;
