# test/t/005_privileges.pl: ordinary roles must not become superuser, or crash the
# server, through clinic_migrate. Every attack runs as a LOGIN role made here that is
# no superuser; afterwards its pg_roles.rolsuper must still be false, and its
# "canary" table (atk_<role>.seen, which each evil function writes current_user and
# session_user into) must hold no row written as, or on behalf of, a superuser.
#
#  1. The capture trigger of a child table (appointment_notes finds its tenant
#     through appointments): a writer with INSERT, UPDATE or DELETE on it shadows
#     ::text with a temporary domain whose CHECK calls its function, or puts its own
#     = operator first in search_path; the trigger's tenant lookup must not run
#     that as the extension's owner. The reverse trigger (in tenant_t1, after
#     cutover) with the same temporary domain.
#  2. A monitoring role (capture_lag, the status and capture views) with temporary
#     domains float8 and text.
#  3. The owner of the shared tables (app_owner, an ordinary role) owns the tenant's
#     tables too: its trigger on tenant_t1.patients must not run as a superuser
#     when replay writes there; after cutover, neither its ENABLE ALWAYS trigger
#     nor its CHECK constraint on public.patients when reverse replay writes there.
#  4. A migration role with exactly the README's grants, through the queue (the
#     scheduler runs): its trigger on its own tenant table fires in the job's worker
#     and does RESET ROLE; that must not lead to a superuser.
#  8. set_tenant and tenant_schema work for an application role with no grant on
#     schema clinic_migrate; that role still cannot migrate or read the state.
#  5. The owner of a shared table changes its key column's type after the table's
#     capture log was made; a captured write must fail with a clean error (55000),
#     not crash the server. (Last: the old code crashes the server here.)
# Data: test/gen/clinic.sql with 6 tenants and about 3,000 rows, plus public.rooms.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use lib "$ENV{TESTDIR}/test/t";
use ClinicTest;

my $node = ClinicTest::start_clinic(
	tenants => 6,
	rows => 3000,
	conf => q{
shared_preload_libraries = 'clinic_migrate'
clinic_migrate.databases = 'postgres'
clinic_migrate.max_workers = 2
clinic_migrate.scheduler_interval = 200
clinic_migrate.sync_interval = 100
max_worker_processes = 16
restart_after_crash = on
});

# ---- helpers ----

# Runs SQL as a role in a session of its own (psql -U role, ON_ERROR_STOP, verbose
# errors so that stderr has the SQLSTATE). Returns (exit code, stdout, stderr).
sub as_role
{
	my ($role, $sql) = @_;
	my ($out, $err) = ('', '');
	my $rc = $node->psql(
		'postgres', "\\set VERBOSITY verbose\n$sql",
		stdout => \$out,
		stderr => \$err,
		on_error_stop => 1,
		timeout => $PostgreSQL::Test::Utils::timeout_default,
		extra_params => [ '-U', $role ]);
	$rc = -1 unless defined $rc;
	note("as $role: exit $rc\nstdout: $out\nstderr: $err");
	return ($rc, $out, $err);
}

