/*-------------------------------------------------------------------------
 * worker.c
 *	  The action worker, which runs one action (floor 5) for the session or
 *	  the job that started it, through a dispatch on the action; and the
 *	  sync worker, which runs replay rounds for every tenant that needs them.
 *	  Floor 6 (where an action runs).  May call: floors 1 to 5, jobs.
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
#include "commands/extension.h"

#include "settings.h"
#include "util.h"
#include "locks.h"
#include "runstate.h"
#include "capture.h"
#include "decode.h"
#include "clone.h"
#include "ddl.h"
#include "copy.h"
#include "cutover.h"
#include "plan.h"
#include "jobs.h"
#include "state.h"
#include "sync.h"
#include "validate.h"
#include "worker.h"

PGDLLEXPORT void cm_action_worker_main(Datum main_arg);
PGDLLEXPORT void cm_sync_worker_main(Datum main_arg);


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

/*
 * The actions a worker runs (floor 5), one row each: the one place where
 * the machinery names them.  Each commits as it goes and sets *run_id once
 * its run is recorded.
 */
static const struct
{
	CmAction	action;
	void		(*run) (CmWorkerShared *sh, int64 *run_id);
}			actions[] =
{
	{CMA_MIGRATE, cm_copy_tenant},
	{CMA_VALIDATE, cm_validate_tenant},
	{CMA_CUTOVER, cm_cutover_tenant},
	{CMA_ROLLBACK, cm_rollback_cutover},
	{CMA_FINALIZE, cm_finalize_tenant},
	{CMA_SCHEMA_CHANGE, cm_schema_change_tenant},
	{CMA_INDEX, cm_index_tenant},
};

/* run the action; *run_id is set once the action has recorded its run */
static void
run_action(CmWorkerShared *sh, int64 *run_id)
{
	for (int i = 0; i < lengthof(actions); i++)
		if (actions[i].action == sh->action)
		{
			actions[i].run(sh, run_id);
			return;
		}
	elog(ERROR, "clinic_migrate: unknown action %d", (int) sh->action);
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
	cm_bgworker_session("clinic_migrate");
	SetConfigOption("DateStyle", "ISO, YMD", PGC_USERSET, PGC_S_SESSION);
	SetConfigOption("IntervalStyle", "postgres", PGC_USERSET, PGC_S_SESSION);
	SetConfigOption("TimeZone", "UTC", PGC_USERSET, PGC_S_SESSION);
	SetConfigOption("extra_float_digits", "3", PGC_USERSET, PGC_S_SESSION);
	SetConfigOption("bytea_output", "hex", PGC_USERSET, PGC_S_SESSION);
	SetConfigOption("default_transaction_isolation", "repeatable read", PGC_USERSET, PGC_S_SESSION);
	SetConfigOption("synchronous_commit", sh->action == CMA_MIGRATE ? "off" : "on",
					PGC_USERSET, PGC_S_SESSION);

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
	/*
	 * A copy that failed before its tenant was captured from the WAL may
	 * have made the slot: nobody else might drop it (no sync worker runs).
	 */
	if (sh->state != CMW_DONE && sh->action == CMA_MIGRATE && !cm_wal_cleanup())
	{
		/* kept for a tenant that failed with its capture on: someone must read it */
		(void) cm_start_sync_worker();
	}
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
	/*
	 * Wait, as the worker does, for a transaction older than the capture, so
	 * that pg_blocking_pids() of the caller names it; a second at a time,
	 * since the worker gives up on it after lock_retry_time and we must then
	 * look at the worker again.
	 */
	if (VirtualTransactionIdIsValid(vxid))
		(void) cm_wait_for_vxact(vxid, 1000);
	return st;
}

