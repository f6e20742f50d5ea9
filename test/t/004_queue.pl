# test/t/004_queue.pl: the job queue worked by the scheduler, scheduled by pg_cron,
# through a worker killed with kill -9 and a server stopped with -m immediate.
# pg_cron (Debian's postgresql-15-cron) queues 20 of 22 tenants with
# enqueue_pending(20); two workers copy them in small throttled batches; one worker is
# killed mid-copy (every backend restarts), later the server is stopped immediately
# mid-batch and started again. Every job must end done, no tenant may ever have two
# workers, at most two jobs may run at once, the interrupted copies must resume from
# their checkpoints, and every tenant must validate. Then: migrate_tenant through the
# queue, a paused queue and a cancelled job, validate and cutover jobs, alerts, metrics
# and every query of monitoring/postgres_exporter.yaml.
# Data: test/gen/clinic.sql with 22 tenants and about 66,000 rows.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use lib "$ENV{TESTDIR}/test/t";
use ClinicTest;

my $node = ClinicTest::start_clinic(
	tenants => 22,
	rows => 66000,
	conf => q{
shared_preload_libraries = 'clinic_migrate, pg_cron'
cron.database_name = 'postgres'
cron.use_background_workers = on
clinic_migrate.databases = 'postgres'
clinic_migrate.max_workers = 2
clinic_migrate.scheduler_interval = 200
clinic_migrate.sync_interval = 200
clinic_migrate.batch_size = 400
clinic_migrate.batch_delay = 15
max_worker_processes = 24
restart_after_crash = on
});
like(
	$node->safe_psql(
		'postgres',
		q{SELECT query FROM pg_stat_activity WHERE backend_type = 'clinic_migrate scheduler'}),
	qr/^clinic_migrate: /,
	'the scheduler of database postgres runs');

# The crashes must hit a worker in the middle of a batch of a tenant that already
# has a checkpoint committed, or nothing is proved about resuming. A copy of these
# small tenants takes a few batches, so chance alone does not place a crash there
# (a worker seen copying had often written its last batch before the crash came).
# The workers stop at the pause point copy_batch (a batch's rows written, its
# checkpoint not yet committed) while this test holds that point's advisory lock;
# letting go of it and taking it again lets every held worker commit one batch and
# stop at its next one.
my $pause_key = q{pg_catalog.hashtext('clinic_migrate:copy_batch')};
my $holder;
sub hold_batches
{
	$holder = $node->background_psql('postgres');
	$holder->query_safe("SELECT pg_advisory_lock($pause_key)");
	return;
}

hold_batches();
$node->safe_psql('postgres', q{ALTER SYSTEM SET clinic_migrate.pause_points = 'copy_batch'});
$node->safe_psql('postgres', q{SELECT pg_reload_conf()});

# 1. pg_cron: the README's schedule, and one that fires at the next minute.
$node->safe_psql('postgres', 'CREATE EXTENSION pg_cron');
is( $node->safe_psql(
		'postgres', q{
SELECT cron.schedule('migrate-10', '*/5 * * * *', $$SELECT clinic_migrate.enqueue_pending(10)$$) > 0;
SELECT schedule || ' ' || command FROM cron.job WHERE jobname = 'migrate-10';
SELECT cron.unschedule('migrate-10');}),
	"t\n*/5 * * * * SELECT clinic_migrate.enqueue_pending(10)\nt",
	'pg_cron takes the README\'s schedule');
$node->safe_psql('postgres',
	q{SELECT cron.schedule('migrate-all', '* * * * *', $$SELECT clinic_migrate.enqueue_pending(20)$$)});
{
	local $PostgreSQL::Test::Utils::timeout_default = 100;
	ok( $node->poll_query_until(
			'postgres', q{SELECT count(*) = 20 FROM clinic_migrate.job_queue}),
		'pg_cron ran enqueue_pending(20) at the next minute: 20 jobs');
}
$node->safe_psql('postgres', q{SELECT cron.unschedule('migrate-all')});
is( $node->safe_psql(
		'postgres', q{
SELECT string_agg(tenant_id, ',' ORDER BY tenant_id)
FROM public.tenants t WHERE NOT EXISTS (SELECT 1 FROM clinic_migrate.job_queue j
                                        WHERE j.tenant_id = t.tenant_id)}),
	't8,t9', 'the 20 are the first of the registry, in its order');

