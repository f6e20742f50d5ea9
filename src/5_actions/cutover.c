/*-------------------------------------------------------------------------
 * cutover.c
 *	  cutover, rollback after cutover, and finalize_tenant.
 *	  Floor 5 (the actions).  May call: floors 1 to 4, sync, validate, rollback.
 *
 * Cutover switches a copied tenant from its shared rows to its schema
 * while the application writes.  Only that tenant's writers wait, and only
 * for a bounded pause:
 *
 *   1. prepare: the reverse capture goes onto the tenant's tables (it
 *      refuses writes there until the switch), and their serial and
 *      identity columns are pointed at the shared tables' sequences
 *      (clone_switch_sequences), so keys made after the switch never
 *      collide with other tenants' when they are replayed back;
 *   2. catch up until fewer than cutover_max_lag changes are pending;
 *   3. validate both sides in one snapshot: every key that differs must be
 *      a captured change still pending (validate_before_pause);
 *   4. pause: take the tenant's write lock exclusively.  Every write of the
 *      tenant's rows takes it in SHARE mode in the capture trigger, so the
 *      tenant's transactions in flight finish first and new ones queue
 *      behind it; no other tenant's write ever asks for it.  Drain the log,
 *      check the rows of the keys drained, set the state to cut_over and
 *      commit.  The writers that queued wake up, read the new state and
 *      fail with SQLSTATE 40001, to be retried where the tenant lives now.
 *
 * Lock waits in the pause use lock_timeout = what is left of
 * cutover_max_pause; past the budget the attempt is rolled back (the
 * writers go on), recorded, and tried again after a catch-up, at most
 * cutover_attempts times.  Every attempt is recorded in
 * clinic_migrate.cutovers with its pause.
 *
 * Rollback after cutover is the same switch the other way (the reverse log
 * drained into the shared rows), followed by dropping the schema.
 * Finalize makes the same pause to stop the reverse capture exactly, gives
 * the tenant's tables sequences of their own again, and moves the tenant's
 * shared rows into archive tables (or deletes them) in batches.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "portability/instr_time.h"
#include "storage/latch.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "catalog/pg_namespace.h"
#include "utils/wait_event.h"

#include "apply.h"
#include "capture.h"
#include "decode.h"
#include "settings.h"
#include "util.h"
#include "locks.h"
#include "runstate.h"
#include "clone.h"
#include "copy.h"
#include "cutover.h"
#include "ddl.h"
#include "plan.h"
#include "rollback.h"
#include "state.h"
#include "sync.h"
#include "validate.h"

#define begin_txn cm_begin_txn
#define end_txn cm_end_txn

void
cm_tenant_set_state(const char *tenant, const char *state)
{
	Oid			types[2] = {TEXTOID, TEXTOID};
	Datum		values[2];

	values[0] = CStringGetTextDatum(tenant);
	values[1] = CStringGetTextDatum(state);
	cm_state_exec("UPDATE clinic_migrate.tenants SET state = $2, last_error = NULL, "
				  "cut_over_at = CASE WHEN $2 = 'cut_over' THEN clock_timestamp() "
				  "                   WHEN $2 = 'rolling_back' THEN NULL ELSE cut_over_at END, "
				  "finalized_at = CASE WHEN $2 = 'finalized' THEN clock_timestamp() ELSE finalized_at END "
				  "WHERE tenant_id = $1",
				  2, types, values, NULL, 0);
	/* every backend reads the tenant's new state at its next lock */
	capture_tenants_changed();
}

static double
ms_since(instr_time start)
{
	instr_time	now;

	INSTR_TIME_SET_CURRENT(now);
	INSTR_TIME_SUBTRACT(now, start);
	return INSTR_TIME_GET_MILLISEC(now);
}

static void
check_stop(const char *tenant)
{
	CHECK_FOR_INTERRUPTS();
	if (cm_got_sigterm)
		ereport(ERROR,
				(errcode(ERRCODE_ADMIN_SHUTDOWN),
				 errmsg("work on tenant \"%s\" stopped by request", tenant),
				 errhint("Run it again to resume.")));
}

static int64
pending_changes(const char *tenant)
{
	int64		count;
	double		age;

	apply_backlog(tenant, &count, &age);
	return count;
}

/*
 * Replay rounds (in whichever direction the state calls for) until fewer
 * than max_lag changes are pending, within wait_s seconds.
 */
static void
catch_up(const char *tenant, const char *schema, int max_lag, int wait_s)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), wait_s * 1000L);
	char		activity[NAMEDATALEN + 64];

	snprintf(activity, sizeof(activity), "clinic_migrate: catching up %s before the pause", schema);
	for (;;)
	{
		int64		applied;
		int64		lag;

		check_stop(tenant);
		pgstat_report_activity(STATE_RUNNING, activity);
		(void) cm_wal_drain();
		applied = cm_sync_tenant_round(tenant);
		begin_txn();
		lag = pending_changes(tenant);
		end_txn();
		if (lag <= max_lag)
			return;
		if (GetCurrentTimestamp() > deadline)
			ereport(ERROR,
					(errcode(ERRCODE_QUERY_CANCELED),
					 errmsg("changes of tenant \"%s\" kept coming faster than they were replayed", tenant),
					 errdetail(INT64_FORMAT " changes were pending after %d s; cutover_max_lag is %d.",
							   lag, wait_s, max_lag),
					 errhint("Try at a quieter time, or raise clinic_migrate.cutover_max_lag or cutover_wait.")));
		if (applied == 0)
		{
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 50L, PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
		}
	}
}

/* one attempt of a pause */
typedef struct Attempt
{
	bool		done;
	TimestampTz started;
	double		pause_ms;		/* the tenant's writers were held this long */
	double		lock_wait_ms;	/* of which waiting for its transactions in flight */
	int64		drained;
	int64		checked;
	char	   *error;			/* why a retried attempt gave up */
} Attempt;

static void
over_budget(instr_time t0, int budget_ms)
{
	if (ms_since(t0) > budget_ms)
		ereport(ERROR,
				(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
				 errmsg("the pause reached clinic_migrate.cutover_max_pause (%d ms)", budget_ms)));
}

