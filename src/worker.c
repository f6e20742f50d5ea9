/*-------------------------------------------------------------------------
 * worker.c
 *	  The action worker, and migrate_tenant.
 *
 * Copying a tenant, cutting it over, rolling it back after cutover and
 * finalizing it each commit many times (a batch, a pause, an archive
 * batch): a SQL function cannot commit, so the calling session starts a
 * dynamic background worker that runs the action and waits for it.  No
 * shared_preload_libraries is needed for that.  Caller and worker share a
 * small DSM segment with the tenant, the caller's settings, progress
 * counters, the results and, if the action fails, the error.  Cancelling
 * the caller terminates the worker at its next boundary; what it committed
 * stays, and the next call resumes.
 *
 * One action per tenant runs at a time: the worker holds the tenant's
 * migration lock for as long as it runs.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/dsm.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "clinic_migrate.h"
#include "capture.h"
#include "clone.h"
#include "copy.h"
#include "cutover.h"
#include "plan.h"
#include "queue.h"
#include "state.h"
#include "sync.h"
#include "validate.h"
#include "worker.h"

PGDLLEXPORT void cm_action_worker_main(Datum main_arg);

volatile sig_atomic_t cm_got_sigterm = false;
CmWorkerShared *cm_worker_shared = NULL;

const char *
cm_action_name(CmAction action)
{
	switch (action)
	{
		case CMA_MIGRATE:
			return "migrate";
		case CMA_VALIDATE:
			return "validate";
		case CMA_CUTOVER:
			return "cutover";
		case CMA_ROLLBACK:
			return "rollback";
		case CMA_FINALIZE:
			return "finalize";
	}
	return "?";
}

/*
 * SIGTERM (shutdown, a cancelled caller, pg_terminate_backend): finish the
 * step in hand, record the run as interrupted, exit.  A step is short (a
 * batch, a pause), so this is prompt, and the run's record tells the truth.
 */
static void
cm_sigterm(SIGNAL_ARGS)
{
	int			save_errno = errno;

	cm_got_sigterm = true;
	SetLatch(MyLatch);
	errno = save_errno;
}

void
cm_worker_init(void)
{
	/* nothing to preload: the action and sync workers are dynamic */
}

void
cm_require_no_transaction_block(const char *what)
{
	/*
	 * The worker commits in transactions of its own: it cannot see what an
	 * open transaction block wrote, and would wait for its locks while we
	 * wait for it.
	 */
	if (IsTransactionBlock())
		ereport(ERROR,
				(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
				 errmsg("%s cannot run inside a transaction block", what),
				 errdetail("It runs in a background worker that commits as it goes; it cannot see this transaction's changes and could wait for its locks."),
				 errhint("Run it on its own, outside BEGIN ... COMMIT.")));
}

void
cm_worker_request_init(CmWorkerShared *req, CmAction action, const char *tenant)
{
	cm_refuse_in_restricted_operation();
	memset(req, 0, sizeof(*req));
	req->action = action;
	req->dboid = MyDatabaseId;
	req->caller_pid = MyProcPid;
	req->sessionoid = GetSessionUserId();
	req->useroid = GetUserId();
	cm_current_settings(&req->settings);
	strlcpy(req->tenant, tenant, sizeof(req->tenant));
	strlcpy(req->started_by, GetUserNameFromId(GetUserId(), false), NAMEDATALEN);
}

/* record the error for the waiting session (ErrorData in TopMemoryContext) */
static void
publish_error(CmWorkerShared *sh, ErrorData *edata)
{
	SpinLockAcquire(&sh->mutex);
	sh->state = CMW_FAILED;
	sh->sqlerrcode = edata->sqlerrcode;
	strlcpy(sh->errmsg, edata->message ? edata->message : "unknown error", sizeof(sh->errmsg));
	strlcpy(sh->errdetail, edata->detail ? edata->detail : "", sizeof(sh->errdetail));
	strlcpy(sh->errhint, edata->hint ? edata->hint : "", sizeof(sh->errhint));
	SpinLockRelease(&sh->mutex);
}

/* run the action; *run_id is set once the action has recorded its run */
static void
run_action(CmWorkerShared *sh, int64 *run_id)
{
	switch (sh->action)
	{
		case CMA_MIGRATE:
			cm_copy_tenant(sh, run_id);
			break;
		case CMA_VALIDATE:
			cm_validate_tenant(sh, run_id);
			break;
		case CMA_CUTOVER:
			cm_cutover_tenant(sh, run_id);
			break;
		case CMA_ROLLBACK:
			cm_rollback_cutover(sh, run_id);
			break;
		case CMA_FINALIZE:
			cm_finalize_tenant(sh, run_id);
			break;
		default:
			elog(ERROR, "clinic_migrate: unknown action %d", (int) sh->action);
	}
}