# An ordinary LOGIN role with a schema atk_<role> of its own holding its canary
# table seen(cur, sess, what).
sub attacker
{
	my ($role, $grants) = @_;
	$node->safe_psql(
		'postgres', qq{
CREATE ROLE $role LOGIN;
CREATE SCHEMA atk_$role AUTHORIZATION $role;
CREATE TABLE atk_$role.seen (cur name, sess name, what text);
ALTER TABLE atk_$role.seen OWNER TO $role;
} . ($grants // ''));
	return;
}

# The canary statement an evil function runs before its ALTER ROLE.
sub canary_insert
{
	my ($role, $what) = @_;
	return "INSERT INTO atk_$role.seen VALUES (current_user, session_user, '$what');";
}

# Temporary functions pg_temp.evil(type) and domains pg_temp.<type> whose CHECK
# calls them: any "::type" that resolves through search_path in this session runs
# pg_temp.evil, which makes the role superuser if it runs as one.
sub temp_domains
{
	my ($role, @types) = @_;
	my $sql = '';
	for my $t (@types)
	{
		$sql .= qq{
CREATE FUNCTION pg_temp.evil(v pg_catalog.$t) RETURNS boolean LANGUAGE plpgsql AS \$evil\$
BEGIN
  } . canary_insert($role, "domain $t") . qq{
  EXECUTE 'ALTER ROLE $role SUPERUSER';
  RETURN true;
END\$evil\$;
CREATE DOMAIN pg_temp.$t AS pg_catalog.$t CHECK (pg_temp.evil(VALUE));
};
	}
	return $sql;
}

# The assertions after an attack: the role is no superuser, its canary saw no
# superuser; then the role is made no superuser again (the old code made it one), so
# that the next attacks are judged on their own.
sub no_escalation
{
	my ($role, $label) = @_;
	is( $node->safe_psql('postgres', "SELECT rolsuper FROM pg_roles WHERE rolname = '$role'"),
		'f', "$label: $role is still no superuser");
	is( $node->safe_psql(
			'postgres', qq{
SELECT coalesce(string_agg(s.cur || '/' || s.sess || ' (' || s.what || ')', ', '
                           ORDER BY s.cur, s.sess, s.what), 'none')
FROM atk_$role.seen s
WHERE EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolsuper AND r.rolname IN (s.cur, s.sess))}),
		'none',
		"$label: nothing of $role ran as a superuser (canary)");
	$node->safe_psql('postgres', "ALTER ROLE $role NOSUPERUSER; TRUNCATE atk_$role.seen");
	return;
}

# ---- setup ----

# A shared table that public.rooms' owner will change later (defect 5): in the plan
# of every tenant, with rows of each; codes 'r' || number, convertible to bigint.
$node->safe_psql(
	'postgres', q{
CREATE TABLE public.rooms (code text PRIMARY KEY, tenant_id text NOT NULL REFERENCES public.tenants,
                           name text);
CREATE INDEX rooms_tenant_id_idx ON public.rooms (tenant_id, code);
INSERT INTO public.rooms
SELECT 'r' || (1000 * tn + k), 't' || tn, 'Room ' || k FROM generate_series(1, 6) tn, generate_series(1, 5) k;
});

# app_owner, an ordinary role, owns every shared table (and their sequences).
attacker('app_owner');
$node->safe_psql(
	'postgres', q{
DO $$
DECLARE r record;
BEGIN
  FOR r IN SELECT c.oid::regclass AS t FROM pg_class c
           WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r' LOOP
    EXECUTE format('ALTER TABLE %s OWNER TO app_owner', r.t);
  END LOOP;
END $$;
});
is( $node->safe_psql(
		'postgres',
		q{SELECT string_agg(DISTINCT tableowner, ',') FROM pg_tables WHERE schemaname = 'public'}),
	'app_owner', 'app_owner owns the shared tables');

# The application role of defect 8: rights on the shared tables only (granted before
# any migration, so the tenants' schemas get them too).
$node->safe_psql(
	'postgres', q{
CREATE ROLE app_rw LOGIN;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO app_rw;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO app_rw;
});

# Keys the attacks use: t6 never moves.
my ($appt6, $note6a, $note6b, $appt1, $p1) = split /\|/,
  $node->safe_psql(
	'postgres', q{
SELECT (SELECT min(id) FROM public.appointments WHERE tenant_id = 't6'),
       (SELECT min(n.id) FROM public.appointment_notes n JOIN public.appointments a ON a.id = n.appointment_id
        WHERE a.tenant_id = 't6'),
       (SELECT max(n.id) FROM public.appointment_notes n JOIN public.appointments a ON a.id = n.appointment_id
        WHERE a.tenant_id = 't6'),
       (SELECT min(id) FROM public.appointments WHERE tenant_id = 't1'),
       (SELECT min(id) FROM public.patients WHERE tenant_id = 't1')});
ok($note6a ne '' && $note6b ne '' && $note6a ne $note6b, "t6 has notes $note6a and $note6b");

# ---- t1 moves (copied, kept in sync) ----

is( $node->safe_psql('postgres', q{SELECT schema_name FROM clinic_migrate.migrate_tenant('t1')}),
	'tenant_t1', 'postgres migrates t1');
is( $node->safe_psql(
		'postgres',
		q{SELECT string_agg(DISTINCT tableowner, ',') FROM pg_tables WHERE schemaname = 'tenant_t1'}),
	'app_owner', "tenant_t1's tables belong to app_owner, the shared tables' owner");

# ---- defect 1: the child table's capture trigger ----

my $d1 = 'defect 1 (child capture trigger)';

attacker('ins_only', q{
GRANT INSERT ON public.appointment_notes TO ins_only;
GRANT USAGE ON SEQUENCE public.appointment_notes_id_seq TO ins_only;
});
{
	my ($rc, $out, $err) = as_role('ins_only', temp_domains('ins_only', 'text') . qq{
INSERT INTO public.appointment_notes (appointment_id, body) VALUES ($appt6, 'x');
});
	is($rc, 0, "$d1, INSERT with a temporary domain text" . ': the write itself succeeds') or diag($err);
	no_escalation('ins_only', "$d1, INSERT with a temporary domain text");
}

attacker('upd_only', q{GRANT SELECT, UPDATE ON public.appointment_notes TO upd_only;});
{
	my ($rc, $out, $err) = as_role('upd_only', temp_domains('upd_only', 'text') . qq{
UPDATE public.appointment_notes SET body = 'y' WHERE id = $note6a;
});
	is($rc, 0, "$d1, UPDATE with a temporary domain text" . ': the write itself succeeds') or diag($err);
	no_escalation('upd_only', "$d1, UPDATE with a temporary domain text");
}

attacker('del_only', q{GRANT SELECT, DELETE ON public.appointment_notes TO del_only;});
{
	my ($rc, $out, $err) = as_role('del_only', temp_domains('del_only', 'text') . qq{
DELETE FROM public.appointment_notes WHERE id = $note6b;
});
	is($rc, 0, "$d1, DELETE with a temporary domain text" . ': the write itself succeeds') or diag($err);
	no_escalation('del_only', "$d1, DELETE with a temporary domain text");
}

# An = operator of the writer's own, first in its search_path.
attacker('op_user', q{
GRANT INSERT ON public.appointment_notes TO op_user;
GRANT USAGE ON SEQUENCE public.appointment_notes_id_seq TO op_user;
CREATE SCHEMA evil AUTHORIZATION op_user;
});
{
	my ($rc, $out, $err) = as_role('op_user', q{
CREATE FUNCTION evil.eq(a pg_catalog.int8, b pg_catalog.int8) RETURNS boolean LANGUAGE plpgsql AS $evil$
BEGIN
  IF pg_catalog.current_setting('atk.done', true) IS NULL THEN
    PERFORM pg_catalog.set_config('atk.done', 'yes', false);
    } . canary_insert('op_user', 'operator =') . q{
    EXECUTE 'ALTER ROLE op_user SUPERUSER';
  END IF;
  RETURN a OPERATOR(pg_catalog.=) b;
END$evil$;
CREATE OPERATOR evil.= (LEFTARG = pg_catalog.int8, RIGHTARG = pg_catalog.int8, FUNCTION = evil.eq);
SET search_path = evil, pg_catalog;
} . qq{
INSERT INTO public.appointment_notes (appointment_id, body) VALUES ($appt6, 'x');
});
	is($rc, 0, "$d1, INSERT with search_path = evil, pg_catalog and an own = operator" . ': the write itself succeeds') or diag($err);
	no_escalation('op_user', "$d1, INSERT with search_path = evil, pg_catalog and an own = operator");
}

# ---- defect 2: monitoring ----

my $d2 = 'defect 2 (monitoring)';

attacker('mon_lag', q{
GRANT USAGE ON SCHEMA clinic_migrate TO mon_lag;
GRANT EXECUTE ON FUNCTION clinic_migrate.capture_lag(text) TO mon_lag;
});
{
	my ($rc, $out) = as_role('mon_lag',
		temp_domains('mon_lag', 'float8', 'text') . q{SELECT clinic_migrate.capture_lag('t1');});
	is($out, '0', "$d2: capture_lag('t1') still answers the monitoring role (nothing pending)");
	no_escalation('mon_lag', "$d2, capture_lag('t1') with temporary domains float8 and text");
}

attacker('mon_status', q{
GRANT USAGE ON SCHEMA clinic_migrate TO mon_status;
GRANT SELECT ON clinic_migrate.status TO mon_status;
GRANT EXECUTE ON FUNCTION clinic_migrate.capture_lag(text), clinic_migrate.migration_active(text),
  clinic_migrate.syncing(text) TO mon_status;
});
as_role('mon_status',
	temp_domains('mon_status', 'float8', 'text') . q{SELECT * FROM clinic_migrate.status;});
no_escalation('mon_status', "$d2, SELECT * FROM clinic_migrate.status with temporary domains");

attacker('mon_capture', q{
GRANT USAGE ON SCHEMA clinic_migrate TO mon_capture;
GRANT SELECT ON clinic_migrate.capture TO mon_capture;
GRANT EXECUTE ON FUNCTION clinic_migrate.capture_lag(text), clinic_migrate.capture_lag_seconds(text),
  clinic_migrate.syncing(text) TO mon_capture;
});
as_role('mon_capture',
	temp_domains('mon_capture', 'float8', 'text') . q{SELECT * FROM clinic_migrate.capture;});
no_escalation('mon_capture', "$d2, SELECT * FROM clinic_migrate.capture with temporary domains");

# ---- defect 3: the tables' owner and replay ----

my $d3 = 'defect 3 (replay and the tables\' owner)';

# app_owner's trigger function: no error is caught.
is( (as_role('app_owner', q{
CREATE FUNCTION atk_app_owner.trg() RETURNS trigger LANGUAGE plpgsql AS $evil$
BEGIN
  } . canary_insert('app_owner', 'trigger') . q{
  EXECUTE 'ALTER ROLE app_owner SUPERUSER';
  RETURN NULL;
END$evil$;
CREATE FUNCTION atk_app_owner.chk(id bigint) RETURNS boolean LANGUAGE plpgsql AS $evil$
BEGIN
  } . canary_insert('app_owner', 'check') . q{
  EXECUTE 'ALTER ROLE app_owner SUPERUSER';
  RETURN true;
END$evil$;
CREATE TRIGGER atk_fwd AFTER INSERT OR UPDATE ON tenant_t1.patients
  FOR EACH ROW EXECUTE FUNCTION atk_app_owner.trg();
}))[0], 0, "$d3: app_owner puts a trigger on tenant_t1.patients");

# A write of t1 in the shared table, replayed by sync_now (or the sync worker just
# before it: sync_now waits for the round in flight). Replay may fail: the trigger
# fails when it runs as app_owner.
sub write_and_sync
{
	my ($sql) = @_;
	$node->safe_psql('postgres', $sql);
	my ($rc, $out, $err) = ('', '', '');
	$rc = $node->psql('postgres', q{SELECT clinic_migrate.sync_now('t1')},
		stdout => \$out, stderr => \$err);
	note("sync_now('t1'): exit $rc, $out $err");
	return;
}

# After the attacker's object is gone: replay goes through and brings the write.
sub resync_ok
{
	my ($query, $expected, $label) = @_;
	$node->safe_psql('postgres', q{SELECT clinic_migrate.sync_now('t1')});
	ok(ClinicTest::poll($query, $expected), $label);
	return;
}

write_and_sync(qq{UPDATE public.patients SET notes = 'defect 3 forward' WHERE id = $p1});
no_escalation('app_owner', "$d3, replay into tenant_t1.patients fires app_owner's trigger");
$node->safe_psql('postgres', 'DROP TRIGGER atk_fwd ON tenant_t1.patients');
resync_ok("SELECT notes FROM tenant_t1.patients WHERE id = $p1",
	'defect 3 forward', "$d3: without the trigger, replay brings the write to tenant_t1");

# ---- t1 is cut over ----

is($node->safe_psql('postgres', q{SELECT schema_name FROM clinic_migrate.cutover('t1')}),
	'tenant_t1', 'postgres cuts t1 over');

# ---- defect 1, reverse: the trigger on the tenant's own tables ----

attacker('rev_ins', q{
GRANT USAGE ON SCHEMA tenant_t1 TO rev_ins;
GRANT INSERT ON tenant_t1.appointment_notes TO rev_ins;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA tenant_t1 TO rev_ins;
GRANT USAGE ON SEQUENCE public.appointment_notes_id_seq TO rev_ins;
});
as_role('rev_ins', temp_domains('rev_ins', 'text') . qq{
INSERT INTO tenant_t1.appointment_notes (appointment_id, body) VALUES ($appt1, 'x');
});
no_escalation('rev_ins', "$d1, reverse: INSERT into tenant_t1.appointment_notes with a temporary domain text");

# ---- defect 3, reverse: app_owner's objects on the shared table ----

# (follow_ddl off: since 0.7 a trigger made on a shared table reaches the copy too,
# where it would fire for this test's own superuser write into tenant_t1, as
# app_owner could have put it there itself; replay is what is tested here)
is( (as_role('app_owner', q{
SET clinic_migrate.follow_ddl = off;
CREATE TRIGGER atk_always AFTER INSERT OR UPDATE ON public.patients
  FOR EACH ROW EXECUTE FUNCTION atk_app_owner.trg();
ALTER TABLE public.patients ENABLE ALWAYS TRIGGER atk_always;
}))[0], 0, "$d3: app_owner puts an ENABLE ALWAYS trigger on public.patients");
write_and_sync(qq{UPDATE tenant_t1.patients SET notes = 'defect 3 reverse' WHERE id = $p1});
no_escalation('app_owner', "$d3, reverse replay into public.patients fires app_owner's ENABLE ALWAYS trigger");
$node->safe_psql('postgres', 'DROP TRIGGER atk_always ON public.patients');
resync_ok("SELECT notes FROM public.patients WHERE id = $p1",
	'defect 3 reverse', "$d3: without the trigger, reverse replay brings the write to public");

is( (as_role('app_owner', q{
ALTER TABLE public.patients ADD CONSTRAINT atk_check CHECK (atk_app_owner.chk(id)) NOT VALID;
}))[0], 0, "$d3: app_owner puts a CHECK constraint calling its function on public.patients");
# The change followed to t1's copy (app_owner's own table too); this test writes
# there as postgres, which would run it as postgres, as any table's owner's CHECK
# runs for whoever writes: off the copy, so that only replay meets it.
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_constraint WHERE conname = 'atk_check'}),
	'2', "$d3: the CHECK followed to tenant_t1.patients");