static void
set_lock_timeout(instr_time t0, int budget_ms)
{
	char		buf[32];
	int			left = budget_ms - (int) ms_since(t0);

	snprintf(buf, sizeof(buf), "%d", Max(left, 1));
	(void) set_config_option("lock_timeout", buf, PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_LOCAL, true, 0, false);
}

/*
 * The pause: hold the tenant's writes, drain the log (forward for cutover,
 * reverse for rollback and finalize), check the drained rows, set the new
 * state, commit.  A retryable failure (lock timeout, the budget, deadlock,
 * serialization failure) rolls back and is returned in a->error; anything
 * else is raised.
 */
/*
 * A table given to the tenant, or dropped, after its plan was read (a
 * CREATE or DROP TABLE while it moved, see ddl.c): the attempt is retried
 * with the plan read again.  Under the pause's lock, no other can come.
 */
static void
check_plan_current(List *recorded, const char *tenant)
{
	List	   *now = clone_recorded_tables(tenant, CurrentMemoryContext);

	if (list_length(now) != list_length(recorded) || list_difference_oid(now, recorded) != NIL)
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("the tables of tenant \"%s\" changed while it was being switched", tenant)));
}

/*
 * A table with a copy that the plan no longer takes (a foreign key that
 * made it a child table was dropped, or it was excluded after the copy):
 * switching now would leave its copy behind, unreplayed.
 */
static void
check_recorded_in_plan(TenantPlan *plan, List *recorded, const char *tenant)
{
	ListCell   *lc;

	foreach(lc, recorded)
	{
		PlanTable  *pt = plan_find(plan, lfirst_oid(lc));

		if (pt == NULL || pt->position == 0)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("table %s has a copy in tenant \"%s\"'s schema but its plan no longer takes it",
							get_rel_name(lfirst_oid(lc)) ? cm_qualified_relname(lfirst_oid(lc)) : "(dropped)", tenant),
					 errdetail("A foreign key that made it a child table was dropped, or it was excluded after the copy."),
					 errhint("Undo that change, or roll the tenant back and migrate it again.")));
	}
}

static void
pause_and_flip(const char *tenant, const char *plan_schema, TenantPlan *plan, List *recorded,
			   const char *expect_state, const char *new_state, bool reverse,
			   const char *point, Attempt *a)
{
	MemoryContext cxt = CurrentMemoryContext;
	instr_time	t0;
	volatile bool ok = false;
	int			budget = cm_cutover_max_pause;

	memset(a, 0, sizeof(*a));
	a->started = GetCurrentTimestamp();
	INSTR_TIME_SET_CURRENT(t0);
	PG_TRY();
	{
		TenantInfo	info;
		Oid			schema_oid;

		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		schema_oid = get_namespace_oid(plan_schema, false);

		/*
		 * Locks first, snapshot after: a writer that committed while we
		 * waited for the lock must be seen by the drain.
		 */
		set_lock_timeout(t0, budget);
		cm_tenant_write_lock(schema_oid, true);
		set_lock_timeout(t0, budget);
		(void) cm_lock_tenant_kind(tenant, CM_LOCK_APPLY, true, false);
		a->lock_wait_ms = ms_since(t0);
		SPI_connect();
		PushActiveSnapshot(GetTransactionSnapshot());

		clone_tenant_info(tenant, &info);
		if (!info.exists || strcmp(info.state, expect_state) != 0)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("tenant \"%s\" changed state while it was being switched", tenant),
					 errdetail("It is %s, not %s.", info.exists ? info.state : "gone", expect_state)));
		check_plan_current(recorded, tenant);

		/*
		 * One round drains everything: the snapshot was taken after the
		 * locks, so every change of the tenant committed before is in it,
		 * and none can commit until we do (its writer waits for the write
		 * lock in the capture trigger, before it logs).
		 */
		for (int i = 0; i < plan->ncopied; i++)
			plan->tables[i].applied = 0;
		a->drained = reverse ? apply_reverse_round(tenant, plan, info.schema_name)
			: apply_round(tenant, plan, info.schema_name);
		over_budget(t0, budget);
		a->checked = validate_applied_keys(plan, info.schema_name, tenant);
		cm_pause_point(point);
		over_budget(t0, budget);
		cm_tenant_set_state(tenant, new_state);
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
		ok = true;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		MemoryContextSwitchTo(cxt);
		if (cm_got_sigterm ||
			(edata->sqlerrcode != ERRCODE_LOCK_NOT_AVAILABLE &&
			 edata->sqlerrcode != ERRCODE_T_R_DEADLOCK_DETECTED &&
			 edata->sqlerrcode != ERRCODE_T_R_SERIALIZATION_FAILURE))
			ReThrowError(edata);
		a->error = edata->message;
	}
	PG_END_TRY();
	a->pause_ms = ms_since(t0);
	a->done = ok;
}

static void
record_attempt(const char *tenant, const char *direction, int attempt, Attempt *a,
			   int64 rows_validated, const char *outcome)
{
	Oid			types[10] = {TEXTOID, TEXTOID, INT4OID, TEXTOID, TIMESTAMPTZOID, FLOAT8OID,
	FLOAT8OID, INT8OID, INT8OID, TEXTOID};
	Datum		values[10];
	char		nulls[10] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};

	values[0] = CStringGetTextDatum(tenant);
	values[1] = CStringGetTextDatum(direction);
	values[2] = Int32GetDatum(attempt);
	values[3] = CStringGetTextDatum(outcome);
	values[4] = TimestampTzGetDatum(a->started);
	values[5] = Float8GetDatum(a->pause_ms);
	values[6] = Float8GetDatum(a->lock_wait_ms);
	values[7] = Int64GetDatum(a->drained);
	values[8] = Int64GetDatum(rows_validated);
	if (a->error)
		values[9] = CStringGetTextDatum(a->error);
	else
		nulls[9] = 'n';
	cm_state_exec("INSERT INTO clinic_migrate.cutovers (tenant_id, direction, attempt, outcome, "
				  "started_at, pause_ms, lock_wait_ms, keys_drained, rows_validated, error) "
				  "VALUES ($1, $2, $3, $4, $5, round($6::numeric, 3), round($7::numeric, 3), $8, $9, $10)",
				  10, types, values, nulls, 0);
}

typedef struct InstallOne
{
	TenantPlan *plan;
	int			i;
} InstallOne;