void
cm_action_worker_main(Datum main_arg)
{
	dsm_segment *seg;
	CmWorkerShared *sh;
	int64		run_id = 0;
	PGPROC	   *caller;

	pqsignal(SIGTERM, cm_sigterm);
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	BackgroundWorkerUnblockSignals();

	seg = dsm_attach(DatumGetUInt32(main_arg));
	if (seg == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("clinic_migrate worker: the session that started it is gone")));
	sh = dsm_segment_address(seg);
	cm_worker_shared = sh;

	/*
	 * Connect as the caller's session user, which could log in, then act as
	 * its current role, as SET ROLE does: a NOLOGIN role the caller switched
	 * to could not start a worker of its own.
	 */
	BackgroundWorkerInitializeConnectionByOid(sh->dboid, sh->sessionoid, 0);
	if (sh->useroid != sh->sessionoid)
	{
		StartTransactionCommand();
		SetCurrentRoleId(sh->useroid, superuser_arg(sh->useroid));
		CommitTransactionCommand();
	}

	/*
	 * Session settings: the caller's clinic_migrate settings; text
	 * renderings of checkpoint keys that do not depend on the role's or the
	 * database's settings; one snapshot per transaction; batch commits that
	 * need not wait for the WAL flush (see copy.c; the commits that matter
	 * turn it back on).
	 */
	/*
	 * A session's worker runs with the session's settings; a queue job's
	 * with the server's, which it re-reads on SIGHUP between batches.
	 */
	if (sh->job_id == 0)
		cm_apply_settings(&sh->settings);
	SetConfigOption("application_name", "clinic_migrate", PGC_USERSET, PGC_S_SESSION);
	/* every name the worker's SQL uses is qualified; nothing may resolve elsewhere */
	SetConfigOption("search_path", CM_SAFE_SEARCH_PATH, PGC_USERSET, PGC_S_SESSION);
	SetConfigOption("DateStyle", "ISO, YMD", PGC_USERSET, PGC_S_SESSION);
	SetConfigOption("IntervalStyle", "postgres", PGC_USERSET, PGC_S_SESSION);
	SetConfigOption("TimeZone", "UTC", PGC_USERSET, PGC_S_SESSION);
	SetConfigOption("extra_float_digits", "3", PGC_USERSET, PGC_S_SESSION);
	SetConfigOption("bytea_output", "hex", PGC_USERSET, PGC_S_SESSION);
	SetConfigOption("default_transaction_isolation", "repeatable read", PGC_USERSET, PGC_S_SESSION);
	SetConfigOption("synchronous_commit", sh->action == CMA_MIGRATE ? "off" : "on",
					PGC_USERSET, PGC_S_SESSION);
	SetConfigOption("statement_timeout", "0", PGC_USERSET, PGC_S_SESSION);
	SetConfigOption("lock_timeout", "0", PGC_USERSET, PGC_S_SESSION);
	SetConfigOption("idle_in_transaction_session_timeout", "0", PGC_USERSET, PGC_S_SESSION);
	pgstat_report_appname("clinic_migrate");

	/* one action on a tenant at a time, held until this worker exits */
	if (!cm_lock_tenant(sh->tenant, false, true))
	{
		SpinLockAcquire(&sh->mutex);
		sh->state = CMW_FAILED;
		sh->sqlerrcode = ERRCODE_LOCK_NOT_AVAILABLE;
		snprintf(sh->errmsg, sizeof(sh->errmsg),
				 "tenant \"%s\" is already being migrated, cut over, rolled back or finalized by another session",
				 sh->tenant);
		strlcpy(sh->errhint, "Wait for it to finish; clinic_migrate.status shows its progress.",
				sizeof(sh->errhint));
		SpinLockRelease(&sh->mutex);
		goto done;
	}

	PG_TRY();
	{
		run_action(sh, &run_id);
		cm_job_finish(sh, NULL);
		SpinLockAcquire(&sh->mutex);
		sh->state = CMW_DONE;
		SpinLockRelease(&sh->mutex);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(TopMemoryContext);
		EmitErrorReport();
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		publish_error(sh, edata);

		/* the failure goes into the records, in a transaction of its own */
		if (run_id > 0)
		{
			char		sqlstate[6];
			bool		stopped = cm_got_sigterm && edata->sqlerrcode == ERRCODE_ADMIN_SHUTDOWN;

			memcpy(sqlstate, unpack_sql_state(edata->sqlerrcode), 6);
			SetCurrentStatementStartTimestamp();
			StartTransactionCommand();
			SPI_connect();
			PushActiveSnapshot(GetTransactionSnapshot());
			cm_run_finish(run_id, stopped ? "interrupted" : "failed", sh->rows_done,
						  edata->message, sqlstate);
			/* a stopped copy stays 'copying': the next run resumes it */
			if (!stopped && sh->action == CMA_MIGRATE)
				cm_tenant_record_error(sh->tenant, edata->message);
			else if (!stopped)
				cm_tenant_record_last_error(sh->tenant, edata->message);
			SPI_finish();
			PopActiveSnapshot();
			CommitTransactionCommand();
		}
		cm_job_finish(sh, edata);
	}
	PG_END_TRY();
	cm_unlock_tenant(sh->tenant, true);
	pgstat_report_activity(STATE_IDLE, NULL);

	/* a copied or cut-over tenant is kept in step by the database's sync worker */
	if (sh->state == CMW_DONE && (sh->action == CMA_MIGRATE || sh->action == CMA_CUTOVER))
		(void) cm_start_sync_worker();