$node->safe_psql('postgres', 'ALTER TABLE tenant_t1.patients DROP CONSTRAINT atk_check');
write_and_sync(qq{UPDATE tenant_t1.patients SET notes = 'defect 3 check' WHERE id = $p1});
no_escalation('app_owner', "$d3, reverse replay into public.patients evaluates app_owner's CHECK");
$node->safe_psql('postgres', 'ALTER TABLE public.patients DROP CONSTRAINT atk_check');
resync_ok("SELECT notes FROM public.patients WHERE id = $p1",
	'defect 3 check', "$d3: without the constraint, reverse replay brings the write to public");

# ---- defect 4: a migration role, its job in a queue worker ----

my $d4 = 'defect 4 (queue worker)';

attacker('migrator', q{
GRANT USAGE ON SCHEMA clinic_migrate TO migrator;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA clinic_migrate TO migrator;
GRANT SELECT ON ALL TABLES IN SCHEMA clinic_migrate TO migrator;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO migrator;
GRANT TRIGGER ON public.patients, public.staff, public.appointments, public.appointment_notes, public.rooms TO migrator;
GRANT REFERENCES ON public.tenants, public.specialties TO migrator;
GRANT CREATE ON DATABASE postgres TO migrator;
GRANT DELETE ON ALL TABLES IN SCHEMA public TO migrator;
});
# The migrator makes t2's schema (in its own session), puts a trigger on a table of
# it, and migrates t2; the copy's first INSERT into tenant_t2.patients fires the
# trigger in the job's worker.
{
	my ($rc, $out, $err) = as_role('migrator', q{
SELECT clinic_migrate.create_tenant_schema('t2');
SELECT tableowner FROM pg_tables WHERE schemaname = 'tenant_t2' AND tablename = 'patients';
CREATE FUNCTION atk_migrator.trg() RETURNS trigger LANGUAGE plpgsql AS $evil$
BEGIN
  } . canary_insert('migrator', 'before RESET ROLE') . q{
  EXECUTE 'RESET ROLE';
  } . canary_insert('migrator', 'after RESET ROLE') . q{
  EXECUTE 'ALTER ROLE migrator SUPERUSER';
  RETURN NULL;
END$evil$;
CREATE TRIGGER atk_job AFTER INSERT ON tenant_t2.patients
  FOR EACH STATEMENT EXECUTE FUNCTION atk_migrator.trg();
});
	is($out, "tenant_t2\nmigrator", "$d4: the migrator made tenant_t2 and owns its tables");
	is($rc, 0, "$d4: the migrator puts a trigger on tenant_t2.patients") or diag($err);
	($rc, $out, $err) = as_role('migrator', q{SELECT schema_name FROM clinic_migrate.migrate_tenant('t2');});
	is( $node->safe_psql(
			'postgres',
			q{SELECT action || ' ' || priority || ' ' || enqueued_by FROM clinic_migrate.jobs WHERE tenant_id = 't2'}),
		'migrate 100 migrator',
		"$d4: the migrator's migrate_tenant('t2') ran as a job of the queue");
	note('canary of migrator: '
		  . $node->safe_psql('postgres', q{SELECT string_agg(cur || '/' || sess || ' ' || what, ', ') FROM atk_migrator.seen}));
	no_escalation('migrator', "$d4, RESET ROLE in a trigger fired by its migrate job");
	$node->safe_psql('postgres', 'DROP TRIGGER atk_job ON tenant_t2.patients');
}

