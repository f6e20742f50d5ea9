# 011_partitions_under_load: a tenant whose rows live in partitioned tables moves
# while pgbench, as an application role with the README's grants, writes every
# tenant: inserts through the partitioned table and straight into a partition,
# updates that move rows to another partition, deletes, and a child table whose
# foreign key points at a partitioned table. Meanwhile the monthly deploy makes a
# new partition and a retention job drops the oldest one. The tenant's rows then
# match the shared ones exactly (EXCEPT ALL both ways), validation agrees, the
# tenant cuts over, takes routed writes into its own partitions, rolls back with
# nothing lost, moves again and finalizes. Other tenants' rows never change.
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
clinic_migrate.sync_interval = 100
});
$node->start;
$node->safe_psql(
	'postgres', q{
CREATE EXTENSION clinic_migrate;
CREATE TABLE tenants (tenant_id text PRIMARY KEY);
INSERT INTO tenants SELECT 't' || i FROM generate_series(1, 4) i;
CREATE TABLE events (tenant_id text NOT NULL REFERENCES tenants, id bigserial,
                     at timestamptz NOT NULL, kind text, n integer NOT NULL DEFAULT 0,
                     PRIMARY KEY (tenant_id, id, at)) PARTITION BY RANGE (at);
CREATE TABLE events_m1 PARTITION OF events FOR VALUES FROM ('2027-01-01 00:00+00') TO ('2027-02-01 00:00+00');
CREATE TABLE events_m2 PARTITION OF events FOR VALUES FROM ('2027-02-01 00:00+00') TO ('2027-03-01 00:00+00');
CREATE TABLE events_m3 PARTITION OF events FOR VALUES FROM ('2027-03-01 00:00+00') TO ('2027-04-01 00:00+00');
CREATE TABLE events_rest PARTITION OF events DEFAULT;
CREATE INDEX ON events (tenant_id, kind);
CREATE TABLE orders (tenant_id text NOT NULL REFERENCES tenants, id integer NOT NULL,
                     region text NOT NULL, total integer NOT NULL,
                     PRIMARY KEY (tenant_id, id, region)) PARTITION BY LIST (region);
CREATE TABLE orders_us PARTITION OF orders FOR VALUES IN ('us');
CREATE TABLE orders_eu PARTITION OF orders FOR VALUES IN ('eu');
CREATE TABLE order_lines (id bigserial PRIMARY KEY, tenant_id text NOT NULL, order_id integer NOT NULL,
                          region text NOT NULL, qty integer NOT NULL,
                          FOREIGN KEY (tenant_id, order_id, region) REFERENCES orders ON UPDATE CASCADE ON DELETE CASCADE);
CREATE INDEX ON order_lines (tenant_id, order_id, region);
INSERT INTO events (tenant_id, at, kind)
  SELECT 't' || (1 + i % 4), '2027-01-01 00:00+00'::timestamptz + (i % 100) * interval '1 day', 'k' || i % 7
  FROM generate_series(1, 20000) i;
INSERT INTO orders SELECT 't' || (1 + i % 4), i, CASE WHEN i % 2 = 0 THEN 'us' ELSE 'eu' END, i FROM generate_series(1, 2000) i;
INSERT INTO order_lines (tenant_id, order_id, region, qty) SELECT tenant_id, id, region, 1 FROM orders;
CREATE ROLE app LOGIN;
GRANT USAGE ON SCHEMA public TO app;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO app;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO app;
});
# t3 and t4 are never written: their orders and lines must not change
my $others_q = q{SELECT count(*), sum(hashtext(o::text)) FROM (SELECT * FROM orders WHERE tenant_id IN ('t3', 't4')
  UNION ALL SELECT NULL, id::int, region, qty FROM order_lines WHERE tenant_id IN ('t3', 't4')) o};
my $others_before = $node->safe_psql('postgres', $others_q);