done:
	caller = BackendPidGetProc(sh->caller_pid);
	if (caller)
		SetLatch(&caller->procLatch);
}

/* one line of progress for the waiting session */
static void
progress_notice(CmWorkerShared *sh, const char *tenant)
{
	CmWorkerShared snap;

	SpinLockAcquire(&sh->mutex);
	memcpy(&snap, sh, sizeof(snap));
	SpinLockRelease(&sh->mutex);
	if (snap.state != CMW_RUNNING || snap.action != CMA_MIGRATE)
		return;
	ereport(NOTICE,
			(errmsg("tenant \"%s\": " INT64_FORMAT " of " INT64_FORMAT " rows copied (%d of %d tables done), now %s.%s",
					tenant, snap.rows_before + snap.rows_done, snap.rows_total,
					snap.tables_done, snap.tables_total, snap.schema, snap.current_table)));
}

/*
 * The worker's state; and where the worker waits for a transaction, or is
 * held at a pause point (tests), wait for the same thing, so that the
 * session shows what holds it up (pg_blocking_pids, isolationtester).
 */
static pg_noinline CmWorkerState
follow_worker(CmWorkerShared *sh)
{
	CmWorkerState st;
	char		point[64];
	VirtualTransactionId vxid;

	SpinLockAcquire(&sh->mutex);
	st = sh->state;
	strlcpy(point, sh->pause_point, sizeof(point));
	vxid.backendId = sh->wait_backend;
	vxid.localTransactionId = sh->wait_lxid;
	SpinLockRelease(&sh->mutex);
	if (st == CMW_DONE || st == CMW_FAILED)
		return st;
	if (point[0] != '\0')
		cm_pause_point_follow(point);
	if (VirtualTransactionIdIsValid(vxid))
		(void) VirtualXactLock(vxid, true);
	return st;
}