# Watch the workers while they run: never two on one tenant, never more than two.
my ($max_running, $max_per_tenant) = (0, 0);
sub sample
{
	my ($running, $per_tenant) = split /\|/,
	  $node->safe_psql(
		'postgres', q{
SELECT (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'clinic_migrate'),
       coalesce((SELECT max(n) FROM (SELECT count(*) AS n FROM pg_stat_activity
                                     WHERE backend_type = 'clinic_migrate'
                                       AND query LIKE 'clinic_migrate: copying %'
                                     GROUP BY split_part(split_part(query, ' ', 3), '.', 1)) x), 0)});
	$max_running = $running if $running > $max_running;
	$max_per_tenant = $per_tenant if $per_tenant > $max_per_tenant;
	return;
}

# Poll until a worker is held mid-batch in a tenant with a checkpoint committed,
# sampling meanwhile; its pid and schema.
sub held_worker
{
	for (my $i = 0; $i < 600; $i++)
	{
		sample();
		my @held = split /\n/, $node->safe_psql(
			'postgres', q{
SELECT a.pid || ' ' || t.schema_name || ' ' ||
       ((SELECT sum(tt.rows_copied) FROM clinic_migrate.tenant_tables tt
         WHERE tt.tenant_id = t.tenant_id) > 0)
FROM pg_stat_activity a
JOIN clinic_migrate.job_queue j ON j.worker_pid = a.pid AND j.state = 'running'
JOIN clinic_migrate.tenants t ON t.tenant_id = j.tenant_id
WHERE a.backend_type = 'clinic_migrate'
  AND a.query = 'clinic_migrate: at pause point copy_batch'
ORDER BY a.pid});
		foreach my $w (@held)
		{
			my ($pid, $schema, $checkpointed) = split / /, $w;
			next unless $checkpointed eq 'true';
			# The copy commits its batches without waiting for the WAL flush
			# (a batch lost in a crash is copied again): a commit of our own
			# that waits for it flushes theirs too, so that the checkpoint
			# seen here survives the crash the test is about to cause.
			$node->safe_psql('postgres', 'SET synchronous_commit = on; SELECT txid_current()');
			return ($pid, $schema);
		}
		# held only at their first batches: let each commit one and stop at the next
		$holder->query_safe("SELECT pg_advisory_unlock($pause_key); SELECT pg_advisory_lock($pause_key)")
		  if @held;
		usleep(50_000);
	}
	return;
}

# 2. kill -9 of a worker mid-batch: every backend restarts (the lock's holder too);
# the job is found and resumed. The queue is paused across the restart so that no
# job runs before the lock is held again.
my ($pid, $killed_schema) = held_worker();
ok($pid, "a worker is held mid-batch in $killed_schema") or BAIL_OUT('no worker started copying');
$node->safe_psql('postgres', 'SELECT clinic_migrate.pause_queue()');
kill 'KILL', $pid;
ok(ClinicTest::back_after_crash(), 'the server is back after the worker was killed');
eval { $holder->quit; };
hold_batches();
$node->safe_psql('postgres', 'SELECT clinic_migrate.resume_queue()');

# 3. an immediate stop mid-batch, and a start; the workers then run freely.
my ($pid2, $stopped_schema) = held_worker();
ok($pid2, "a worker is held mid-batch in $stopped_schema")
  or BAIL_OUT('no worker copies after the restart');
$node->stop('immediate');
eval { $holder->quit; };
$node->start;
$node->safe_psql('postgres', q{ALTER SYSTEM RESET clinic_migrate.pause_points});
$node->safe_psql('postgres', q{SELECT pg_reload_conf()});

# 4. every job ends done.
for (my $i = 0; $i < 3000; $i++)
{
	sample();
	last if $node->safe_psql('postgres',
		q{SELECT count(*) FILTER (WHERE state <> 'done') FROM clinic_migrate.job_queue}) eq '0';
	usleep(100_000);
}
is( $node->safe_psql(
		'postgres',
		q{SELECT string_agg(state || ' ' || n, ', ' ORDER BY state) FROM
          (SELECT state, count(*) AS n FROM clinic_migrate.job_queue GROUP BY state) s}),
	'done 20', 'every job is done');
ok($max_running >= 2, "two workers ran at once ($max_running seen)");
# the first two jobs raced to make the registry guard (0.9): one made it, none failed on it
is( $node->safe_psql(
		'postgres', q{
SELECT string_agg(tgname, ', ' ORDER BY tgname) FROM pg_trigger
WHERE tgrelid = 'public.tenants'::regclass AND tgname LIKE 'clinic\_migrate\_registry%'}),
	'clinic_migrate_registry_guard, clinic_migrate_registry_guard_truncate',
	'two workers made one registry guard');