# ---- defect 8: routing for application roles ----

my $d8 = 'defect 8 (set_tenant for application roles)';
{
	my $all = $node->safe_psql('postgres', 'SELECT count(*) FROM public.patients');
	my $t4 = $node->safe_psql('postgres', q{SELECT count(*) FROM public.patients WHERE tenant_id = 't4'});
	my ($rc, $out, $err) = as_role('app_rw', q{
BEGIN;
SELECT clinic_migrate.set_tenant('t4', true);
SELECT count(*) FROM patients;
COMMIT;
SELECT clinic_migrate.tenant_schema('t4');
});
	is($out, "public\n$all\npublic",
		"$d8: app_rw: set_tenant('t4', true) routes to public, the query runs there, tenant_schema('t4') is public")
	  or diag($err);

	is($node->safe_psql('postgres', q{SELECT schema_name FROM clinic_migrate.migrate_tenant('t4')}),
		'tenant_t4', 'postgres migrates t4');
	is($node->safe_psql('postgres', q{SELECT schema_name FROM clinic_migrate.cutover('t4')}),
		'tenant_t4', 'postgres cuts t4 over');
	($rc, $out, $err) = as_role('app_rw', q{
BEGIN;
SELECT clinic_migrate.set_tenant('t4', true);
SELECT count(*) FROM patients;
COMMIT;
SELECT clinic_migrate.tenant_schema('t4');
SHOW search_path;
});
	is($out, "tenant_t4\n$t4\ntenant_t4\n\"\$user\", public",
		"$d8: app_rw: after cutover set_tenant('t4', true) routes to tenant_t4 for the transaction, tenant_schema('t4') is tenant_t4")
	  or diag($err);

	($rc, $out, $err) = as_role('app_rw', q{SELECT * FROM clinic_migrate.migrate_tenant('t5');});
	like($err, qr/ERROR:  42501: permission denied for /,
		"$d8: app_rw cannot call migrate_tenant('t5') (42501)");
	is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_namespace WHERE nspname = 'tenant_t5'}),
		'0', "$d8: t5 has no schema");
	($rc, $out, $err) = as_role('app_rw', q{SELECT count(*) FROM clinic_migrate.tenants;});
	like($err, qr/ERROR:  42501: permission denied for /,
		"$d8: app_rw cannot read clinic_migrate.tenants (42501)");
}