static void
install_one(void *arg)
{
	InstallOne *one = arg;

	capture_install_table(one->plan, one->i, true);
}

/*
 * A tenant captured from the WAL gets the full capture triggers before its
 * cutover: they pause its writers while it switches, and refuse them after.
 * Table by table, each in a transaction of its own, under the installer's
 * lock (as copy.c installs them).  The triggers log its changes as soon as
 * they are there, and the WAL's capture goes on meanwhile; once every
 * transaction that began before them has ended, and the WAL is read up to
 * then, the triggers alone carry it.
 */
static void
capture_by_triggers(const char *tenant, MemoryContext cxt)
{
	TenantPlan *volatile plan = NULL;
	bool		wal;

	begin_txn();
	wal = false;
	if (capture_wal_supported())
	{
		cm_state_exec_tenant("SELECT 1 FROM clinic_migrate.tenants WHERE tenant_id = $1 "
							 "AND capture_method = 'wal'", tenant);
		wal = SPI_processed > 0;
	}
	if (wal)
	{
		CmSettings	s;
		char	   *t = (char *) tenant;

		cm_current_settings(&s);
		plan = clone_plan_for_tenant(&t, &s, cxt);
	}
	end_txn();
	if (!wal)
		return;
	pgstat_report_activity(STATE_RUNNING, "clinic_migrate: installing the capture triggers before the pause");
	capture_installer_lock(true);
	PG_TRY();
	{
		/*
		 * A transaction writing a table holds its trigger up: waited for as
		 * long as the pauses would have waited for it, not lock_retry_time.
		 */
		long		budget_ms = (long) cm_cutover_attempts * cm_cutover_max_pause;
		char		secs[32];

		snprintf(secs, sizeof(secs), "%ld", Max((budget_ms + 999) / 1000, 1));
		for (int i = 0; i < plan->ncopied; i++)
		{
			int			nest;
			ErrorData  *failed;
			InstallOne	one = {plan, i};

			begin_txn();
			nest = NewGUCNestLevel();
			(void) set_config_option("clinic_migrate.lock_retry_time", secs, PGC_USERSET, PGC_S_SESSION,
									 GUC_ACTION_SAVE, true, 0, false);
			failed = cm_try_in_subxact(install_one, &one);
			if (failed && failed->sqlerrcode != ERRCODE_LOCK_NOT_AVAILABLE)
				ReThrowError(failed);
			if (failed)
				ereport(ERROR,
						(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
						 errmsg("cutover of tenant \"%s\" gave up before its pause", tenant),
						 errdetail("Its capture triggers, put on before the pause, waited %s s for the table %s: %s",
								   secs, cm_qualified_relname(plan->tables[i].relid),
								   failed->detail ? failed->detail : failed->message),
						 errhint("Nothing was switched. Long transactions writing the shared tables hold it up: "
								 "try at a quieter time, or raise clinic_migrate.cutover_max_pause.")));
			AtEOXact_GUC(true, nest);
			end_txn();
		}

		/*
		 * Every write from here on is logged by the triggers.  The ones
		 * before: once the transactions older than the triggers have ended,
		 * all are in the WAL up to now, and the drain logs them.  Only then
		 * is the tenant no longer one the slot is kept for (the slot may go
		 * at that commit): a failure before it leaves the tenant captured
		 * from the WAL, and the next cutover does this again.
		 */
		begin_txn();
		capture_wait_for_writers(plan);
		end_txn();
		(void) cm_wal_drain();
		begin_txn();
		cm_state_exec_tenant("UPDATE clinic_migrate.tenants SET capture_method = 'trigger' "
							 "WHERE tenant_id = $1", tenant);
		capture_tenants_changed();
		end_txn();

		/*
		 * A table adopted meanwhile got the triggers capture from the WAL
		 * needs: the full ones now (nothing to do for the others).  Tables
		 * adopted from now on get the full ones (the tenant needs them).
		 */
		begin_txn();
		{
			CmSettings	s;
			char	   *t = (char *) tenant;

			cm_current_settings(&s);
			plan = clone_plan_for_tenant(&t, &s, cxt);
		}
		end_txn();
		for (int i = 0; i < plan->ncopied; i++)
		{
			begin_txn();
			capture_install_table(plan, i, true);
			end_txn();
		}
	}
	PG_FINALLY();
	{
		capture_installer_lock(false);
	}
	PG_END_TRY();
}

/*
 * Catch up, check, and pause until the switch is made or the attempts are
 * used up.  direction names it in the records (cutover, rollback, finalize).
 */
