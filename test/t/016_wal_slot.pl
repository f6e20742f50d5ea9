# test/t/016_wal_slot.pl: the replication slot of capture from the WAL never hurts the
# server, and a crash never loses or doubles a change.
# 0. A copy that fails after it made the slot (its triggers could not lock a table)
#    leaves no slot behind.
# 1. A move captured from the WAL makes the slot clinic_migrate_<db OID>; the shared
#    tables get no INSERT, UPDATE or DELETE trigger, only the tenant-change trigger and
#    the TRUNCATE guard. The migration runs as the README's migration role (no
#    REPLICATION attribute), the writes as an application role.
# 1b. ALTER TABLE ... REPLICA IDENTITY that would drop the key is refused.
# 2. kill -9 of the sync worker after it committed the keys it read and before it moved
#    the slot (held at its pause point): every backend restarts, the same changes are
#    read again, and the copy equals the shared rows.
# 3. An immediate stop while the writes go on, then a start: the same.
# 4. Cutover: the capture triggers go on before the pause; the slot goes once no tenant
#    is captured from the WAL.
# 5. A slot that lost the WAL it needed (max_slot_wal_keep_size): the next drain fails
#    with the tenants to roll back, alerts() says so, the server goes on; rollback and a
#    new move work.
# 5b. A table owner's domain CHECK on its key is not run by the drain (it would run as
#    the sync worker, a superuser); DROP EXTENSION by a role that does not own it
#    leaves the slot.
# 6. DROP EXTENSION drops the slot with it.

use strict;
use warnings;

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use lib "$ENV{TESTDIR}/test/t";
use ClinicTest;

$ENV{CLINIC_CAPTURE_METHOD} = 'wal';
my $node = ClinicTest::start_clinic(
	tenants => 4,
	rows => 8000,
	conf => q{
shared_preload_libraries = 'clinic_migrate'
max_worker_processes = 16
clinic_migrate.sync_interval = 100
restart_after_crash = on
max_wal_size = 64MB
min_wal_size = 32MB
});

$node->safe_psql(
	'postgres', q{
CREATE ROLE app LOGIN;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO app;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO app;
CREATE ROLE migrator LOGIN;
GRANT USAGE ON SCHEMA clinic_migrate TO migrator;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA clinic_migrate TO migrator;
GRANT SELECT ON ALL TABLES IN SCHEMA clinic_migrate TO migrator;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO migrator;
GRANT TRIGGER ON public.patients, public.staff, public.appointments, public.appointment_notes TO migrator;
GRANT REFERENCES ON public.tenants, public.specialties TO migrator;
GRANT CREATE ON DATABASE postgres TO migrator;
});
# The application's BEFORE UPDATE trigger moves a patient to t2 on request: the
# statement does not set tenant_id, so an UPDATE OF tenant_id trigger would not fire.
$node->safe_psql(
	'postgres', q{
CREATE FUNCTION public.move_on_request() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.notes = 'move to t2' THEN NEW.tenant_id := 't2'; END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER patients_move BEFORE UPDATE ON public.patients FOR EACH ROW EXECUTE FUNCTION public.move_on_request();
});
# A table owner who would be superuser: its key is a domain whose CHECK, run by a
# superuser, makes it one. The drain reads keys from the WAL (0.8 as first written ran
# the domain's input as the sync worker, a superuser).
$node->safe_psql(
	'postgres', q{
CREATE ROLE evil LOGIN;
CREATE SCHEMA evil AUTHORIZATION evil;
SET ROLE evil;
CREATE FUNCTION evil.promote(x bigint) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        EXECUTE 'ALTER ROLE evil SUPERUSER';
    END IF;
    RETURN true;
EXCEPTION WHEN others THEN RETURN true;
END $$;
CREATE DOMAIN evil.key AS bigint CHECK (evil.promote(VALUE));
RESET ROLE;
CREATE TABLE public.evil_items (id evil.key PRIMARY KEY, tenant_id text NOT NULL REFERENCES public.tenants, v text);
ALTER TABLE public.evil_items OWNER TO evil;
GRANT SELECT, INSERT, UPDATE, DELETE ON public.evil_items TO app;
GRANT SELECT, TRIGGER ON public.evil_items TO migrator;
GRANT USAGE ON SCHEMA evil TO app, migrator;
});
# (the rows by the application: a superuser's INSERT would run the CHECK as superuser)
$node->safe_psql('postgres', q{INSERT INTO public.evil_items SELECT i, 't' || (1 + i % 4), 'x' FROM generate_series(1, 20) i},
	extra_params => [ '-U', 'app' ]);