# Every transaction touches two partitioned tables and a child, in either order;
# tenants t1 and t2 (t2 never moves: its rows are compared at the end).
my $script = "$PostgreSQL::Test::Utils::tmp_check/011_load.sql";
PostgreSQL::Test::Utils::append_to_file(
	$script, q{
\set t random(1, 2)
\set e random(1, 20000)
\set o random(1, 2000)
\set d random(0, 99)
BEGIN;
INSERT INTO events (tenant_id, at, kind) VALUES ('t' || :t, '2027-01-01 00:00+00'::timestamptz + :d * interval '1 day', 'bench');
UPDATE events SET at = at + interval '31 days', n = n + 1 WHERE tenant_id = 't' || :t AND id = :e;
INSERT INTO events_m2 (tenant_id, at, kind) VALUES ('t' || :t, '2027-02-14 00:00+00', 'direct');
UPDATE orders SET region = CASE region WHEN 'us' THEN 'eu' ELSE 'us' END, total = total + 1
 WHERE tenant_id = 't' || :t AND id = :o;
INSERT INTO order_lines (tenant_id, order_id, region, qty)
 SELECT tenant_id, id, region, 2 FROM orders WHERE tenant_id = 't' || :t AND id = :o;
COMMIT;
BEGIN;
DELETE FROM order_lines WHERE id = (SELECT max(id) FROM order_lines WHERE tenant_id = 't' || :t AND qty = 2);
DELETE FROM events WHERE tenant_id = 't' || :t AND id = :e + 1;
COMMIT;
});

sub start_load
{
	my ($secs) = @_;
	my %b = (out => '', err => '');
	$b{h} = IPC::Run::start(
		[
			'/usr/lib/postgresql/15/bin/pgbench', '-n', '-c', '3', '-j', '3', '-T', $secs,
			'--max-tries=0', '-h', $node->host, '-p', $node->port, '-U', 'app',
			'-f', $script, 'postgres'
		],
		'<', \undef, '>', \$b{out}, '2>', \$b{err},
		IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
	return \%b;
}

sub finish_load
{
	my ($b, $name) = @_;
	my $ok = eval { $b->{h}->finish; };
	my $fail = $@;
	$b->{h}->kill_kill if $fail;
	ok($ok && !$fail, "$name: pgbench exits with 0")
	  or diag("pgbench: " . ($fail || "exit $?") . "\n$b->{out}\n$b->{err}");
	like($b->{out}, qr/^number of failed transactions: 0 /m, "$name: no transaction failed");
	return;
}

# t1's rows in the shared tables and in its schema, EXCEPT ALL both ways:
# "events a/b, ...", a rows of the shared tables missing from the schema, b the reverse
sub differences
{
	my ($schema) = @_;
	my @parts;
	for my $t (['events', 'tenant_id, id, at, kind, n'],
		['orders', 'tenant_id, id, region, total'],
		['order_lines', 'id, tenant_id, order_id, region, qty'])
	{
		my ($tbl, $cols) = @$t;
		push @parts,
		    "SELECT '$tbl ' || (SELECT count(*) FROM (SELECT $cols FROM public.$tbl WHERE tenant_id = 't1' "
		  . "EXCEPT ALL SELECT $cols FROM $schema.$tbl) x) || '/' || "
		  . "(SELECT count(*) FROM (SELECT $cols FROM $schema.$tbl "
		  . "EXCEPT ALL SELECT $cols FROM public.$tbl WHERE tenant_id = 't1') y) AS d";
	}
	return $node->safe_psql('postgres', 'SELECT string_agg(d, \', \') FROM (' . join(' UNION ALL ', @parts) . ') z');
}

# 1. t1 copies in small batches while pgbench writes; a partition is made and one dropped meanwhile.
my $load = start_load(12);
ok($node->poll_query_until('postgres', q{SELECT count(*) > 50 FROM events WHERE kind = 'bench'}), 'pgbench writes');
my ($mout, $merr) = ('', '');
my $migrate = IPC::Run::start(
	[
		'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-h', $node->host, '-p', $node->port, '-d', 'postgres',
		'-c', 'SET clinic_migrate.batch_size = 500', '-c', 'SET clinic_migrate.batch_delay = 20',
		'-c', "SELECT schema_name FROM clinic_migrate.migrate_tenant('t1')"
	],
	'<', \undef, '>', \$mout, '2>', \$merr,
	IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
ok($node->poll_query_until('postgres',
		q{SELECT count(*) > 0 FROM clinic_migrate.tenants WHERE tenant_id = 't1' AND state IN ('copying', 'copied')}),
	'the copy is under way') or diag($merr);
# a month no row reaches (the default partition must hold none of it)
$node->safe_psql('postgres',
	q{CREATE TABLE events_m4 PARTITION OF events FOR VALUES FROM ('2031-01-01 00:00+00') TO ('2031-02-01 00:00+00')});
ok(eval { $migrate->finish; 1 }, 'migrate_tenant finishes under load') or diag($merr);
$node->safe_psql('postgres', q{DROP TABLE events_m1});
finish_load($load, 'copy');

is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_class WHERE relname = 'events_m4' AND relnamespace = 'tenant_t1'::regnamespace}),
	'1', 'the new partition reached the copy');
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_class WHERE relname = 'events_m1'}),
	'0', 'the dropped partition left the copy too');