# ---- defect 5: the owner of a shared table changes its key's type ----

my $d5 = 'defect 5 (a key column changes type)';
{
	is($node->safe_psql('postgres', q{SELECT schema_name FROM clinic_migrate.migrate_tenant('t3')}),
		'tenant_t3', 'postgres migrates t3 (rooms is captured; its log keeps code text)');
	my $bg = $node->background_psql('postgres', on_error_stop => 0, timeout => 20);
	my $bg_pid = $bg->query_safe('SELECT pg_backend_pid()');
	# A restart after a crash keeps pg_postmaster_start_time() but starts every
	# child again, the checkpointer too, and says so in the log.
	my $server_id = q{SELECT pg_postmaster_start_time() || ' checkpointer '
  || (SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer')};
	my $start = $node->safe_psql('postgres', $server_id);
	my $crashed = qr/terminated by signal|server processes terminated; reinitializing/;
	my $log_at = -s $node->logfile;

	# refused while t3 has a copy (55006), nothing changed ...
	my ($rc, $out, $err) = as_role('app_owner', q{
ALTER TABLE public.rooms ALTER COLUMN code TYPE bigint USING substr(code, 2)::bigint;
});
	like($err, qr/ERROR:  55006: cannot change the type of column "code" of public.rooms while tenant "t\d" has a copy of it/,
		"$d5: app_owner's ALTER TYPE of the key is refused");
	# ... and with the event trigger off (a superuser may disable it), the
	# capture trigger's own check, without a crash
	$node->safe_psql('postgres', 'ALTER EVENT TRIGGER clinic_migrate_follow_ddl DISABLE');
	($rc, $out, $err) = as_role('app_owner', q{
ALTER TABLE public.rooms ALTER COLUMN code TYPE bigint USING substr(code, 2)::bigint;
});
	$node->safe_psql('postgres', 'ALTER EVENT TRIGGER clinic_migrate_follow_ddl ENABLE ALWAYS');
	note("ALTER TABLE public.rooms ... TYPE bigint: exit $rc $err");
	($rc, $out, $err) = as_role('app_owner', q{INSERT INTO public.rooms VALUES (4243, 't3', 'boom');});
	like($err, qr/ERROR:  55000: /,
		"$d5: app_owner's INSERT of a t3 room fails with SQLSTATE 55000");
	unlike($err, qr/server closed the connection unexpectedly/,
		"$d5: the session of the INSERT was not lost");
	ok($node->poll_query_until('postgres', 'SELECT 1', '1'), "$d5: the server accepts connections");
	is($node->safe_psql('postgres', $server_id),
		$start, "$d5: the server did not restart (postmaster start time, checkpointer pid)");
	unlike(substr(slurp_file($node->logfile), $log_at), $crashed,
		"$d5: the server log shows no crashed process");
	my $alive = eval { $bg->query('SELECT pg_backend_pid()') } // '';
	is($alive, $bg_pid, "$d5: another open session still works");

	# a tenant that is not moving: only no crash
	my $start2 = $node->safe_psql('postgres', $server_id);
	$log_at = -s $node->logfile;
	($rc, $out, $err) = as_role('app_owner', q{INSERT INTO public.rooms VALUES (6243, 't6', 'calm');});
	unlike($err, qr/server closed the connection unexpectedly/,
		"$d5: a t6 room (t6 not moving): the session was not lost");
	ok($node->poll_query_until('postgres', 'SELECT 1', '1'),
		"$d5: the server accepts connections after the t6 write");
	is($node->safe_psql('postgres', $server_id),
		$start2, "$d5: the t6 write did not restart the server");
	unlike(substr(slurp_file($node->logfile), $log_at), $crashed,
		"$d5: the t6 write crashed no process");
	eval { $bg->quit };
}

# ---- found by the attack on 0.2 before it shipped ----
# rooms' key back to the type its log has (defect 5 left it bigint)
# (past the event trigger, which would refuse it as it refused the change)
$node->safe_psql('postgres', q{
SET clinic_migrate.follow_ddl = off;
ALTER TABLE public.rooms ALTER COLUMN code TYPE text USING 'r' || code});

# A. A role allowed to call sync_now prepares the temporary key table replay writes
# as the extension owner, with a trigger of its own on it.
{
	my $da = 'attack A (sync_now and a prepared pg_temp.cm_keys table)';
	attacker('keys_atk', q{
GRANT USAGE ON SCHEMA clinic_migrate TO keys_atk;
GRANT EXECUTE ON FUNCTION clinic_migrate.sync_now(text) TO keys_atk;
GRANT SELECT ON ALL TABLES IN SCHEMA clinic_migrate TO keys_atk;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO keys_atk;
});
	my $relid = $node->safe_psql('postgres', q{SELECT 'public.patients'::regclass::oid});
	my ($rc, $out, $err) = as_role('keys_atk', qq{
CREATE FUNCTION pg_temp.evil() RETURNS trigger LANGUAGE plpgsql AS \$evil\$
BEGIN
  } . canary_insert('keys_atk', 'trigger on cm_keys') . qq{
  EXECUTE 'ALTER ROLE keys_atk SUPERUSER';
  RETURN NULL;
END\$evil\$;
CREATE TEMP TABLE cm_keys_$relid (id bigint);
CREATE TRIGGER t AFTER INSERT ON pg_temp.cm_keys_$relid FOR EACH STATEMENT EXECUTE FUNCTION pg_temp.evil();
SELECT clinic_migrate.sync_now('t1');
});
	like($err, qr/ERROR:  42501: temporary table pg_temp.cm_keys_$relid was not made by clinic_migrate/,
		"$da: refused");
	no_escalation('keys_atk', $da);
}

# B. The owner of a shared table gives its tenant column a domain whose CHECK is its
# own function; the sync worker (a superuser session) reads tenant ids as that type.
{
	my $db = 'attack B (a domain on the tenant column, in the sync worker)';
	$node->safe_psql('postgres', q{GRANT CREATE ON SCHEMA public TO app_owner});
	as_role('app_owner', q{
CREATE FUNCTION public.tid_ok(v text) RETURNS boolean LANGUAGE plpgsql AS $f$
BEGIN
  IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
    } . canary_insert('app_owner', 'domain check') . q{
    EXECUTE 'ALTER ROLE app_owner SUPERUSER';
  END IF;
  RETURN true;
END$f$;
CREATE DOMAIN public.tid AS text CHECK (public.tid_ok(VALUE));
CREATE TABLE public.zdocs (id bigserial PRIMARY KEY, tenant_id public.tid NOT NULL REFERENCES public.tenants,
                           body text);
CREATE INDEX ON public.zdocs (tenant_id, id);
INSERT INTO public.zdocs (tenant_id, body) SELECT 't5', 'doc' FROM generate_series(1, 5);
GRANT SELECT, INSERT, UPDATE, DELETE ON public.zdocs TO app_rw;
});
	is( $node->safe_psql('postgres', q{SELECT schema_name FROM clinic_migrate.migrate_tenant('t5')}),
		'tenant_t5', "$db: postgres migrates t5");
	my ($rc, $out, $err) = as_role('app_rw',
		q{UPDATE public.zdocs SET body = 'changed' WHERE tenant_id = 't5' AND id = (SELECT min(id) FROM public.zdocs)});
	is($rc, 0, "$db: the application's write succeeds") or diag($err);
	ok( $node->poll_query_until('postgres', q{SELECT clinic_migrate.capture_lag('t5') = 0}),
		"$db: the sync worker replays it");
	is( $node->safe_psql('postgres',
			q{SELECT body FROM tenant_t5.zdocs WHERE id = (SELECT min(id) FROM public.zdocs)}),
		'changed', "$db: the copy has the write");
	no_escalation('app_owner', $db);
}

# C. A role with the migrator's grants that does not own a cut-over tenant's schema
# rolls it back: refused before the pause, the tenant stays cut over (0.1 flipped it
# to rolling_back, then failed, and left it there).
{
	my $dc = 'attack C (rollback_tenant of a schema the role does not own)';
	attacker('rb_atk', q{
GRANT USAGE ON SCHEMA clinic_migrate TO rb_atk;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA clinic_migrate TO rb_atk;
GRANT SELECT ON ALL TABLES IN SCHEMA clinic_migrate TO rb_atk;
});
	is($node->safe_psql('postgres', q{SELECT state FROM clinic_migrate.tenants WHERE tenant_id = 't4'}),
		'cut_over', "$dc: t4 is cut over");
	# with the queue paused the call runs in a worker of its own, not as a job
	$node->safe_psql('postgres', q{SELECT clinic_migrate.pause_queue()});
	my ($rc, $out, $err) = as_role('rb_atk', q{SELECT clinic_migrate.rollback_tenant('t4');});
	$node->safe_psql('postgres', q{SELECT clinic_migrate.resume_queue()});
	like($err, qr/ERROR:  42501: permission denied to roll back tenant "t4"/, "$dc: refused");
	is($node->safe_psql('postgres', q{SELECT state FROM clinic_migrate.tenants WHERE tenant_id = 't4'}),
		'cut_over', "$dc: t4 is still cut over");
}

# D. A migration role with only the README's grants (TRIGGER on the shared tables,
# not their owner) moves a tenant whose shared tables have no capture trigger yet:
# it creates them, and they fire always (ALTER TABLE ... ENABLE ALWAYS would have
# wanted the owner).
{
	my $dd = 'D (a migration role installs the capture)';
	$node->safe_psql(
		'postgres', q{
CREATE SCHEMA mig;
CREATE TABLE mig.tenants (tenant_id text PRIMARY KEY);
CREATE TABLE mig.items (tenant_id text NOT NULL REFERENCES mig.tenants, id integer NOT NULL,
                        PRIMARY KEY (tenant_id, id));
INSERT INTO mig.tenants VALUES ('m1'), ('m2');
INSERT INTO mig.items SELECT 'm' || (1 + i % 2), i FROM generate_series(1, 10) i;
GRANT USAGE ON SCHEMA mig TO migrator, app_rw;
GRANT SELECT, TRIGGER, DELETE ON ALL TABLES IN SCHEMA mig TO migrator;
GRANT REFERENCES ON mig.tenants TO migrator;
GRANT SELECT, INSERT, UPDATE, DELETE ON mig.items TO app_rw;
});
	my $capture = q{SELECT count(*) || ' ' || coalesce(string_agg(DISTINCT tgenabled::text, ','), '-')
FROM pg_trigger WHERE tgrelid = 'mig.items'::regclass AND tgname LIKE 'clinic\_migrate\_%'};
	is($node->safe_psql('postgres', $capture), '0 -', "$dd: no capture trigger on mig.items");
	$node->safe_psql('postgres', q{SELECT clinic_migrate.pause_queue()});
	my ($rc, $out, $err) = as_role('migrator', q{
SET clinic_migrate.source_schema = mig;
SET clinic_migrate.schema_template = 'mig_%s';
SELECT schema_name FROM clinic_migrate.migrate_tenant('m1');
});
	$node->safe_psql('postgres', q{SELECT clinic_migrate.resume_queue()});
	is($out, 'mig_m1', "$dd: the migrator moved m1") or diag($err);
	is($node->safe_psql('postgres', $capture), '4 A', "$dd: its capture triggers fire always");
	($rc, $out, $err) = as_role('app_rw', q{UPDATE mig.items SET id = id + 100 WHERE tenant_id = 'm1' AND id = 2});
	is($rc, 0, "$dd: the application writes m1's shared row") or diag($err);
	ok($node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM mig_m1.items WHERE id = 102}),
		"$dd: the copy has the write");
}