void
cm_action_worker_define(BackgroundWorker *worker, dsm_segment *seg, const char *name)
{
	memset(worker, 0, sizeof(*worker));
	worker->bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker->bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker->bgw_restart_time = BGW_NEVER_RESTART;
	strlcpy(worker->bgw_library_name, "clinic_migrate", BGW_MAXLEN);
	strlcpy(worker->bgw_function_name, "cm_action_worker_main", BGW_MAXLEN);
	strlcpy(worker->bgw_name, name, BGW_MAXLEN);
	strlcpy(worker->bgw_type, "clinic_migrate", BGW_MAXLEN);
	worker->bgw_main_arg = UInt32GetDatum(dsm_segment_handle(seg));
	worker->bgw_notify_pid = MyProcPid;
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

	/* clip the id on a character boundary: names show up in logs */
	cm_action_worker_define(&worker, seg,
							psprintf("clinic_migrate %s tenant %.*s", cm_action_name(req->action),
									 pg_mbcliplen(tenant, strlen(tenant), 50), tenant));

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

static void
sync_sigterm(SIGNAL_ARGS)
{
	int			save_errno = errno;

	cm_got_sigterm = true;
	SetLatch(MyLatch);
	errno = save_errno;
}

/* the tenants that need rounds (copied or cut over), or NIL */
typedef struct SyncTenant
{
	char	   *tenant;
	char	   *schema;
} SyncTenant;

static List *
tenants_to_sync(MemoryContext cxt, bool *any)
{
	List	   *result = NIL;
	SPITupleTable *tt;
	uint64		n;
	MemoryContext old;
	StringInfoData sql;

	/*
	 * One pass over the logs for every tenant: which copied or cut-over
	 * tenants have changes waiting.  (A round of a tenant with none would
	 * still read its plan from the catalogs.)
	 */
	*any = false;
	cm_state_exec("SELECT quote_ident(relname) FROM pg_class "
				  "WHERE oid IN " CM_RELS_OF_NAMESPACE("'clinic_migrate'::pg_catalog.regnamespace") " "
				  "AND relname LIKE 'log\\_%' "
				  "AND relkind = 'r' ORDER BY relname", 0, NULL, NULL, NULL, 0);
	tt = SPI_tuptable;
	n = SPI_processed;
	initStringInfo(&sql);
	appendStringInfoString(&sql, "SELECT t.tenant_id, t.schema_name::text, true "
						   "FROM clinic_migrate.tenants t WHERE t.state IN ('copied', 'cut_over') "
						   "AND t.tenant_id IN (");
	for (uint64 i = 0; i < n; i++)
		appendStringInfo(&sql, "%sSELECT _cm_tenant FROM clinic_migrate.%s", i ? " UNION " : "",
						 SPI_getvalue(tt->vals[i], tt->tupdesc, 1));
	if (n == 0)
		appendStringInfoString(&sql, "SELECT NULL::text");
	appendStringInfoString(&sql, ") ORDER BY t.tenant_id");

	/*
	 * Only the tenants with changes waiting come back: thousands of copied
	 * tenants with none cost a round one look at each log, not a row each.
	 */
	cm_state_exec("SELECT EXISTS (SELECT FROM clinic_migrate.tenants "
				  "WHERE state IN ('copied', 'cut_over'))", 0, NULL, NULL, NULL, 0);
	{
		bool		isnull;

		*any = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	}
	cm_state_exec(sql.data, 0, NULL, NULL, NULL, 0);
	tt = SPI_tuptable;
	n = SPI_processed;
	old = MemoryContextSwitchTo(cxt);
	for (uint64 i = 0; i < n; i++)
	{
		bool		isnull;
		SyncTenant *st;

		if (!DatumGetBool(SPI_getbinval(tt->vals[i], tt->tupdesc, 3, &isnull)) || isnull)
			continue;
		st = palloc(sizeof(SyncTenant));
		st->tenant = pstrdup(SPI_getvalue(tt->vals[i], tt->tupdesc, 1));
		st->schema = pstrdup(SPI_getvalue(tt->vals[i], tt->tupdesc, 2));
		result = lappend(result, st);
	}
	MemoryContextSwitchTo(old);
	return result;
}

static void
record_sync_error(const char *tenant, const char *msg)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	cm_tenant_record_last_error(tenant, msg);
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
}