is($node->safe_psql('postgres', q{SELECT count(*) FROM clinic_migrate.runs WHERE error LIKE '%registry_guard%'}),
	'0', 'no run failed on the registry guard');
ok($max_running <= 2 + 1, "never more than max_workers workers copying, plus a finishing one ($max_running)");
is($max_per_tenant, 1, 'never two workers on one tenant');
is( $node->safe_psql(
		'postgres', q{
SELECT count(*) FROM clinic_migrate.runs a JOIN clinic_migrate.runs b
  ON a.tenant_id = b.tenant_id AND a.run_id < b.run_id
 AND tstzrange(a.started_at, coalesce(a.completed_at, 'infinity')) &&
     tstzrange(b.started_at, coalesce(b.completed_at, 'infinity'))}),
	'0', 'no two runs of a tenant overlap');
my $interrupted = $node->safe_psql(
	'postgres', q{
SELECT string_agg(DISTINCT r.tenant_id, ',' ORDER BY r.tenant_id)
FROM clinic_migrate.runs r WHERE r.action = 'migrate' AND r.status = 'interrupted'});
ok($interrupted ne '', "the interrupted copies are recorded ($interrupted)");
my $resumed = $killed_schema eq $stopped_schema ? 1 : 2;
is( $node->safe_psql(
		'postgres', qq{
SELECT count(DISTINCT r.tenant_id) FROM clinic_migrate.runs r
WHERE r.action = 'migrate' AND r.status = 'interrupted'
  AND r.schema_name IN ('$killed_schema', '$stopped_schema')
  AND EXISTS (SELECT 1 FROM clinic_migrate.runs c
              WHERE c.tenant_id = r.tenant_id AND c.run_id > r.run_id AND c.status = 'completed'
                AND c.rows_copied < (SELECT sum(tt.rows_total) FROM clinic_migrate.tenant_tables tt
                                     WHERE tt.tenant_id = r.tenant_id))}),
	$resumed,
	"$killed_schema and $stopped_schema were interrupted and resumed after their checkpoints (their next runs copied less than all)");
# A job claimed just before a crash may have had no run yet: it counts an attempt too.
is( $node->safe_psql(
		'postgres', q{
SELECT count(*) FILTER (WHERE j.attempts > 1) <= 4,
       bool_and(j.attempts > 1) FILTER (WHERE j.tenant_id IN (SELECT tenant_id FROM clinic_migrate.runs
                                                              WHERE status = 'interrupted'))
FROM clinic_migrate.jobs j}),
	't|t', 'the interrupted jobs, and at most the 4 running at the two crashes, ran twice');
is( $node->safe_psql(
		'postgres', q{
SELECT count(*) FROM clinic_migrate.job_queue j,
     LATERAL clinic_migrate.validate_migration(j.tenant_id) v
WHERE NOT v.match}),
	'0', 'every table of the 20 tenants validates');
ClinicTest::check_capture_method('copied', 'queue');

# The scheduler keeps a sync worker for the copied tenants: stopped, it comes back.
my $sync_pid = $node->safe_psql('postgres',
	q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'clinic_migrate sync'});
ok($sync_pid ne '', 'a sync worker keeps the copied tenants in step');
$node->safe_psql('postgres', "SELECT pg_terminate_backend($sync_pid)");
ok( $node->poll_query_until(
		'postgres', qq{
SELECT count(*) = 1 FROM pg_stat_activity
WHERE backend_type = 'clinic_migrate sync' AND pid <> $sync_pid}),
	'the scheduler starts the sync worker again');

# 5. migrate_tenant, while the scheduler runs, goes through the queue.
is( $node->safe_psql(
		'postgres', q{SELECT schema_name, rows_copied > 0 FROM clinic_migrate.migrate_tenant('t8')}),
	'tenant_t8|t', 'migrate_tenant(t8) through the queue');
is( $node->safe_psql(
		'postgres',
		q{SELECT action, state, priority FROM clinic_migrate.jobs WHERE tenant_id = 't8'}),
	'migrate|done|100', 'migrate_tenant(t8) ran as a job of the queue');

# 6. a paused queue starts nothing; a queued job is cancelled.
is($node->safe_psql('postgres', 'SELECT clinic_migrate.pause_queue()'), 't', 'pause_queue');
my $job9 = $node->safe_psql('postgres', q{SELECT * FROM clinic_migrate.enqueue(ARRAY['t9'])});
is($node->safe_psql('postgres', "SELECT clinic_migrate.wait($job9, interval '1 second')"),
	'queued', 'the paused queue does not start the job');