static void
switch_tenant(CmWorkerShared *sh, const char *schema, const char *expect_state,
			  const char *new_state, bool reverse, const char *direction, bool precheck)
{
	const char *tenant = sh->tenant;
	int64		rows = 0;
	int64		in_flight = 0;
	int			attempt;
	Attempt		a;
	char		activity[NAMEDATALEN + 64];
	char	   *point = psprintf("%s_pause", direction);
	MemoryContext cxt = AllocSetContextCreate(TopMemoryContext, "clinic_migrate switch",
											  ALLOCSET_DEFAULT_SIZES);
	TenantPlan *plan;
	List	   *recorded = NIL;

	if (!reverse && strcmp(expect_state, "copied") == 0)
		capture_by_triggers(tenant, cxt);
	catch_up(tenant, schema, cm_cutover_max_lag, cm_cutover_wait);

	/* the plan, read before the pause; the pause only replays and checks */
	begin_txn();				/* repeatable read: one snapshot for both sides and the log */
	{
		CmSettings	s;
		char	   *t = (char *) tenant;

		cm_current_settings(&s);
		plan = clone_plan_for_tenant(&t, &s, cxt);
		recorded = clone_recorded_tables(tenant, cxt);
		if (!reverse)
			check_recorded_in_plan(plan, recorded, tenant);
		if (precheck)
		{
			snprintf(activity, sizeof(activity), "clinic_migrate: validating %s before the pause", schema);
			pgstat_report_activity(STATE_RUNNING, activity);
			validate_before_pause(plan, schema, tenant, &rows, &in_flight);
		}
	}
	end_txn();
	for (attempt = 1; attempt <= cm_cutover_attempts; attempt++)
	{
		check_stop(tenant);
		snprintf(activity, sizeof(activity), "clinic_migrate: %s of %s, pause %d", direction,
				 schema, attempt);
		pgstat_report_activity(STATE_RUNNING, activity);
		if (attempt > 1)
		{
			/* read again: a table may have been added or dropped (check_plan_current) */
			CmSettings	s;
			char	   *t = (char *) tenant;

			begin_txn();
			cm_current_settings(&s);
			plan = clone_plan_for_tenant(&t, &s, cxt);
			recorded = clone_recorded_tables(tenant, cxt);
			end_txn();
		}
		pause_and_flip(tenant, schema, plan, recorded, expect_state, new_state, reverse, point, &a);
		begin_txn();
		record_attempt(tenant, direction, attempt, &a, rows,
					   a.done ? "done" : (attempt < cm_cutover_attempts ? "retried" : "failed"));
		end_txn();
		if (a.done)
			break;
		ereport(LOG,
				(errmsg("clinic_migrate: %s of tenant \"%s\": pause %d gave up after %.1f ms: %s",
						direction, tenant, attempt, a.pause_ms, a.error)));
		if (attempt < cm_cutover_attempts)
		{
			/* let the writers that waited go on, then catch up again */
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 Min(100L * attempt, 2000L), PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
			catch_up(tenant, schema, cm_cutover_max_lag, cm_cutover_wait);
		}
	}
	if (!a.done)
		ereport(ERROR,
				(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
				 errmsg("%s of tenant \"%s\" gave up after %d pauses", direction, tenant,
						cm_cutover_attempts),
				 errdetail("The last one: %s.", a.error ? a.error : "?"),
				 errhint("Nothing was switched; clinic_migrate.cutovers lists every pause. "
						 "Long transactions writing the tenant's rows hold it up: try at a quieter time, "
						 "or raise clinic_migrate.cutover_max_pause.")));
	MemoryContextDelete(cxt);
	SpinLockAcquire(&sh->mutex);
	sh->attempts = attempt;
	sh->pause_ms = a.pause_ms;
	sh->keys_drained = a.drained;
	sh->rows_validated = rows + a.checked;
	SpinLockRelease(&sh->mutex);
}

/* the tenant's plan and its recorded state, checked for an action */
static TenantPlan *
load_tenant(const char *tenant, TenantInfo *info)
{
	CmSettings	s;
	char	   *t = (char *) tenant;
	TenantPlan *plan;

	cm_current_settings(&s);
	plan = clone_plan_for_tenant(&t, &s, TopTransactionContext);
	clone_tenant_info(tenant, info);
	if (!info->exists)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("tenant \"%s\" has not been migrated", tenant),
				 errhint("Run SELECT clinic_migrate.migrate_tenant('%s') first.", tenant)));
	return plan;
}

void
cm_cutover_tenant(CmWorkerShared *sh, int64 *run_id)
{
	const char *tenant = sh->tenant;
	TenantInfo	info;
	TenantPlan *plan;
	char		schema[NAMEDATALEN];

	begin_txn();
	plan = load_tenant(tenant, &info);
	strlcpy(schema, info.schema_name, NAMEDATALEN);
	strlcpy(sh->schema, schema, NAMEDATALEN);
	if (strcmp(info.state, "cut_over") == 0)
	{
		/* already done: nothing to pause */
		end_txn();
		return;
	}
	if (cm_state_after_cutover(info.state))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("tenant \"%s\" has been finalized", tenant),
				 errdetail("Its rows live in schema \"%s\".", schema)));
	if (strcmp(info.state, "copied") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("tenant \"%s\" is not ready for cutover", tenant),
				 errdetail("Its state is %s; cutover needs a finished copy (state copied).", info.state),
				 errhint("Run SELECT clinic_migrate.migrate_tenant('%s') until it completes.", tenant)));
	ddl_check_pending_indexes(tenant);
	*run_id = cm_run_start(tenant, schema, "cutover", sh->started_by, MyProcPid);
	end_txn();

	/* 1. the reverse capture (refusing writes until the switch), shared sequences */
	pgstat_report_activity(STATE_RUNNING, "clinic_migrate: preparing the cutover");
	begin_txn();
	/*
	 * No replay round of the tenant meanwhile: a round holding one of its
	 * tables and waiting for another that the reverse capture below has
	 * locked, while the sequences' ALTER TABLE waits for the first, timed
	 * out attempt after attempt for lock_retry_time (010, once).  Rounds
	 * take this lock before any table.
	 */
	(void) cm_lock_tenant_kind(tenant, CM_LOCK_APPLY, true, false);
	load_tenant(tenant, &info);
	ddl_adopt_missing(tenant, info.state, info.schema_oid);
	/* what it made is seen by the lookups below (the foreign keys it added) */
	CommandCounterIncrement();
	UpdateActiveSnapshotCommandId();
	plan = load_tenant(tenant, &info);
	capture_install_reverse(plan, schema, tenant);
	clone_switch_sequences(plan, schema);
	/* keys of a table added while the copy loaded (ddl.c leaves them) */
	for (int i = 0; i < plan->ncopied; i++)
		clone_table_foreign_keys(plan, schema, &plan->tables[i]);
	end_txn();

	/*
	 * Views made in the source schema while the copy ran, or that their
	 * maker could not make in the tenant's schema: routed sessions would
	 * read the shared rows through the source schema's.  Made now, as at
	 * the copy (one that cannot be: a WARNING), in a short transaction that
	 * locks the shared tables first.
	 */
	begin_txn();
	plan = load_tenant(tenant, &info);
	clone_finish_views(plan, schema);
	end_txn();

	/* 2-4. catch up, validate, pause and switch */
	switch_tenant(sh, schema, "copied", "cut_over", false, "cutover", true);

	begin_txn();
	cm_registry_sync(tenant, "cut_over", schema);
	cm_run_finish(*run_id, "completed", 0, NULL, NULL);
	end_txn();
	pgstat_report_activity(STATE_IDLE, NULL);
}