void
cm_sync_worker_main(Datum main_arg)
{
	Oid			dboid = DatumGetObjectId(main_arg);
	MemoryContext cxt;
	volatile int idle = 0;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, sync_sigterm);
	BackgroundWorkerUnblockSignals();
	/*
	 * As the bootstrap superuser: a round's bookkeeping acts as the
	 * extension's owner, its statements on the application's tables as their
	 * owners in security-restricted operations (apply.c).  No setting of the
	 * database or role may make a name resolve elsewhere than it must.
	 */
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	cm_bgworker_session("clinic_migrate sync");
	SetConfigOption("DateStyle", "ISO, YMD", PGC_USERSET, PGC_S_SESSION);
	SetConfigOption("TimeZone", "UTC", PGC_USERSET, PGC_S_SESSION);
	SetConfigOption("default_transaction_isolation", "repeatable read", PGC_USERSET, PGC_S_SESSION);
	/* a round lost in a crash loses its log deletions too: it is replayed */
	SetConfigOption("synchronous_commit", "off", PGC_USERSET, PGC_S_SESSION);

	/* one sync worker per database: a second one leaves at once */
	if (!cm_lock_sync_worker(true))
		proc_exit(0);
	cxt = AllocSetContextCreate(TopMemoryContext, "clinic_migrate sync",
								ALLOCSET_DEFAULT_SIZES);
	for (;;)
	{
		List	   *todo = NIL;
		bool		any = false;
		ListCell   *lc;
		int			nsynced = 0;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		if (cm_got_sigterm)
			break;
		MemoryContextReset(cxt);

		/* who needs a round */
		PG_TRY();
		{
			SetCurrentStatementStartTimestamp();
			StartTransactionCommand();
			SPI_connect();
			PushActiveSnapshot(GetTransactionSnapshot());
			if (!OidIsValid(get_extension_oid("clinic_migrate", true)))
				cm_got_sigterm = true;	/* dropped: nothing left to do */
			else
				todo = tenants_to_sync(cxt, &any);
			SPI_finish();
			PopActiveSnapshot();
			CommitTransactionCommand();
		}
		PG_CATCH();
		{
			EmitErrorReport();
			FlushErrorState();
			AbortCurrentTransaction();
			any = true;			/* try again later */
		}
		PG_END_TRY();
		if (cm_got_sigterm)
			break;

		/*
		 * Capture from the WAL: the slot read into the logs, then moved on;
		 * a slot missing while tenants count on it fails the drain (and
		 * alerts() says so).
		 */
		{
			pgstat_report_activity(STATE_RUNNING, "clinic_migrate: reading the replication slot");
			PG_TRY();
			{
				/* dropped first if nobody needs it (a lost slot cannot be read) */
				bool		more = true;

				if (!cm_wal_cleanup())
					any = true;	/* kept while a tenant needs it: keep reading it */
				/*
				 * A transaction per clinic_migrate.drain_max_changes rows; at
				 * most ten per round, so that writes as fast as the drain
				 * do not keep the round from replaying.
				 */
				for (int k = 0; more && k < 10 && !cm_got_sigterm; k++)
				{
					CHECK_FOR_INTERRUPTS();
					(void) cm_wal_drain_some(cm_drain_max_changes, &more);
				}
				if (more)
					any = true;
			}
			PG_CATCH();
			{
				EmitErrorReport();
				FlushErrorState();
				AbortCurrentTransaction();
				any = true;
			}
			PG_END_TRY();
		}

		foreach(lc, todo)
		{
			SyncTenant *st = lfirst(lc);
			char		activity[NAMEDATALEN + 64];

			if (cm_got_sigterm)
				break;
			snprintf(activity, sizeof(activity), "clinic_migrate: keeping %s in sync", st->schema);
			pgstat_report_activity(STATE_RUNNING, activity);
			PG_TRY();
			{
				(void) cm_sync_tenant_round(st->tenant);
				nsynced++;
			}
			PG_CATCH();
			{
				ErrorData  *edata;
				MemoryContext ecxt = MemoryContextSwitchTo(cxt);

				EmitErrorReport();
				edata = CopyErrorData();
				FlushErrorState();
				AbortCurrentTransaction();
				MemoryContextSwitchTo(ecxt);
				/* the next round tries again; the error is there to see */
				PG_TRY();
				{
					/* a round that met a schema change just tries again: nothing to record */
					if (edata->sqlerrcode != ERRCODE_T_R_SERIALIZATION_FAILURE)
						record_sync_error(st->tenant, edata->message);
				}
				PG_CATCH();
				{
					EmitErrorReport();
					FlushErrorState();
					AbortCurrentTransaction();
				}
				PG_END_TRY();
			}
			PG_END_TRY();
		}
		pgstat_report_activity(STATE_IDLE, "clinic_migrate: sync worker waiting");

		/* nobody to keep in sync for a while: free the slot */
		idle = any ? 0 : idle + 1;
		if (idle >= 3)
		{
			/*
			 * And the shared tables' capture triggers, if no tenant needs
			 * them: tables busy now are tried again a round later, for a
			 * while, then left to the next rollback or finalize.
			 */
			if (cm_capture_cleanup() >= 0 || idle >= 30)
				break;
		}
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 cm_sync_interval, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
	proc_exit(0);
}