is($node->safe_psql('postgres', "SELECT clinic_migrate.cancel($job9)"), 't', 'cancel');
is($node->safe_psql('postgres', "SELECT clinic_migrate.wait($job9)"), 'cancelled', 'cancelled');
is($node->safe_psql('postgres', 'SELECT clinic_migrate.resume_queue()'), 't', 'resume_queue');

# 7. validate and cutover jobs.
my ($jv, $jc) = split /\n/,
  $node->safe_psql('postgres',
	q{SELECT * FROM clinic_migrate.enqueue(ARRAY['t1', 't2'], 'validate')});
is($node->safe_psql('postgres', "SELECT clinic_migrate.wait($jv, interval '60 seconds')"),
	'done', 'a validate job is done');
is( $node->safe_psql(
		'postgres', "SELECT result->>'tables' FROM clinic_migrate.job_queue WHERE job_id = $jv"),
	'4', 'it validated 4 tables');
$node->safe_psql('postgres', "SELECT clinic_migrate.wait($jc, interval '60 seconds')");
my $jcut = $node->safe_psql('postgres', q{SELECT * FROM clinic_migrate.enqueue(ARRAY['t2'], 'cutover')});
is($node->safe_psql('postgres', "SELECT clinic_migrate.wait($jcut, interval '60 seconds')"),
	'done', 'a cutover job is done');
is($node->safe_psql('postgres', q{SELECT clinic_migrate.tenant_schema('t2')}),
	'tenant_t2', 't2 lives in tenant_t2');

# 8. monitoring: no alert, the dashboard, metrics, the exporter's queries.
is($node->safe_psql('postgres', 'SELECT count(*) FROM clinic_migrate.alerts()'), '0', 'no alert');
is( $node->safe_psql(
		'postgres',
		q{SELECT tenants_total, tenants_migrated, tenants_cut_over, failed, jobs_queued FROM clinic_migrate.dashboard}),
	'22|21|1|0|0', 'the dashboard: 22 tenants, 21 migrated, 1 cut over, no failure');
like(
	$node->safe_psql('postgres', q{SELECT string_agg(m, E'\n') FROM clinic_migrate.metrics() m}),
	qr/^clinic_migrate_jobs\{state="done"\} 24$/m,
	'metrics() in Prometheus text format');
{
	open(my $fh, '<', "$ENV{TESTDIR}/monitoring/postgres_exporter.yaml") or die "postgres_exporter.yaml: $!";
	my @queries = map { /^\s*query: "(.*)"$/ ? ($1) : () } <$fh>;
	close $fh;
	is(scalar(@queries), 6, 'postgres_exporter.yaml has 6 queries');
	for my $q (@queries)
	{
		my ($rc, $out, $err) = $node->psql('postgres', $q);
		ok($rc == 0 && $err eq '', "exporter query runs: " . substr($q, 0, 60)) or diag($err);
	}
}

# 9. a migrate job queued before a cutover made meanwhile: the worker looks
# at the state again under the tenant's lock and refuses; the tenant stays
# cut over, its writes still go to its schema.
is($node->safe_psql('postgres', 'SELECT clinic_migrate.pause_queue()'), 't', 'pause_queue');
my $jm = $node->safe_psql('postgres', q{SELECT * FROM clinic_migrate.enqueue(ARRAY['t1'])});
is( $node->safe_psql('postgres', q{SELECT schema_name FROM clinic_migrate.cutover('t1')}),
	'tenant_t1', 't1 cut over while its migrate job waits');
is($node->safe_psql('postgres', 'SELECT clinic_migrate.resume_queue()'), 't', 'resume_queue');
is($node->safe_psql('postgres', "SELECT clinic_migrate.wait($jm, interval '60 seconds')"),
	'failed', 'the stale migrate job fails');
is( $node->safe_psql(
		'postgres', "SELECT sqlstate, error FROM clinic_migrate.job_queue WHERE job_id = $jm"),
	'55000|tenant "t1" is already cut over to schema "tenant_t1"',
	'it says why');
is( $node->safe_psql(
		'postgres',
		q{SELECT state, last_error IS NULL, clinic_migrate.tenant_schema('t1') FROM clinic_migrate.tenants WHERE tenant_id = 't1'}),
	'cut_over|t|tenant_t1', 't1 is still cut over, untouched');

$node->stop;
done_testing();