is($node->safe_psql('postgres', q{SELECT rolsuper FROM pg_roles WHERE rolname = 'evil'}), 'f', 'evil is no superuser');
my $slot = $node->safe_psql('postgres',
	q{SELECT 'clinic_migrate_' || oid FROM pg_database WHERE datname = current_database()});

sub app_write
{
	my ($tag) = @_;
	$node->safe_psql(
		'postgres', qq{
INSERT INTO patients (tenant_id, first_name, last_name) SELECT 't1', 'W', '$tag ' || i FROM generate_series(1, 20) i;
UPDATE patients SET notes = '$tag' WHERE id IN (SELECT id FROM patients WHERE tenant_id = 't1' ORDER BY id LIMIT 10);
DELETE FROM appointment_notes WHERE id IN (SELECT n.id FROM appointment_notes n JOIN appointments a ON a.id = n.appointment_id
                                           WHERE a.tenant_id = 't1' ORDER BY n.id LIMIT 3);
UPDATE patients SET notes = '$tag other' WHERE id IN (SELECT id FROM patients WHERE tenant_id = 't2' ORDER BY id LIMIT 10);
}, extra_params => [ '-U', 'app' ]);
	return;
}

# the sync worker made again (it reads pause_points at its start)
sub restart_sync
{
	$node->safe_psql('postgres',
		q{SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'clinic_migrate sync'});
	ClinicTest::poll(q{SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'clinic_migrate sync'});
	$node->safe_psql('postgres', q{SELECT clinic_migrate.start_sync()});
	return ClinicTest::poll(q{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'clinic_migrate sync'});
}

sub in_step
{
	my ($name) = @_;
	# sync_now reads the slot too: changes still in the WAL are not yet in capture_lag
	ok( ClinicTest::poll(q{SELECT clinic_migrate.sync_now('t1') >= 0 AND clinic_migrate.capture_lag('t1') = 0}),
		"$name: every captured change of t1 is replayed");
	is(ClinicTest::validate_mismatches('t1'), 'none of 5', "$name: t1's copy equals its shared rows");
	return;
}

# ---- 0. a copy that fails after it made the slot leaves none behind ----
{
	my $locker = $node->background_psql('postgres');
	$locker->query_safe('BEGIN; LOCK TABLE public.appointments IN ROW EXCLUSIVE MODE');
	my ($o, $e) = ('', '');
	isnt( $node->psql('postgres',
			q{SET clinic_migrate.lock_retry_time = '2s'; SELECT schema_name FROM clinic_migrate.migrate_tenant('t3')},
			stdout => \$o, stderr => \$e),
		0, 'failed copy: t3 cannot put its triggers on a table held by another session');
	like($e, qr/could not lock the tables this step needs/, 'failed copy: 55P03, the lock');
	$locker->query_safe('ROLLBACK');
	$locker->quit;
	ok( ClinicTest::poll(q{SELECT count(*) = 0 FROM pg_replication_slots}),
		'failed copy: the slot it made is dropped');
	$node->psql('postgres', q{SELECT clinic_migrate.rollback_tenant('t3')});
}

# ---- 1. the slot, and no write trigger ----
is( $node->psql('postgres', q{SELECT schema_name FROM clinic_migrate.migrate_tenant('t1')},
		extra_params => [ '-U', 'migrator' ]),
	0, 'the migration role migrates t1');
ClinicTest::check_capture_method('copied', 'move');
is($node->safe_psql('postgres', qq{SELECT count(*) FROM pg_replication_slots WHERE slot_name = '$slot'}),
	'1', "the slot $slot is there");