void
cm_run_in_worker(CmWorkerShared *req, CmWorkerShared *result)
{
	dsm_segment *seg;
	CmWorkerShared *sh;
	BackgroundWorker worker;
	BackgroundWorkerHandle *handle;
	pid_t		pid;
	TimestampTz last_notice;
	const char *tenant = req->tenant;

	seg = dsm_create(sizeof(CmWorkerShared), 0);
	sh = dsm_segment_address(seg);
	memcpy(sh, req, sizeof(*sh));
	SpinLockInit(&sh->mutex);
	sh->state = CMW_STARTING;
	sh->wait_backend = InvalidBackendId;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	strlcpy(worker.bgw_library_name, "clinic_migrate", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "cm_action_worker_main", BGW_MAXLEN);
	/* clip the id on a character boundary: names show up in logs */
	snprintf(worker.bgw_name, BGW_MAXLEN, "clinic_migrate %s tenant %.*s",
			 cm_action_name(req->action), pg_mbcliplen(tenant, strlen(tenant), 50), tenant);
	strlcpy(worker.bgw_type, "clinic_migrate", BGW_MAXLEN);
	worker.bgw_main_arg = UInt32GetDatum(dsm_segment_handle(seg));
	worker.bgw_notify_pid = MyProcPid;

	if (!RegisterDynamicBackgroundWorker(&worker, &handle))
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("could not start a clinic_migrate worker"),
				 errdetail("All background worker slots are in use."),
				 errhint("Raise max_worker_processes, or wait for other workers to finish.")));
	/*
	 * A worker that failed at once (a refused rollback, say) may be gone
	 * before we see it start; its answer is in the segment all the same.
	 */
	if (WaitForBackgroundWorkerStartup(handle, &pid) != BGWH_STARTED)
	{
		CmWorkerState st;

		SpinLockAcquire(&sh->mutex);
		st = sh->state;
		SpinLockRelease(&sh->mutex);
		if (st != CMW_DONE && st != CMW_FAILED)
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_RESOURCES),
					 errmsg("could not start a clinic_migrate worker"),
					 errhint("See the server log for why the postmaster could not start it.")));
	}

	/*
	 * Wait.  The worker sets our latch when it is done, the postmaster when
	 * it exits; a timeout paces the progress notices.  If we are cancelled,
	 * the worker stops too.
	 */
	last_notice = GetCurrentTimestamp();
	PG_TRY();
	{
		for (;;)
		{
			CmWorkerState st;

			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 1000L, PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
			CHECK_FOR_INTERRUPTS();
			st = follow_worker(sh);
			if (st == CMW_DONE || st == CMW_FAILED)
				break;
			if (GetBackgroundWorkerPid(handle, &pid) == BGWH_STOPPED)
				break;
			if (cm_progress_interval > 0 &&
				TimestampDifferenceExceeds(last_notice, GetCurrentTimestamp(),
										   cm_progress_interval * 1000))
			{
				progress_notice(sh, tenant);
				last_notice = GetCurrentTimestamp();
			}
		}
	}
	PG_CATCH();
	{
		/*
		 * Stop the worker and see it gone (it finishes the step in hand), so
		 * that a retry right after a cancel finds the tenant free.
		 */
		HOLD_INTERRUPTS();
		TerminateBackgroundWorker(handle);
		for (int i = 0; i < 3000 && GetBackgroundWorkerPid(handle, &pid) != BGWH_STOPPED; i++)
			pg_usleep(10000L);
		RESUME_INTERRUPTS();
		PG_RE_THROW();
	}
	PG_END_TRY();

	SpinLockAcquire(&sh->mutex);
	memcpy(result, sh, sizeof(*result));
	SpinLockRelease(&sh->mutex);
	dsm_detach(seg);

	if (result->state == CMW_FAILED)
		ereport(ERROR,
				(errcode(result->sqlerrcode),
				 errmsg("%s", result->errmsg),
				 result->errdetail[0] ? errdetail("%s", result->errdetail) : 0,
				 result->errhint[0] ? errhint("%s", result->errhint) : 0));
	if (result->state != CMW_DONE)
		ereport(ERROR,
				(errcode(ERRCODE_OPERATOR_INTERVENTION),
				 errmsg("the clinic_migrate worker running %s of tenant \"%s\" stopped before it finished",
						cm_action_name(req->action), tenant),
				 errdetail("Everything it committed is kept."),
				 errhint("Run it again; it resumes where it stopped.")));
}

/*
 * Check what can be checked in the caller, read-only, so that bad input
 * fails here with nothing started: the plan, the tenant, the privileges.
 * In a subtransaction that is rolled back afterwards: the checks only read,
 * and rolling back releases the locks they took, which the worker may need
 * (we wait for it while holding our locks).  Returns the canonical id.
 */
static char *
check_migration(char *tenant)
{
	CmSettings	s;
	TenantPlan *plan;
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		TenantInfo	info;

		cm_current_settings(&s);
		SPI_connect();
		plan = clone_plan_for_tenant(&tenant, &s, CurrentMemoryContext);
		tenant = MemoryContextStrdup(cxt, tenant);
		clone_tenant_info(tenant, &info);
		if (info.exists && cm_state_after_cutover(info.state))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("tenant \"%s\" is already cut over to schema \"%s\"", tenant, info.schema_name),
					 errdetail("Its state is %s.", info.state),
					 errhint("Nothing is left to copy; clinic_migrate.status shows where it is.")));
		plan_check_copyable(plan);
		clone_check_privileges(plan, tenant);
		clone_check_tenant_exists(plan, tenant);
		for (int i = 0; i < plan->ntables; i++)
		{
			PlanTable  *pt = &plan->tables[i];
			char	   *qname = quote_qualified_identifier(pt->nspname, pt->relname);

			if (pt->position > 0 && pt->note)
				ereport(WARNING, (errmsg("table %s: %s", qname, pt->note)));
			if (pt->kind == PLAN_UNSUPPORTED &&
				(pt->tenant_att != InvalidAttrNumber || pt->nhops > 0))
				ereport(WARNING,
						(errmsg("table %s holds tenant rows but is not migrated: %s", qname,
								pt->note ? pt->note : "unsupported"),
						 errhint("Its rows of tenant \"%s\" stay in the shared table.", tenant)));
		}
		SPI_finish();
	}
	PG_CATCH();
	{
		/* an error must not leave the subtransaction open */
		MemoryContextSwitchTo(cxt);
		RollbackAndReleaseCurrentSubTransaction();
		CurrentResourceOwner = owner;
		PG_RE_THROW();
	}
	PG_END_TRY();
	RollbackAndReleaseCurrentSubTransaction();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
	return tenant;
}

