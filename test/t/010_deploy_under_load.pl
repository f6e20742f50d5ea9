# test/t/010_deploy_under_load.pl: the application deploys while a tenant copies under
# load. pgbench, as an application role with the README's grants, writes tenants t1,
# t2 and t3 routed by set_tenant (an update of a patient, a new patient, a new
# appointment note: several tables per transaction), 40001 retried. The application
# has an audit trigger on patients (one audit row per inserted patient). While t1
# copies (small throttled batches), a Flyway-like series of migrations runs on the
# shared tables: ADD COLUMN with a default and a backfill UPDATE in batches, a type
# change, CREATE INDEX CONCURRENTLY (queued for the copy: the scheduler's index job
# builds it, and cutover waits for it), a CHECK added NOT VALID then validated, a
# column dropped, a new table with the tenant column (its copy made in the same
# transaction) filled by a backfill and then written by pgbench. Then t1 cuts over
# under the same load. At the end: no transaction failed for good, t1 validates on
# every table, the new one included, its copy has the shared table's shape, and
# every patient pgbench inserted has exactly one audit row: the shared table's
# trigger before cutover, the copy's after it, and never one from the copy or the
# replay. Then t1 and 49 more tenants are finalized and two more deploys reach the 50
# schemas by fan_out, and a view made again in t1's schema reads its rows.
# Data: test/gen/clinic.sql with 52 tenants and about 20,000 rows.

use strict;
use warnings;

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use lib "$ENV{TESTDIR}/test/t";
use ClinicTest;

my $node = ClinicTest::start_clinic(
	tenants => 52,
	rows => 20000,
	conf => q{
shared_preload_libraries = 'clinic_migrate'
max_worker_processes = 16
clinic_migrate.sync_interval = 100
clinic_migrate.databases = 'postgres'
});

$node->safe_psql(
	'postgres', q{
CREATE TABLE public.audit (n bigserial PRIMARY KEY, tbl text NOT NULL, tenant text NOT NULL, id bigint NOT NULL);
CREATE FUNCTION public.audit_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO public.audit (tbl, tenant, id) VALUES (TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, NEW.tenant_id, NEW.id);
  RETURN NULL;
END $$;
CREATE TRIGGER patients_audit AFTER INSERT ON public.patients FOR EACH ROW EXECUTE FUNCTION public.audit_insert();
CREATE VIEW public.patient_names AS SELECT tenant_id, id, first_name, last_name FROM public.patients;
ALTER TABLE public.patients ADD COLUMN legacy integer;
CREATE ROLE app LOGIN;
GRANT USAGE ON SCHEMA public TO app;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO app;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO app;
});
my $maxp = $node->safe_psql('postgres', 'SELECT max(id) FROM public.patients');
my $maxa = $node->safe_psql('postgres', 'SELECT max(id) FROM public.appointments');

my $script = "$PostgreSQL::Test::Utils::tmp_check/010_load.sql";
PostgreSQL::Test::Utils::append_to_file(
	$script, q{
\set t random(1, 3)
\set p random(1, :maxp)
\set a random(1, :maxa)
BEGIN;
SELECT clinic_migrate.set_tenant('t' || :t, true);
UPDATE patients SET balance = coalesce(balance, 0) + 1
WHERE id = (SELECT id FROM patients WHERE tenant_id = 't' || :t AND id >= :p ORDER BY id LIMIT 1);
INSERT INTO patients (tenant_id, first_name, last_name, tags)
VALUES ('t' || :t, 'Bench', 'Client ' || :client_id, '{pgbench}');
INSERT INTO appointment_notes (appointment_id, body)
SELECT id, 'pgbench note ' || :client_id FROM appointments
WHERE tenant_id = 't' || :t AND id >= :a ORDER BY id LIMIT 1;
END;
});

# after V6: the same, and an invoice of the tenant in the new table
my $script2 = "$PostgreSQL::Test::Utils::tmp_check/010_load2.sql";
PostgreSQL::Test::Utils::append_to_file(
	$script2, q{
\set t random(1, 3)
\set p random(1, :maxp)
\set a random(1, :maxa)
BEGIN;
SELECT clinic_migrate.set_tenant('t' || :t, true);
UPDATE patients SET balance = coalesce(balance, 0) + 1
WHERE id = (SELECT id FROM patients WHERE tenant_id = 't' || :t AND id >= :p ORDER BY id LIMIT 1);
INSERT INTO patients (tenant_id, first_name, last_name, tags)
VALUES ('t' || :t, 'Bench', 'Client ' || :client_id, '{pgbench}');
INSERT INTO invoices (tenant_id, amount, note) VALUES ('t' || :t, :client_id, 'pgbench');
INSERT INTO appointment_notes (appointment_id, body)
SELECT id, 'pgbench note ' || :client_id FROM appointments
WHERE tenant_id = 't' || :t AND id >= :a ORDER BY id LIMIT 1;
END;
});