void
cm_rollback_cutover(CmWorkerShared *sh, int64 *run_id)
{
	const char *tenant = sh->tenant;
	TenantInfo	info;
	char		schema[NAMEDATALEN];
	char		source[NAMEDATALEN];
	bool		flip;

	begin_txn();
	clone_tenant_info(tenant, &info);
	if (!info.exists)
	{
		sh->did = false;
		end_txn();
		return;
	}
	strlcpy(schema, info.schema_name, NAMEDATALEN);
	strlcpy(source, info.source_schema, NAMEDATALEN);
	strlcpy(sh->schema, schema, NAMEDATALEN);
	flip = strcmp(info.state, "cut_over") == 0;
	if (!flip && strcmp(info.state, "rolling_back") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("tenant \"%s\" is %s, not cut over", tenant, info.state)));
	/*
	 * The rollback ends by dropping the schema, which only its owner may do:
	 * refuse before the pause, not after it flipped the tenant back.
	 */
	if (OidIsValid(info.schema_oid) && get_namespace_name(info.schema_oid) != NULL &&
		!pg_namespace_ownercheck(info.schema_oid, GetUserId()))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to roll back tenant \"%s\"", tenant),
				 errdetail("Rolling back drops schema \"%s\", which only its owner may do; nothing was changed.",
						   schema),
				 errhint("Roll back as the owner of schema \"%s\" or a member of its role.", schema)));
	*run_id = cm_run_start(tenant, schema, "rollback", sh->started_by, MyProcPid);
	end_txn();

	/* the shared rows take every change made in the schema, then the writes again */
	if (flip)
		switch_tenant(sh, schema, "cut_over", "rolling_back", true, "rollback", true);

	/* the schema goes; writes that still reach it are refused until then */
	pgstat_report_activity(STATE_RUNNING, "clinic_migrate: dropping the rolled back schema");
	begin_txn();
	sh->did = cm_rollback_drop(tenant);
	cm_registry_sync(tenant, "rolled_back", source);
	cm_run_finish(*run_id, "completed", 0, NULL, NULL);
	end_txn();
	/* the last tenant to need the shared tables' triggers takes them off */
	(void) cm_capture_cleanup();
	pgstat_report_activity(STATE_IDLE, NULL);
}

/* ---- finalize ---- */

/*
 * The archive receives the tenant's shared rows, written as the finalizing
 * role: a schema or table there that another role made would give that
 * role the rows and run its triggers with our rights.  Trusted: made by the
 * finalizing role or a role it is a member of (not merely by being a
 * superuser), by a superuser, or by the extension's owner.
 */
static void
check_archive_owner(Oid owner, const char *what, const char *name)
{
	Oid			me = GetUserId();

	if (owner == me || superuser_arg(owner) || owner == cm_extension_owner() ||
		is_member_of_role_nosuper(me, owner))
		return;
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("archive %s %s belongs to role %s", what, name,
					quote_identifier(GetUserNameFromId(owner, false))),
			 errdetail("finalize_tenant writes the tenant's shared rows there as %s; "
					   "that role would read them, and its triggers would run as %s.",
					   quote_identifier(GetUserNameFromId(me, false)),
					   quote_identifier(GetUserNameFromId(me, false))),
			 errhint("Drop or rename it, or set clinic_migrate.archive_schema to a schema of your own.")));
}

static void
check_archive_trusted(TenantPlan *plan, const char *archive_schema)
{
	Oid			nsp = get_namespace_oid(archive_schema, true);
	HeapTuple	tup;

	if (!OidIsValid(nsp))
		return;
	tup = SearchSysCache1(NAMESPACEOID, ObjectIdGetDatum(nsp));
	if (!HeapTupleIsValid(tup))
		return;
	check_archive_owner(((Form_pg_namespace) GETSTRUCT(tup))->nspowner, "schema",
						quote_identifier(archive_schema));
	ReleaseSysCache(tup);
	for (int i = 0; i < plan->ncopied; i++)
	{
		Oid			rel = get_relname_relid(plan->tables[i].relname, nsp);

		if (OidIsValid(rel))
			check_archive_owner(cm_rel_owner(rel), "table",
								quote_qualified_identifier(archive_schema, plan->tables[i].relname));
	}
}