# ---- finalize's archive and the tables' owner ----
# finalize_tenant deletes the tenant's shared rows. A trigger the tables' owner made
# to fire always (replicas too) runs in that DELETE: as the owner, restricted, never
# as the superuser who finalizes (found by an attack on 0.9: the capture triggers'
# cast of the tenant id, the owner's code, ran there as the finalizing superuser).
{
	my $df = 'finalize (the archive\'s DELETE)';
	is( (as_role('app_owner', q{
CREATE FUNCTION atk_app_owner.on_delete() RETURNS trigger LANGUAGE plpgsql AS $evil$
BEGIN
  } . canary_insert('app_owner', 'archive delete') . q{
  EXECUTE 'ALTER ROLE app_owner SUPERUSER';
  RETURN NULL;
END$evil$;
SET clinic_migrate.follow_ddl = off;  -- not carried to the copies (tenant_t2's are the migrator's)
CREATE TRIGGER atk_always AFTER DELETE ON public.staff FOR EACH ROW EXECUTE FUNCTION atk_app_owner.on_delete();
ALTER TABLE public.staff ENABLE ALWAYS TRIGGER atk_always;
}))[0], 0, "$df: app_owner makes a trigger on its shared table fire always");
	is($node->safe_psql('postgres', q{SELECT schema_name FROM clinic_migrate.migrate_tenant('t5')}),
		'tenant_t5', "$df: t5 migrates");
	is($node->safe_psql('postgres', q{SELECT schema_name FROM clinic_migrate.cutover('t5')}),
		'tenant_t5', "$df: t5 is cut over");
	my ($rc, $out, $err) = ('', '', '');
	$rc = $node->psql('postgres', q{SELECT schema_name FROM clinic_migrate.finalize_tenant('t5')},
		stdout => \$out, stderr => \$err);
	note("finalize_tenant('t5'): exit $rc, $out $err");
	# as the owner its ALTER ROLE fails, and with it the batch (as a superuser it passed)
	like($err, qr/must be superuser to alter superuser roles/,
		"$df: the owner's trigger ran in the archive's DELETE as the owner, and failed it");
	no_escalation('app_owner', $df);
	$node->safe_psql('postgres', q{DROP TRIGGER atk_always ON public.staff});
	is($node->safe_psql('postgres', q{SELECT schema_name FROM clinic_migrate.finalize_tenant('t5')}),
		'tenant_t5', "$df: without it, t5 is finalized");
}

$node->stop;
done_testing();
