# 012_cic_during_copy: CREATE INDEX CONCURRENTLY of a shared table while a tenant's copy
# starts (migrate_tenant, called synchronously). The copy waits for the transactions
# that may have written the shared tables before its capture: those holding ROW
# EXCLUSIVE. CREATE INDEX CONCURRENTLY holds SHARE UPDATE EXCLUSIVE and writes no row;
# it also waits for the transaction that called migrate_tenant. Counted as a writer
# (before 0.7), each waited for the other until the copy gave up with 55P03 after
# clinic_migrate.lock_retry_time. Now both finish, and the index reaches the copy.
use strict;
use warnings;

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('main');
$node->init(extra => [ '--encoding=UTF8', '--no-locale' ]);
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'clinic_migrate'
max_worker_processes = 16
max_prepared_transactions = 2
clinic_migrate.sync_interval = 100
});
$node->start;
$node->safe_psql(
	'postgres', q{
CREATE EXTENSION clinic_migrate;
CREATE TABLE tenants (tenant_id text PRIMARY KEY);
INSERT INTO tenants VALUES ('t0'), ('t1'), ('t2'), ('t3');
CREATE TABLE notes (tenant_id text NOT NULL REFERENCES tenants, id bigserial, body text,
                    PRIMARY KEY (tenant_id, id));
INSERT INTO notes (tenant_id, body) SELECT 't' || (i % 3), 'note ' || i FROM generate_series(1, 3000) i;
});
# t0 moving: the capture is on the shared table before t1's copy starts
$node->safe_psql('postgres', q{SELECT clinic_migrate.migrate_tenant('t0')});

# A transaction that holds SHARE UPDATE EXCLUSIVE and wrote nothing (what VACUUM,
# ANALYZE and CREATE INDEX CONCURRENTLY hold; prepared, so it holds it with no
# session): t1's copy does not wait for it. Before 0.7 it did, and gave up.
$node->safe_psql('postgres', q{
BEGIN;
LOCK TABLE notes IN SHARE UPDATE EXCLUSIVE MODE;
PREPARE TRANSACTION 'not_a_writer';
});
my ($out, $err) = ('', '');
my $rc = $node->psql('postgres',
	"SET clinic_migrate.lock_retry_time = 3;\nSELECT schema_name FROM clinic_migrate.migrate_tenant('t1');",
	stdout => \$out, stderr => \$err);
is($rc, 0, 'the copy does not wait for a SHARE UPDATE EXCLUSIVE holder') or diag($err);
$node->safe_psql('postgres', q{COMMIT PREPARED 'not_a_writer'});

# a writer that has not committed (prepared: it holds ROW EXCLUSIVE with no session)
$node->safe_psql('postgres', q{
BEGIN;
INSERT INTO notes (tenant_id, body) VALUES ('t3', 'in flight');
PREPARE TRANSACTION 'writer';
});

my %run;
sub start_psql
{
	my ($name, @cmds) = @_;
	my %r = (out => '', err => '');
	$r{h} = IPC::Run::start(
		[
			'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-h', $node->host, '-p', $node->port,
			'-d', 'postgres', map { ('-c', $_) } @cmds
		],
		'<', \undef, '>', \$r{out}, '2>', \$r{err},
		IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
	$run{$name} = \%r;
	return;
}

# the index build waits for the writer
start_psql('cic', 'CREATE INDEX CONCURRENTLY notes_body ON notes (body)');
ok($node->poll_query_until('postgres',
		q{SELECT count(*) > 0 FROM pg_stat_activity WHERE query LIKE 'CREATE INDEX CONCURRENTLY%' AND wait_event_type = 'Lock'}),
	'CREATE INDEX CONCURRENTLY waits for the writer');

# t2's copy starts and waits for the writer too (not for the index build)
start_psql('migrate', 'SET clinic_migrate.lock_retry_time = 10',
	q{SELECT schema_name FROM clinic_migrate.migrate_tenant('t2')});
ok($node->poll_query_until('postgres',
		q{SELECT count(*) > 0 FROM pg_stat_activity WHERE query LIKE 'clinic_migrate: waiting for transactions older than the capture%'}),
	'the copy waits for the transactions older than its capture');

# the writer commits: the index build goes on, and waits for migrate_tenant's caller;
# the copy goes on without waiting for the index build
$node->safe_psql('postgres', q{COMMIT PREPARED 'writer'});
for my $name ('migrate', 'cic')
{
	my $ok = eval { $run{$name}{h}->finish; 1 };
	ok($ok && $? == 0, "$name finishes") or diag("$name: $@ $run{$name}{err}");
}
like($run{migrate}{out}, qr/tenant_t2/, 'migrate_tenant returned the schema');
is($node->safe_psql('postgres', q{SELECT indisvalid FROM pg_index WHERE indexrelid = 'public.notes_body'::regclass}),
	't', 'the shared index is valid');
for my $t ('t1', 't2')
{
	$node->safe_psql('postgres', qq{SELECT clinic_migrate.sync_now('$t')});
	is($node->safe_psql('postgres',
			qq{SELECT string_agg(table_name::text || ':' || match, ', ') FROM clinic_migrate.validate_migration('$t')}),
		'notes:true', "$t validates");
}

$node->stop;
done_testing();