/* the archive table of a shared table, created or completed as needed */
static char *
archive_table(PlanTable *pt, const char *archive_schema)
{
	char	   *qarch = quote_qualified_identifier(archive_schema, pt->relname);
	Oid			types[1] = {OIDOID};
	Datum		values[1] = {ObjectIdGetDatum(pt->relid)};
	SPITupleTable *tt;
	uint64		n;

	if (SPI_execute(psprintf("CREATE SCHEMA IF NOT EXISTS %s", quote_identifier(archive_schema)),
					false, 0) < 0 ||
		SPI_execute(psprintf("CREATE TABLE IF NOT EXISTS %s (LIKE %s)", qarch,
							 cm_qualified_relname(pt->relid)), false, 0) < 0)
		elog(ERROR, "clinic_migrate: could not create %s", qarch);
	{
		/* made by someone else since finalize began? */
		HeapTuple	tup = SearchSysCache1(NAMESPACEOID,
										  ObjectIdGetDatum(get_namespace_oid(archive_schema, false)));

		if (HeapTupleIsValid(tup))
		{
			check_archive_owner(((Form_pg_namespace) GETSTRUCT(tup))->nspowner, "schema",
								quote_identifier(archive_schema));
			ReleaseSysCache(tup);
		}
		check_archive_owner(cm_rel_owner(get_relname_relid(pt->relname,
														   get_namespace_oid(archive_schema, false))),
							"table", qarch);
	}
	/* columns the shared table gained since an earlier tenant was archived */
	if (SPI_execute_with_args("SELECT quote_ident(attname), format_type(atttypid, atttypmod) "
							  "FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped "
							  "ORDER BY attnum", 1, types, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "clinic_migrate: column lookup failed");
	tt = SPI_tuptable;
	n = SPI_processed;
	for (uint64 i = 0; i < n; i++)
		if (SPI_execute(psprintf("ALTER TABLE %s ADD COLUMN IF NOT EXISTS %s %s", qarch,
								 SPI_getvalue(tt->vals[i], tt->tupdesc, 1),
								 SPI_getvalue(tt->vals[i], tt->tupdesc, 2)), false, 0) < 0)
			elog(ERROR, "clinic_migrate: could not complete %s", qarch);
	return qarch;
}

/*
 * The archive deletes run as a replica (no foreign-key checks, no user
 * triggers): refuse first if any row that is not the tenant's references
 * one of its shared rows, which those deletes would leave dangling.  A
 * row of a planned table references through its own chain; a row of any
 * other table (excluded, shared, in another schema) is never the tenant's.
 */
static void
check_no_outside_references(TenantPlan *plan, const char *tenant)
{
	for (int i = 0; i < plan->ncopied; i++)
	{
		PlanTable  *pt = &plan->tables[i];
		PlanTable  *root = plan_root(plan, pt);
		Oid			types[1] = {OIDOID};
		Datum		values[1] = {ObjectIdGetDatum(pt->relid)};
		SPITupleTable *tt;
		uint64		n;

		if (SPI_execute_with_args("SELECT conrelid, conkey, confkey, conname FROM pg_constraint "
								  "WHERE confrelid = $1 AND contype = 'f' AND conparentid = 0 ORDER BY conname",
								  1, types, values, NULL, true, 0) != SPI_OK_SELECT)
			elog(ERROR, "clinic_migrate: foreign key lookup failed");
		tt = SPI_tuptable;
		n = SPI_processed;
		for (uint64 f = 0; f < n; f++)
		{
			bool		isnull;
			Oid			child = DatumGetObjectId(SPI_getbinval(tt->vals[f], tt->tupdesc, 1, &isnull));
			PlanTable  *cpt = plan_find(plan, child);
			char	   *conname = pstrdup(SPI_getvalue(tt->vals[f], tt->tupdesc, 4));
			Datum	   *ck,
					   *rk;
			int			nk;
			StringInfoData sql;
			Oid			t = root->tenant_type;
			Datum		v = plan_tenant_datum(root, tenant);

			deconstruct_array(DatumGetArrayTypeP(SPI_getbinval(tt->vals[f], tt->tupdesc, 2, &isnull)),
							  INT2OID, 2, true, TYPALIGN_SHORT, &ck, NULL, &nk);
			deconstruct_array(DatumGetArrayTypeP(SPI_getbinval(tt->vals[f], tt->tupdesc, 3, &isnull)),
							  INT2OID, 2, true, TYPALIGN_SHORT, &rk, NULL, &nk);
			initStringInfo(&sql);
			appendStringInfo(&sql, "SELECT 1 FROM %s c WHERE (", cm_qualified_relname(child));
			for (int k = 0; k < nk; k++)
				appendStringInfo(&sql, "%sc.%s", k ? ", " : "",
								 quote_identifier(get_attname(child, DatumGetInt16(ck[k]), false)));
			appendStringInfoString(&sql, ") IN (SELECT ");
			for (int k = 0; k < nk; k++)
				appendStringInfo(&sql, "%ss.%s", k ? ", " : "",
								 quote_identifier(get_attname(pt->relid, DatumGetInt16(rk[k]), false)));
			plan_append_tenant_rows(&sql, plan, pt, 0, 0);
			appendStringInfoChar(&sql, ')');
			if (cpt && cpt->position > 0)
			{
				appendStringInfoString(&sql, " AND (");
				plan_append_belongs(&sql, plan, cpt, "c", 1);
				appendStringInfoString(&sql, ") IS NOT TRUE");
			}
			appendStringInfoString(&sql, " LIMIT 1");
			if (SPI_execute_with_args(sql.data, 1, &t, &v, NULL, true, 1) != SPI_OK_SELECT)
				elog(ERROR, "clinic_migrate: reference check failed");
			if (SPI_processed > 0)
				ereport(ERROR,
						(errcode(ERRCODE_FOREIGN_KEY_VIOLATION),
						 errmsg("rows of %s that are not tenant \"%s\"'s reference its rows of %s",
								cm_qualified_relname(child), tenant, cm_qualified_relname(pt->relid)),
						 errdetail("Foreign key %s would be left dangling by moving the tenant's shared rows out.",
								   quote_identifier(conname)),
						 errhint("Point those rows elsewhere, then finalize again; the tenant stays cut over meanwhile.")));
		}
	}
}

/*
 * One batch of archive_rows: our own deletes, let through by the capture
 * triggers.  The DELETE runs as the shared table's owner in a
 * security-restricted operation (whatever runs in it, the capture
 * triggers' casts of a tenant id included, is the owner's code: it gets
 * no more than the owner's rights); the deleted rows, whole, then go into
 * the archive as the finalizing role (the archive is its own, or trusted).
 */
static int64
run_archive_batch(PlanTable *pt, const char *delete_sql, const char *insert_sql,
				  int nargs, Oid *types, Datum *values)
{
	bool		save_applying = cm_applying;
	volatile int64 rows = 0;
	int			nest = NewGUCNestLevel();
	Oid			rowtype = get_rel_type_id(pt->relid);
	Oid			arraytype = get_array_type(rowtype);

	cm_applying = true;
	PG_TRY();
	{
		CmRoleSave	save;
		Portal		portal;

		/*
		 * As a replica: every row of the tenant goes, children first, so its
		 * own foreign keys (cycles and self-references included) need no
		 * check, and the application's triggers have nothing to react to.
		 * check_no_outside_references made sure no other row points here.
		 */
		(void) set_config_option("session_replication_role", "replica", PGC_SUSET,
								 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
		if (insert_sql == NULL)
		{
			cm_table_owner_begin(pt->relid, &save);
			if (SPI_execute_with_args(delete_sql, nargs, types, values, NULL, false, 0) != SPI_OK_DELETE)
				elog(ERROR, "clinic_migrate: archive batch failed");
			cm_role_end(&save);
			rows = SPI_processed;
		}
		else
		{
			/*
			 * The DELETE ... RETURNING runs whole at the first fetch (as the
			 * owner), its rows kept in the portal's store (on disk past
			 * work_mem); they go into the archive a hundred at a time.
			 */
			cm_table_owner_begin(pt->relid, &save);
			portal = SPI_cursor_open_with_args(NULL, delete_sql, nargs, types, values, NULL, false, 0);
			SPI_cursor_fetch(portal, true, 100);
			cm_role_end(&save);
			while (SPI_processed > 0)
			{
				uint64		n = SPI_processed;
				Datum	   *deleted = palloc(sizeof(Datum) * n);
				Datum		arr;
				SPITupleTable *tt = SPI_tuptable;

				for (uint64 i = 0; i < n; i++)
				{
					bool		isnull;

					deleted[i] = SPI_getbinval(tt->vals[i], tt->tupdesc, 1, &isnull);
				}
				arr = PointerGetDatum(construct_array(deleted, (int) n, rowtype, -1, false, TYPALIGN_DOUBLE));
				if (SPI_execute_with_args(insert_sql, 1, &arraytype, &arr, NULL, false, 0) != SPI_OK_INSERT)
					elog(ERROR, "clinic_migrate: archive insert failed");
				rows += n;
				pfree(deleted);
				pfree(DatumGetPointer(arr));
				SPI_freetuptable(tt);
				SPI_cursor_fetch(portal, true, 100);
			}
			SPI_cursor_close(portal);
		}
		AtEOXact_GUC(true, nest);
	}
	PG_FINALLY();
	{
		cm_applying = save_applying;
	}
	PG_END_TRY();
	return rows;
}

/*
 * Move (or delete) the tenant's shared rows of one table in batches of
 * archive_batch_size rows of its root table, one transaction each.
 * Returns the rows moved.
 */
static int64
archive_rows(TenantPlan *plan, PlanTable *pt, const char *tenant, bool archive, MemoryContext keep)
{
	PlanTable  *root = plan_root(plan, pt);
	int			nb = root->nbatch;
	char	   *qarch = NULL;
	List	   *keys = NIL;
	List	   *cols = NIL;
	int64		total = 0;
	Oid			typinput[INDEX_MAX_KEYS];
	Oid			typioparam[INDEX_MAX_KEYS];
	Oid			btypes[INDEX_MAX_KEYS];
	char	   *rootcols;
	char	   *lo[INDEX_MAX_KEYS];
	bool		have_lo = false;
	int			nargs;

	/* what the batches need, read from the catalogs once, kept across transactions */
	begin_txn();
	if (archive)
		qarch = MemoryContextStrdup(keep, archive_table(pt, cm_archive_schema));
	{
		/* no SPI call past here: SPI switches back to its own context */
		MemoryContext old = MemoryContextSwitchTo(keep);
		Relation	rel = RelationIdGetRelation(pt->relid);
		TupleDesc	td = RelationGetDescr(rel);
		StringInfoData b;
		ListCell   *lc;

		foreach(lc, plan_key_columns(pt))
			keys = lappend(keys, pstrdup((char *) lfirst(lc)));
		for (int i = 0; i < td->natts; i++)
			if (!TupleDescAttr(td, i)->attisdropped)
				cols = lappend(cols, pstrdup(NameStr(TupleDescAttr(td, i)->attname)));
		RelationClose(rel);
		initStringInfo(&b);
		for (int i = 0; i < nb; i++)
		{
			btypes[i] = get_atttype(root->relid, root->batch_att[i]);
			getTypeInputInfo(btypes[i], &typinput[i], &typioparam[i]);
			appendStringInfo(&b, "%ss.%s", i ? ", " : "",
							 quote_identifier(get_attname(root->relid, root->batch_att[i], false)));
		}
		rootcols = b.data;
		MemoryContextSwitchTo(old);
	}
	end_txn();

	for (;;)
	{
		StringInfoData sql;
		Oid			types[1 + 2 * INDEX_MAX_KEYS];
		Datum		values[1 + 2 * INDEX_MAX_KEYS];
		bool		have_hi = false;
		char	   *hi[INDEX_MAX_KEYS];

		check_stop(tenant);
		begin_txn();
		types[0] = root->tenant_type;
		values[0] = plan_tenant_datum(root, tenant);
		{
			CmRoleSave	save;

			/* a key type's input function is the owner's code: with the owner's rights */
			cm_table_owner_begin(root->relid, &save);
			for (int i = 0; i < nb; i++)
			{
				types[1 + i] = types[1 + nb + i] = btypes[i];
				if (have_lo)
					values[1 + i] = OidInputFunctionCall(typinput[i], lo[i], typioparam[i], -1);
			}
			cm_role_end(&save);
		}

		/* the batch's upper bound on the root's keys */
		initStringInfo(&sql);
		if (nb > 0)
		{
			appendStringInfo(&sql, "SELECT %s FROM %s s WHERE s.%s = $1", rootcols,
							 cm_qualified_relname(root->relid),
							 quote_identifier(get_attname(root->relid, root->tenant_att, false)));
			if (have_lo)
			{
				appendStringInfo(&sql, " AND (%s) > (", rootcols);
				for (int i = 0; i < nb; i++)
					appendStringInfo(&sql, "%s$%d", i ? ", " : "", 2 + i);
				appendStringInfoChar(&sql, ')');
			}
			appendStringInfo(&sql, " ORDER BY %s OFFSET %d LIMIT 1", rootcols,
							 cm_archive_batch_size - 1);
			{
				CmRoleSave	save;
				int			ret;

				/* as the owner, like the DELETE: the key's operators are its code */
				cm_table_owner_begin(root->relid, &save);
				ret = SPI_execute_with_args(sql.data, have_lo ? 1 + nb : 1, types, values, NULL, true, 0);
				cm_role_end(&save);
				if (ret != SPI_OK_SELECT)
					elog(ERROR, "clinic_migrate: archive bound query failed");
			}
			if (SPI_processed > 0)
			{
				CmRoleSave	save;

				have_hi = true;
				cm_table_owner_begin(root->relid, &save);	/* output functions: as above */
				cm_bound_from_spi(nb, btypes, &values[1 + nb], hi, keep);
				cm_role_end(&save);
			}
		}

		/* the rows of the batch: deleted (as whole rows), then into the archive */
		resetStringInfo(&sql);
		appendStringInfo(&sql, "DELETE FROM %s t WHERE (", cm_qualified_relname(pt->relid));
		cm_append_quoted_list(&sql, keys, "t");
		appendStringInfoString(&sql, ") IN (SELECT ");
		cm_append_quoted_list(&sql, keys, "s");
		nargs = plan_append_batch_rows(&sql, plan, pt, have_lo, have_hi, nb, types, values);
		appendStringInfoChar(&sql, ')');
		if (archive)
			appendStringInfoString(&sql, " RETURNING t");
		{
			StringInfoData ins;
			ListCell   *lc;

			initStringInfo(&ins);
			if (archive)
			{
				appendStringInfo(&ins, "INSERT INTO %s (", qarch);
				cm_append_quoted_list(&ins, cols, NULL);
				appendStringInfoString(&ins, ") SELECT ");
				foreach(lc, cols)
					appendStringInfo(&ins, "%sr.%s", lc == list_head(cols) ? "" : ", ",
									 quote_identifier((char *) lfirst(lc)));
				/* a set of rows of the table's type: r has its columns */
				appendStringInfoString(&ins, " FROM pg_catalog.unnest($1) AS r");
			}
			total += run_archive_batch(pt, sql.data, archive ? ins.data : NULL, nargs, types, values);
		}
		cm_pause_point("finalize_batch");
		end_txn();
		if (!have_hi)
			break;
		for (int i = 0; i < nb; i++)
			lo[i] = hi[i];
		have_lo = true;
	}
	return total;
}

void
cm_finalize_tenant(CmWorkerShared *sh, int64 *run_id)
{
	const char *tenant = sh->tenant;
	TenantInfo	info;
	TenantPlan *plan;
	char		schema[NAMEDATALEN];
	int64		rows = 0;
	MemoryContext cxt = AllocSetContextCreate(TopMemoryContext, "clinic_migrate finalize",
											  ALLOCSET_DEFAULT_SIZES);

	begin_txn();
	plan = load_tenant(tenant, &info);
	strlcpy(schema, info.schema_name, NAMEDATALEN);
	strlcpy(sh->schema, schema, NAMEDATALEN);
	if (strcmp(info.state, "finalized") == 0)
	{
		sh->did = false;
		end_txn();
		return;
	}
	if (strcmp(info.state, "cut_over") != 0 && strcmp(info.state, "finalizing") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("tenant \"%s\" is not cut over", tenant),
				 errdetail("Its state is %s; finalize ends the rollback window after a cutover.", info.state),
				 errhint("Run SELECT clinic_migrate.cutover('%s') first.", tenant)));
	/* finalize deletes shared rows: the acting role must be allowed to */
	for (int i = 0; i < plan->ncopied; i++)
		if (pg_class_aclcheck(plan->tables[i].relid, GetUserId(), ACL_DELETE) != ACLCHECK_OK)
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("permission denied for table %s", cm_qualified_relname(plan->tables[i].relid)),
					 errdetail("Finalizing a tenant deletes its shared rows, which needs DELETE."),
					 errhint("GRANT DELETE ON %s TO %s;", cm_qualified_relname(plan->tables[i].relid),
							 quote_identifier(GetUserNameFromId(GetUserId(), false)))));
	/* nothing changes if a row outside the tenant points at what would go */
	check_no_outside_references(plan, tenant);
	if (sh->archive)
		check_archive_trusted(plan, cm_archive_schema);
	*run_id = cm_run_start(tenant, schema, "finalize", sh->started_by, MyProcPid);
	end_txn();

	/* the shared rows take the last changes; from then on nothing is logged */
	if (strcmp(info.state, "cut_over") == 0)
		switch_tenant(sh, schema, "cut_over", "finalizing", true, "finalize", false);

	/* the tenant's tables get sequences of their own, and lose the reverse capture */
	pgstat_report_activity(STATE_RUNNING, "clinic_migrate: finalizing: sequences and triggers");
	/* the highest keys are read after each table's lock: not in an older snapshot */
	cm_begin_txn_read_committed();
	plan = load_tenant(tenant, &info);
	{
		MemoryContext old = MemoryContextSwitchTo(cxt);
		CmSettings	s;
		char	   *t = (char *) tenant;

		cm_current_settings(&s);
		plan = clone_plan_for_tenant(&t, &s, cxt);
		MemoryContextSwitchTo(old);
	}

	/*
	 * Both steps below lock tables of the tenant's schema exclusively (the
	 * sequences' tables, then the triggers'): all of them at once, first.
	 * Locked in two requests, the first set was held while the second
	 * waited, and a writer of the tenant holding a table of the second and
	 * waiting for one of the first was never found out (each attempt gives
	 * up before deadlock_timeout): finalize waited lock_retry_time and
	 * failed, 003_cutover_stress under load.
	 */
	{
		List	   *all = NIL;

		for (int i = 0; i < plan->ncopied; i++)
		{
			Oid			target = clone_target_relid(schema, plan->tables[i].relname);

			if (OidIsValid(target))
			{
				all = lappend_oid(all, target);
				/* defaults and triggers of a partitioned table reach its partitions */
				all = list_concat(all, cm_partitions_of(target));
			}
		}
		cm_lock_relations(all, AccessExclusiveLock, true);
	}
	clone_restore_sequences(plan, schema);
	capture_drop_reverse(plan, schema);
	end_txn();

	/* again: one may have appeared before the pause */
	begin_txn();
	check_no_outside_references(plan, tenant);
	end_txn();

	/* the shared rows, children first, into the archive (or gone) */
	for (int i = plan->ncopied - 1; i >= 0; i--)
	{
		char		activity[2 * NAMEDATALEN + 64];

		snprintf(activity, sizeof(activity), "clinic_migrate: finalizing: %s the rows of %s",
				 sh->archive ? "archiving" : "deleting", plan->tables[i].relname);
		pgstat_report_activity(STATE_RUNNING, activity);
		rows += archive_rows(plan, &plan->tables[i], tenant, sh->archive, cxt);
		SpinLockAcquire(&sh->mutex);
		sh->rows_done = rows;
		SpinLockRelease(&sh->mutex);
	}

	begin_txn();
	{
		Oid			types[2] = {TEXTOID, INT8OID};
		Datum		values[2];

		apply_forget(tenant);
		cm_tenant_set_state(tenant, "finalized");
		values[0] = CStringGetTextDatum(tenant);
		values[1] = Int64GetDatum(rows);
		cm_state_exec("UPDATE clinic_migrate.tenants SET rows_archived = coalesce(rows_archived, 0) + $2 "
					  "WHERE tenant_id = $1", 2, types, values, NULL, 0);
		cm_registry_sync(tenant, "finalized", schema);
		cm_run_finish(*run_id, "completed", rows, NULL, NULL);
	}
	end_txn();
	sh->did = true;
	/* the last tenant to need the shared tables' triggers takes them off */
	(void) cm_capture_cleanup();
	pgstat_report_activity(STATE_IDLE, NULL);
}

/* ---- SQL ---- */