/*
 * clinic_migrate.migrate_tenant(tenant): copy the tenant into its schema
 * in a background worker and wait for it.
 */
PG_FUNCTION_INFO_V1(cm_migrate_tenant);
Datum
cm_migrate_tenant(PG_FUNCTION_ARGS)
{
	char	   *tenant = cm_tenant_arg(fcinfo, 0);
	TupleDesc	tupdesc;
	CmWorkerShared *req = palloc0(sizeof(CmWorkerShared));
	CmWorkerShared *result = palloc0(sizeof(CmWorkerShared));
	Datum		values[4];
	bool		nulls[4] = {0};

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	tupdesc = BlessTupleDesc(tupdesc);
	cm_require_no_transaction_block("migrate_tenant");
	tenant = check_migration(tenant);
	if (!cm_tenant_lock_free(tenant))
		ereport(ERROR,
				(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
				 errmsg("tenant \"%s\" is already being migrated or rolled back by another session", tenant),
				 errhint("Wait for it to finish; clinic_migrate.status shows its progress.")));

	cm_worker_request_init(req, CMA_MIGRATE, tenant);
	cm_run_action(req, result);

	values[0] = DirectFunctionCall1(namein, CStringGetDatum(result->schema));
	values[1] = Int32GetDatum(result->tables_total);
	values[2] = Int64GetDatum(result->rows_done);
	values[3] = BoolGetDatum(result->resumed);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/* clinic_migrate.migration_active(tenant): is a session working on it? */
PG_FUNCTION_INFO_V1(cm_migration_active);
Datum
cm_migration_active(PG_FUNCTION_ARGS)
{
	char	   *tenant = text_to_cstring(PG_GETARG_TEXT_PP(0));

	PG_RETURN_BOOL(!cm_tenant_lock_free(tenant));
}

/* clinic_migrate.schema_name_for(tenant): the name the tenant's schema gets */
PG_FUNCTION_INFO_V1(cm_schema_name_for_sql);
Datum
cm_schema_name_for_sql(PG_FUNCTION_ARGS)
{
	char	   *tenant = cm_tenant_arg(fcinfo, 0);
	Name		result = palloc0(NAMEDATALEN);
	TenantInfo	info;

	SPI_connect();
	{
		CmSettings	s;

		cm_current_settings(&s);
		(void) clone_plan_for_tenant(&tenant, &s, CurrentMemoryContext);
	}
	clone_tenant_info(tenant, &info);	/* copies into our struct */
	SPI_finish();
	namestrcpy(result, info.exists ? info.schema_name
			   : cm_schema_name_for(tenant, cm_schema_template));
	PG_RETURN_NAME(result);
}

bool
cm_start_sync_worker(void)
{
	BackgroundWorker worker;
	BackgroundWorkerHandle *handle;

	if (cm_sync_worker_running())
		return true;
	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	strlcpy(worker.bgw_library_name, "clinic_migrate", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "cm_sync_worker_main", BGW_MAXLEN);
	snprintf(worker.bgw_name, BGW_MAXLEN, "clinic_migrate sync worker for database %u",
			 MyDatabaseId);
	strlcpy(worker.bgw_type, "clinic_migrate sync", BGW_MAXLEN);
	worker.bgw_main_arg = ObjectIdGetDatum(MyDatabaseId);
	worker.bgw_notify_pid = 0;
	/* a second one that loses the race for the sync lock exits at once */
	return RegisterDynamicBackgroundWorker(&worker, &handle);
}

/* clinic_migrate.start_sync(): start the database's sync worker if none runs */
PG_FUNCTION_INFO_V1(cm_start_sync);
Datum
cm_start_sync(PG_FUNCTION_ARGS)
{
	if (!cm_start_sync_worker())
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("could not start the clinic_migrate sync worker"),
				 errdetail("All background worker slots are in use."),
				 errhint("Raise max_worker_processes, or wait for other workers to finish.")));
	PG_RETURN_BOOL(true);
}