$node->safe_psql('postgres', q{SELECT clinic_migrate.sync_now('t1')});
is(differences('tenant_t1'), 'events 0/0, orders 0/0, order_lines 0/0', 't1 copy equals its shared rows, row for row');
is($node->safe_psql('postgres',
	q{SELECT string_agg(table_name::text || ':' || match, ', ' ORDER BY table_name::text) FROM clinic_migrate.validate_migration('t1')}),
	'events:true, order_lines:true, orders:true', 'validate_migration agrees');
cmp_ok($node->safe_psql('postgres', q{SELECT count(*) FROM tenant_t1.events WHERE n > 0}), '>', 0,
	'rows that moved between partitions were replayed');

# 2. Cutover, routed writes into t1's own partitions, rollback, move again, finalize.
$node->safe_psql('postgres', q{SELECT clinic_migrate.cutover('t1')});
$node->safe_psql('postgres', q{
SET ROLE app;
BEGIN;
SELECT clinic_migrate.set_tenant('t1', true);
INSERT INTO events (tenant_id, at, kind) VALUES ('t1', '2031-01-02 00:00+00', 'after cutover');
UPDATE events SET at = at + interval '31 days' WHERE kind = 'direct' AND at < '2027-03-01';
UPDATE orders SET region = 'us' WHERE region = 'eu' AND id < 100;
COMMIT;
});
$node->safe_psql('postgres', q{SELECT clinic_migrate.sync_now('t1')});
is(differences('tenant_t1'), 'events 0/0, orders 0/0, order_lines 0/0',
	'after cutover: the reverse replay brought every routed write back to the shared rows');
$node->safe_psql('postgres', q{SELECT clinic_migrate.rollback_tenant('t1')});
is($node->safe_psql('postgres', q{SELECT tableoid::regclass FROM events WHERE kind = 'after cutover'}),
	'events_m4', 'the routed write is in the shared partition of its month');
$node->safe_psql('postgres', q{SELECT clinic_migrate.migrate_tenant('t1')});
$node->safe_psql('postgres', q{SELECT clinic_migrate.cutover('t1')});
$node->safe_psql('postgres', q{SELECT clinic_migrate.finalize_tenant('t1')});
is($node->safe_psql('postgres', q{SELECT count(*) FROM events WHERE tenant_id = 't1'}), '0', 'finalize: t1 left the shared partitions');
cmp_ok($node->safe_psql('postgres', q{SELECT count(*) FROM tenant_t1.events}), '>', 4000, 't1 has its rows');
is($node->safe_psql('postgres', $others_q), $others_before, 'tenants t3 and t4 unchanged');

$node->stop;
done_testing();