sub start_load
{
	my ($secs, $file) = @_;
	$file //= $script;
	my %b = (out => '', err => '');
	$b{h} = IPC::Run::start(
		[
			'/usr/lib/postgresql/15/bin/pgbench', '-n', '-c', '3', '-j', '3', '-T', $secs,
			'--max-tries=0', '-h', $node->host, '-p', $node->port, '-U', 'app',
			'-D', "maxp=$maxp", '-D', "maxa=$maxa", '-f', $file, 'postgres'
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
	like($b->{out}, qr/^number of failed transactions: 0 /m, "$name: no transaction failed for good");
	return;
}

sub deploy
{
	my ($name, $sql) = @_;
	my ($out, $err) = ('', '');
	my $rc = $node->psql('postgres', $sql, stdout => \$out, stderr => \$err, on_error_stop => 1);
	is($rc, 0, "deploy: $name") or diag($err);
	return $err;
}

# 1. t1 copies in small throttled batches while pgbench writes and the deploys run.
my $load = start_load(25);
ok(ClinicTest::poll(q{SELECT count(*) > 30 FROM public.audit}), 'pgbench writes');
my ($mout, $merr) = ('', '');
# The copy of t1 takes about a second: a poll for 'copying' could miss it (CI did).
# It is held at its pause point after 'copying' is committed, outside any transaction,
# until the first deploy is done; then the copy runs while the other deploys do.
# (A setting of the server's: the scheduler's worker does the copy.)
my $pause = $node->background_psql('postgres');
$pause->query_safe(q{SELECT pg_advisory_lock(hashtext('clinic_migrate:copy_start'))});
$node->safe_psql('postgres', q{ALTER SYSTEM SET clinic_migrate.pause_points = 'copy_start'; SELECT pg_reload_conf()});
ok(ClinicTest::poll(q{SELECT current_setting('clinic_migrate.pause_points') = 'copy_start'}),
	'the pause point is set');
my $migrate = IPC::Run::start(
	[
		'psql', '-X', '-q', '-At', '-v', 'ON_ERROR_STOP=1', '-h', $node->host, '-p', $node->port,
		'-d', 'postgres', '-c', 'SET clinic_migrate.batch_size = 200',
		'-c', 'SET clinic_migrate.batch_delay = 40',
		'-c', q{SELECT schema_name FROM clinic_migrate.migrate_tenant('t1')}
	],
	'<', \undef, '>', \$mout, '2>', \$merr,
	IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
ok( ClinicTest::poll(
		q{SELECT count(*) = 1 FROM pg_stat_activity WHERE query = 'clinic_migrate: at pause point copy_start'}),
	't1 is held at the start of its copy');
is($node->safe_psql('postgres', q{SELECT state FROM clinic_migrate.tenants WHERE tenant_id = 't1'}),
	'copying', 't1 is copying');

deploy('V1 add a column with a default',
	q{ALTER TABLE public.patients ADD COLUMN insurance text DEFAULT 'none'});
$node->safe_psql('postgres', q{ALTER SYSTEM RESET clinic_migrate.pause_points; SELECT pg_reload_conf()});
$pause->query_safe(q{SELECT pg_advisory_unlock(hashtext('clinic_migrate:copy_start'))});
$pause->quit;
for my $i (1 .. 4)
{
	deploy("V1 backfill batch $i", q{
UPDATE public.patients SET insurance = 'basic'
WHERE id IN (SELECT id FROM public.patients WHERE insurance = 'none' ORDER BY id LIMIT 2000)});
}
deploy('V2 a type change', q{ALTER TABLE public.patients ALTER COLUMN insurance TYPE varchar(40)});
deploy('V4 a CHECK, NOT VALID then validated', q{
ALTER TABLE public.patients ADD CONSTRAINT insurance_known CHECK (insurance IS NOT NULL) NOT VALID;
ALTER TABLE public.patients VALIDATE CONSTRAINT insurance_known;});
deploy('V5 a column dropped', q{ALTER TABLE public.patients DROP COLUMN legacy});
deploy('V6 a new table with the tenant column', q{
CREATE TABLE public.invoices (tenant_id text NOT NULL REFERENCES public.tenants, id bigserial,
                              amount integer NOT NULL, note text, PRIMARY KEY (tenant_id, id));
GRANT SELECT, INSERT, UPDATE, DELETE ON public.invoices TO app;
GRANT USAGE ON SEQUENCE public.invoices_id_seq TO app;});
is( $node->safe_psql('postgres',
		q{SELECT string_agg(tenant_id, ',') FROM clinic_migrate.tenant_tables WHERE table_name = 'invoices'}),
	't1', 'V6: t1, copying, has its copy of the new table at once');
deploy('V6 backfill', q{
INSERT INTO public.invoices (tenant_id, amount, note)
SELECT tenant_id, coalesce(balance * 100, 0)::integer, 'opening balance' FROM public.patients WHERE tenant_id IN ('t1', 't2', 't3')});

$migrate->finish;
like($mout, qr/^tenant_t1$/m, 'migrate_tenant(t1) ends under the deploys') or diag($merr);
# (after the copy: CREATE INDEX CONCURRENTLY waits for every older transaction,
# the session waiting in migrate_tenant() included)
my $cic = deploy('V3 an index, concurrently',
	q{CREATE INDEX CONCURRENTLY patients_insurance ON public.patients (insurance)});
like($cic, qr/NOTICE:  the index is queued for the copies of public.patients of 1 moving tenants/,
	'V3: CREATE INDEX CONCURRENTLY queues the copy\'s index');
finish_load($load, 'copy and deploys');

# The scheduler's index job built the copy's index (cutover would wait for it).
ok( $node->poll_query_until('postgres',
		q{SELECT built_at IS NOT NULL FROM clinic_migrate.pending_indexes WHERE tenant_id = 't1' AND index_name = 'patients_insurance'}),
	'V3: the index job built the copy\'s index')
  or diag($node->safe_psql('postgres', q{SELECT * FROM clinic_migrate.pending_indexes})
	  . $node->safe_psql('postgres', q{SELECT job_id, action, state, error FROM clinic_migrate.job_queue}));

# 2. Cutover under load, pgbench writing the new table too.
my $n0 = $node->safe_psql('postgres', 'SELECT coalesce(max(n), 0) FROM public.audit');
$load = start_load(8, $script2);
ok(ClinicTest::poll(qq{SELECT count(*) > 30 FROM public.audit WHERE n > $n0}), 'pgbench writes again');
is($node->safe_psql('postgres', q{SELECT schema_name FROM clinic_migrate.cutover('t1')}),
	'tenant_t1', 't1 cuts over under load');
ok(ClinicTest::poll(q{SELECT count(*) > 10 FROM public.audit WHERE tbl = 'tenant_t1.patients'}),
	'writes of t1 land in its schema');
finish_load($load, 'cutover');

# 3. Quiet: the copy has the shape, t1 validates, every insert audited once.
ok(ClinicTest::poll(q{SELECT coalesce(sum(capture_lag), 0) = 0 FROM clinic_migrate.status}),
	'nothing pending replay');
is( $node->safe_psql(
		'postgres', q{
SELECT string_agg(n.nspname || ': ' || (SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attname)
                                    FROM pg_attribute WHERE attrelid = c.oid AND attname IN ('insurance', 'legacy') AND NOT attisdropped)
                  || ' / ' || (SELECT count(*) FROM pg_constraint WHERE conrelid = c.oid AND conname = 'insurance_known' AND convalidated)
                  || ' / ' || (SELECT count(*) FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
                               WHERE i.indrelid = c.oid AND ic.relname = 'patients_insurance' AND i.indisvalid),
                  E'\n' ORDER BY n.nspname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relname = 'patients' AND n.nspname IN ('public', 'tenant_t1')}),
	"public: insurance character varying(40) / 1 / 1\ntenant_t1: insurance character varying(40) / 1 / 1",
	'the copy has the shared table\'s shape: the column, its type, the CHECK, the index, no dropped column');
like(ClinicTest::validate_mismatches('t1'), qr/^none of \d+$/, 't1 validates on every table');
like( $node->safe_psql('postgres',
		q{SELECT source_rows || ' ' || match FROM clinic_migrate.validate_migration('t1') WHERE table_name = 'invoices'}),
	qr/^[1-9]\d* true$/, 'the new table validates, with the backfill and pgbench\'s invoices');
ok( $node->safe_psql('postgres', q{SELECT count(*) > 0 FROM tenant_t1.invoices WHERE note = 'pgbench'}) eq 't',
	'pgbench wrote invoices of t1 (in the shared table, then, routed, in its schema)');
my $audited = $node->safe_psql(
	'postgres', q{
WITH a AS (SELECT id, count(*) AS n FROM public.audit WHERE tenant = 't1' GROUP BY id)
SELECT count(*) FILTER (WHERE coalesce(a.n, 0) <> 1) || ' of ' || count(*)
FROM tenant_t1.patients p LEFT JOIN a ON a.id = p.id WHERE p.tags = '{pgbench}'});
like($audited, qr/^0 of [1-9]\d*$/, "every patient pgbench inserted for t1 has exactly one audit row ($audited not)");
is( $node->safe_psql(
		'postgres', q{
SELECT count(*) FROM public.audit a
WHERE a.tenant = 't1' AND NOT EXISTS (SELECT 1 FROM tenant_t1.patients p WHERE p.id = a.id AND p.tags = '{pgbench}')}),
	'0', 'and no audit row without its patient (none from the copy or the replay)');
is( $node->safe_psql('postgres',
		q{SELECT tgenabled FROM pg_trigger WHERE tgrelid = 'tenant_t1.patients'::regclass AND tgname = 'patients_audit'}),
	'O', 'the audit trigger is on the copy, plain ENABLE');

# 4. After the move: t1 and 49 more tenants finalized in schemas of their own, then
# two more deploys by fan_out across the 50 schemas, worked by the scheduler.
is($node->safe_psql('postgres', q{SELECT schema_name FROM clinic_migrate.finalize_tenant('t1')}),
	'tenant_t1', 't1 finalizes');
$node->safe_psql(
	'postgres', q{
SELECT clinic_migrate.migrate_tenant('t' || i), clinic_migrate.cutover('t' || i),
       clinic_migrate.finalize_tenant('t' || i)
FROM generate_series(4, 52) i});
is( $node->safe_psql('postgres',
		q{SELECT count(*) FROM clinic_migrate.tenants WHERE state = 'finalized'}),
	'50', '50 tenants live in schemas of their own');
is($node->safe_psql('postgres', q{SELECT clinic_migrate.fan_out('V7', 'ALTER TABLE patients ADD COLUMN vip boolean NOT NULL DEFAULT false')}),
	'50', 'V7 by fan_out: a job per finalized tenant');
ok( $node->poll_query_until('postgres',
		q{SELECT count(*) = 50 FROM clinic_migrate.tenant_schema_versions WHERE version = 'V7'}),
	'the scheduler applies V7 to every tenant schema');
is($node->safe_psql('postgres', q{SELECT clinic_migrate.fan_out('V8', 'CREATE INDEX patients_vip ON patients (vip) WHERE vip')}),
	'50', 'V8 by fan_out: a job per finalized tenant');
ok( $node->poll_query_until('postgres',
		q{SELECT count(*) = 100 FROM clinic_migrate.tenant_schema_versions}),
	'the scheduler applies both versions to every tenant schema')
  or diag($node->safe_psql('postgres',
	q{SELECT tenant_id, action, state, error FROM clinic_migrate.job_queue WHERE state <> 'done' LIMIT 5}));
is( $node->safe_psql(
		'postgres', q{
SELECT count(*) FILTER (WHERE s.schema_version = 'V8') || ' / '
       || (SELECT count(*) FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
           WHERE a.attname = 'vip' AND c.relname = 'patients') || ' / '
       || (SELECT count(*) FROM pg_class WHERE relname = 'patients_vip')
FROM clinic_migrate.status s WHERE s.state = 'finalized'}),
	'50 / 51 / 51', 'every tenant schema is at V8, with the column and the index, and so are the shared tables');
# a routed session reads its own rows through the view, made again in its schema
is( $node->safe_psql(
		'postgres', q{
BEGIN;
SELECT clinic_migrate.set_tenant('t1', true) \g /dev/null
SELECT count(*) = (SELECT count(*) FROM tenant_t1.patients) AND bool_and(tenant_id = 't1') FROM patient_names;
COMMIT;}),
	't', 'after finalize, t1 reads its own rows through the view');

$node->stop;
done_testing();