is( $node->safe_psql(
		'postgres', q{
SELECT string_agg(DISTINCT tgname, ', ' ORDER BY tgname) FROM pg_trigger
WHERE tgrelid = 'public.patients'::regclass AND tgname LIKE 'clinic_migrate%'}),
	'clinic_migrate_capture_tenant, clinic_migrate_guard_truncate',
	'patients has the tenant-change trigger and the TRUNCATE guard, no write trigger');
like( $node->safe_psql('postgres',
		q{SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgname = 'clinic_migrate_capture_tenant'
          AND tgrelid = 'public.patients'::regclass}),
	qr/AFTER UPDATE ON public\.patients FOR EACH ROW WHEN \(\(\(old\.tenant_id IS DISTINCT FROM new\.tenant_id\) AND /,
	'patients has a BEFORE UPDATE trigger of its own: the tenant-change trigger is not UPDATE OF tenant_id');
like( $node->safe_psql('postgres',
		q{SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgname = 'clinic_migrate_capture_tenant'
          AND tgrelid = 'public.appointments'::regclass}),
	qr/AFTER UPDATE OF tenant_id ON public\.appointments /,
	'appointments has no BEFORE UPDATE trigger: its tenant-change trigger is UPDATE OF tenant_id');
# one made during the move: the tenant-change trigger is made again without OF
$node->safe_psql(
	'postgres', q{
CREATE FUNCTION public.touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
CREATE TRIGGER appointments_touch BEFORE UPDATE ON public.appointments FOR EACH ROW EXECUTE FUNCTION public.touch();
});
like( $node->safe_psql('postgres',
		q{SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgname = 'clinic_migrate_capture_tenant'
          AND tgrelid = 'public.appointments'::regclass}),
	qr/AFTER UPDATE ON public\.appointments /,
	'a BEFORE UPDATE trigger made during the move: the tenant-change trigger is no longer UPDATE OF');
app_write('one');
$node->safe_psql(
	'postgres', q{
UPDATE patients SET notes = 'move to t2'
WHERE id = (SELECT p.id FROM patients p WHERE p.tenant_id = 't1' AND p.email IS NULL AND p.referred_by IS NULL
              AND NOT EXISTS (SELECT 1 FROM appointments a WHERE a.patient_id = p.id)
              AND NOT EXISTS (SELECT 1 FROM patients r WHERE r.referred_by = p.id)
            ORDER BY p.id LIMIT 1)}, extra_params => [ '-U', 'app' ]);
in_step('captured from the WAL');
is( $node->safe_psql('postgres', q{SELECT count(*) FROM tenant_t1.patients WHERE notes = 'move to t2'}),
	'0', 'the patient the application\'s trigger moved to t2 left t1\'s copy');

# ---- 1b. a replica identity that would drop the key is refused ----
my $ri_err = '';
$node->psql('postgres', q{ALTER TABLE patients REPLICA IDENTITY NOTHING}, stderr => \$ri_err);
like($ri_err, qr/cannot change the replica identity of public\.patients while tenant "t1" is captured from the WAL/,
	'REPLICA IDENTITY NOTHING is refused while t1 is captured from the WAL');
is($node->safe_psql('postgres', q{SELECT relreplident FROM pg_class WHERE oid = 'public.patients'::regclass}),
	'd', '... and undone');
$node->safe_psql('postgres', q{ALTER TABLE patients REPLICA IDENTITY FULL});
$node->safe_psql('postgres', q{ALTER TABLE patients REPLICA IDENTITY DEFAULT});
pass('FULL and DEFAULT (both hold the key) are taken');

# ---- 2. kill -9 of the sync worker between its commit and the slot's move ----
my $holder = $node->background_psql('postgres');
$holder->query_safe(q{SELECT pg_advisory_lock(hashtext('clinic_migrate:wal_confirm'))});
$node->safe_psql('postgres',
	q{ALTER SYSTEM SET clinic_migrate.pause_points = 'wal_confirm'; SELECT pg_reload_conf()});
# a new session (and the new sync worker) has it once the postmaster has reloaded
ClinicTest::poll(q{SELECT current_setting('clinic_migrate.pause_points') = 'wal_confirm'});
ok(restart_sync(), 'kill: a sync worker is started again');
app_write('two');
ok( ClinicTest::poll(
		q{SELECT count(*) = 1 FROM pg_stat_activity WHERE query = 'clinic_migrate: at pause point wal_confirm'}),
	'kill: the sync worker committed what it read and waits before moving the slot');
my $pid = $node->safe_psql('postgres',
	q{SELECT pid FROM pg_stat_activity WHERE query = 'clinic_migrate: at pause point wal_confirm'});
kill 'KILL', $pid;
$holder->quit;
ok(ClinicTest::back_after_crash(), 'kill: the server is back');
$node->safe_psql('postgres', q{ALTER SYSTEM RESET clinic_migrate.pause_points; SELECT pg_reload_conf()});
$node->safe_psql('postgres', q{SELECT clinic_migrate.start_sync()});
in_step('kill -9');

# ---- 3. an immediate stop while the application writes ----
app_write('three');
$node->stop('immediate');
$node->start;
$node->safe_psql('postgres', q{SELECT clinic_migrate.start_sync()});
app_write('four');
in_step('immediate stop');

# ---- 4. cutover, and the slot goes ----
is( $node->psql('postgres', q{SELECT schema_name FROM clinic_migrate.cutover('t1')},
		extra_params => [ '-U', 'migrator' ]),
	0, 'cutover of t1');
is( $node->safe_psql(
		'postgres', q{
SELECT string_agg(DISTINCT tgname, ', ' ORDER BY tgname) FROM pg_trigger
WHERE tgrelid = 'public.patients'::regclass AND tgname LIKE 'clinic_migrate%'}),
	'clinic_migrate_capture_delete, clinic_migrate_capture_insert, clinic_migrate_capture_tenant, '
	  . 'clinic_migrate_capture_update, clinic_migrate_guard_truncate',
	'cutover put the capture triggers on: they refuse t1\'s writes to the shared rows now');
ok( ClinicTest::poll(qq{SELECT count(*) = 0 FROM pg_replication_slots WHERE slot_name = '$slot'}),
	'no tenant is captured from the WAL: the slot is gone');
my ($out, $err) = ('', '');
$node->psql('postgres', q{UPDATE patients SET notes = 'refused' WHERE tenant_id = 't1'},
	stderr => \$err, extra_params => [ '-U', 'app' ]);
like($err, qr/tenant "t1" has moved to schema "tenant_t1"/, 'a write of t1\'s shared rows is refused');

# ---- 5. a slot that lost its WAL ----
is( $node->psql('postgres', q{SELECT schema_name FROM clinic_migrate.migrate_tenant('t2')},
		extra_params => [ '-U', 'migrator' ]),
	0, 'lost: t2 migrates, captured from the WAL');
$node->safe_psql('postgres', q{ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'; SELECT pg_reload_conf()});
$holder = $node->background_psql('postgres');
$holder->query_safe(q{SELECT pg_advisory_lock(hashtext('clinic_migrate:wal_confirm'))});
$node->safe_psql('postgres',
	q{ALTER SYSTEM SET clinic_migrate.pause_points = 'wal_confirm'; SELECT pg_reload_conf()});
# a new session (and the new sync worker) has it once the postmaster has reloaded
ClinicTest::poll(q{SELECT current_setting('clinic_migrate.pause_points') = 'wal_confirm'});
ok(restart_sync(), 'lost: a sync worker is started again');
$node->safe_psql('postgres', q{UPDATE patients SET notes = 'lost' WHERE tenant_id = 't2'});
ok( ClinicTest::poll(
		q{SELECT count(*) = 1 FROM pg_stat_activity WHERE query = 'clinic_migrate: at pause point wal_confirm'}),
	'lost: the sync worker is held before it moves the slot');
# WAL past max_slot_wal_keep_size, and checkpoints that remove it
for my $i (1 .. 6)
{
	$node->safe_psql('postgres',
		q{CREATE TABLE IF NOT EXISTS cm_filler (x text); INSERT INTO cm_filler SELECT repeat('x', 1000) FROM generate_series(1, 2000); SELECT pg_switch_wal(); CHECKPOINT;});
}
ok( ClinicTest::poll(qq{SELECT wal_status = 'lost' FROM pg_replication_slots WHERE slot_name = '$slot'}),
	'lost: the slot lost WAL it needed');
$node->safe_psql('postgres', q{ALTER SYSTEM RESET clinic_migrate.pause_points; SELECT pg_reload_conf()});
$holder->quit;
($out, $err) = ('', '');
$node->psql('postgres', q{SELECT clinic_migrate.sync_now('t2')}, stderr => \$err);
like($err, qr/replication slot \S+ of clinic_migrate has lost WAL it needed/,
	'lost: a drain fails, saying so');
like($err, qr/HINT:  Roll those tenants back/, 'lost: with the way out');
is($node->safe_psql('postgres', q{SELECT alert FROM clinic_migrate.alerts() WHERE alert = 'CaptureSlotLost'}),
	'CaptureSlotLost', 'lost: alerts() says so');
is($node->safe_psql('postgres', q{SELECT count(*) > 0 FROM patients WHERE tenant_id = 't3'}),
	't', 'lost: the server goes on');
is( $node->psql('postgres', q{SELECT clinic_migrate.rollback_tenant('t2')}, extra_params => [ '-U', 'migrator' ]),
	0, 'lost: t2 rolls back');
ok( ClinicTest::poll(qq{SELECT count(*) = 0 FROM pg_replication_slots WHERE slot_name = '$slot'}),
	'lost: the lost slot is dropped');
$node->safe_psql('postgres', q{ALTER SYSTEM RESET max_slot_wal_keep_size; SELECT pg_reload_conf()});
is( $node->psql('postgres', q{SELECT schema_name FROM clinic_migrate.migrate_tenant('t2')},
		extra_params => [ '-U', 'migrator' ]),
	0, 'lost: t2 migrates again, with a new slot');
$node->safe_psql('postgres', q{UPDATE patients SET notes = 'after' WHERE tenant_id = 't2'});
ok( ClinicTest::poll(q{SELECT clinic_migrate.sync_now('t2') >= 0 AND clinic_migrate.capture_lag('t2') = 0}),
	'lost: t2 is replayed');
is(ClinicTest::validate_mismatches('t2'), 'none of 5', "lost: t2's copy equals its shared rows");

# ---- 5b. what an ordinary role cannot do to the slot ----
$node->safe_psql('postgres', q{UPDATE public.evil_items SET v = 'y' WHERE tenant_id = 't2'},
	extra_params => [ '-U', 'app' ]);
ok( ClinicTest::poll(q{SELECT clinic_migrate.sync_now('t2') >= 0 AND clinic_migrate.capture_lag('t2') = 0}),
	'evil: t2\'s writes of evil_items are replayed');
is($node->safe_psql('postgres', q{SELECT count(*) FROM tenant_t2.evil_items WHERE v = 'y'}),
	$node->safe_psql('postgres', q{SELECT count(*) FROM public.evil_items WHERE tenant_id = 't2'}),
	'evil: the copy has them');
is($node->safe_psql('postgres', q{SELECT rolsuper FROM pg_roles WHERE rolname = 'evil'}),
	'f', 'evil: the drain ran no code of the table owner\'s as superuser');
($out, $err) = ('', '');
$node->psql('postgres', q{DROP EXTENSION clinic_migrate}, stderr => \$err, extra_params => [ '-U', 'app' ]);
like($err, qr/must be owner of extension clinic_migrate/, 'drop: a role that does not own the extension may not drop it');
is($node->safe_psql('postgres', qq{SELECT count(*) FROM pg_replication_slots WHERE slot_name = '$slot'}),
	'1', 'drop: and the slot is still there');

# ---- 6. DROP EXTENSION ----
is($node->safe_psql('postgres', qq{SELECT count(*) FROM pg_replication_slots WHERE slot_name = '$slot'}),
	'1', 'drop: the slot is there');
$node->safe_psql('postgres', q{DROP EXTENSION clinic_migrate CASCADE});
is($node->safe_psql('postgres', qq{SELECT count(*) FROM pg_replication_slots WHERE slot_name = '$slot'}),
	'0', 'drop: DROP EXTENSION dropped the slot');
is( $node->safe_psql('postgres',
		q{SELECT count(*) FROM pg_class WHERE relnamespace = 'clinic_migrate'::regnamespace AND relname LIKE 'log\_%'}),
	'0', 'drop: and the capture logs');

$node->stop;
done_testing();
