/*-------------------------------------------------------------------------
 * launcher.c
 *	  The scheduler: one background worker per database listed in
 *	  clinic_migrate.databases (clinic_migrate in shared_preload_libraries),
 *	  registered at server start and restarted by the postmaster.
 *	  Floor 6 (where an action runs).  May call: floors 1 to 5, jobs, worker.
 *
 * Each pass of a scheduler (every clinic_migrate.scheduler_interval, or
 * when woken):
 *   1. forgets the workers that have exited (each recorded its job);
 *   2. answers the sessions' requests (shared memory): record a job for an
 *      interactive migrate_tenant, cutover, ... (the session cannot commit
 *      it before it waits), or cancel one;
 *   3. queues again the jobs left 'running' by a worker that died (crash,
 *      kill -9, restart): no worker holds the tenant's migration lock any
 *      more; they resume from their checkpoints;
 *   4. stops the workers of jobs asked to cancel (SIGTERM: they stop at
 *      their next boundary), and starts the database's sync worker when
 *      copied or cut-over tenants have none (after a restart);
 *   5. unless the queue is paused or a standby lags more than
 *      clinic_migrate.max_replication_lag, claims queued jobs, highest
 *      priority first, and starts a worker for each, up to
 *      clinic_migrate.max_workers running.
 * A job is claimed in a committed transaction before its worker starts,
 * and the worker holds the tenant's migration lock while it runs: a job
 * never runs twice, and a tenant never has two workers.  The workers act
 * as the role that enqueued the job (as SET ROLE does: the scheduler
 * connects as the bootstrap superuser), with the server's settings, which
 * they re-read on SIGHUP.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>

#include "access/xact.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/dsm.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "storage/shmem.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/varlena.h"
#include "utils/wait_event.h"

#include "settings.h"
#include "util.h"
#include "locks.h"
#include "runstate.h"
#include "launcher.h"
#include "jobs.h"
#include "state.h"
#include "worker.h"

PGDLLEXPORT void cm_scheduler_main(Datum main_arg);

int			cm_max_workers = 2;
int			cm_scheduler_interval = 1000;
char	   *cm_databases = NULL;

#define CM_MAX_DATABASES 32
#define CM_REQUEST_SLOTS 16
#define CM_MAX_RUNNING 128

typedef enum CmRequestKind
{
	CMR_ENQUEUE = 1,
	CMR_CANCEL
} CmRequestKind;

typedef enum CmRequestState
{
	CMR_FREE = 0,
	CMR_SUBMITTED,
	CMR_ANSWERED
} CmRequestState;

/* a session's request to the scheduler of its database */
typedef struct CmRequest
{
	CmRequestState state;
	CmRequestKind kind;
	Oid			dboid;
	int			requester_pid;
	Oid			run_as;
	Oid			session_role;
	CmAction	action;
	bool		archive;
	int64		job_id;			/* cancel: the job; enqueue: the answer */
	int			sqlerrcode;		/* the answer's error, 0 for none */
	char		error[512];
	char		hint[512];
	char		tenant[CM_MAX_TENANT_LEN + 1];
} CmRequest;

typedef struct CmLauncherShared
{
	slock_t		mutex;
	Oid			dboid[CM_MAX_DATABASES];
	int			pid[CM_MAX_DATABASES];
	CmRequest	req[CM_REQUEST_SLOTS];
} CmLauncherShared;

static CmLauncherShared *cm_shared = NULL;
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static void
cm_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(CmLauncherShared)));
}

static void
cm_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	cm_shared = ShmemInitStruct("clinic_migrate", sizeof(CmLauncherShared), &found);
	if (!found)
	{
		memset(cm_shared, 0, sizeof(CmLauncherShared));
		SpinLockInit(&cm_shared->mutex);
	}
	LWLockRelease(AddinShmemInitLock);
}

void
cm_launcher_init(void)
{
	char	   *list;
	List	   *names;
	ListCell   *lc;
	List	   *done = NIL;

	DefineCustomStringVariable("clinic_migrate.databases",
							   "Databases whose job queue a scheduler works (needs shared_preload_libraries).",
							   "A comma separated list; one scheduler background worker per database.",
							   &cm_databases, "",
							   PGC_POSTMASTER, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("clinic_migrate.max_workers",
							"Jobs a scheduler runs at once, each in a worker of its own.",
							NULL, &cm_max_workers, 2, 1, CM_MAX_RUNNING,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("clinic_migrate.scheduler_interval",
							"How often a scheduler looks at the queue when nothing wakes it.",
							NULL, &cm_scheduler_interval, 1000, 10, 600000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);

	if (!process_shared_preload_libraries_in_progress)
		return;
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = cm_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = cm_shmem_startup;

	list = pstrdup(cm_databases ? cm_databases : "");
	if (!SplitIdentifierString(list, ',', &names))
	{
		ereport(LOG,
				(errmsg("clinic_migrate.databases is not a list of database names: \"%s\"", cm_databases),
				 errhint("Write it as 'db1, db2'.")));
		return;
	}
	foreach(lc, names)
	{
		char	   *db = lfirst(lc);
		BackgroundWorker w;
		ListCell   *dc;
		bool		dup = false;

		foreach(dc, done)
			if (strcmp((char *) lfirst(dc), db) == 0)
				dup = true;
		if (dup || list_length(done) >= CM_MAX_DATABASES)
			continue;
		done = lappend(done, db);
		memset(&w, 0, sizeof(w));
		w.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
		w.bgw_start_time = BgWorkerStart_RecoveryFinished;
		w.bgw_restart_time = 5;
		strlcpy(w.bgw_library_name, "clinic_migrate", BGW_MAXLEN);
		strlcpy(w.bgw_function_name, "cm_scheduler_main", BGW_MAXLEN);
		snprintf(w.bgw_name, BGW_MAXLEN, "clinic_migrate scheduler for database %s", db);
		strlcpy(w.bgw_type, "clinic_migrate scheduler", BGW_MAXLEN);
		strlcpy(w.bgw_extra, db, BGW_EXTRALEN);
		RegisterBackgroundWorker(&w);
	}
}

int
cm_scheduler_pid(Oid dboid)
{
	int			pid = 0;

	if (cm_shared == NULL)
		return 0;
	SpinLockAcquire(&cm_shared->mutex);
	for (int i = 0; i < CM_MAX_DATABASES; i++)
		if (cm_shared->dboid[i] == dboid && cm_shared->pid[i] != 0)
			pid = cm_shared->pid[i];
	SpinLockRelease(&cm_shared->mutex);
	if (pid != 0 && BackendPidGetProc(pid) == NULL)
		pid = 0;				/* it died; the postmaster restarts it */
	return pid;
}

void
cm_scheduler_wake(Oid dboid)
{
	int			pid = cm_scheduler_pid(dboid);
	PGPROC	   *proc = pid ? BackendPidGetProc(pid) : NULL;

	if (proc)
		SetLatch(&proc->procLatch);
}

/*
 * Wake the scheduler when the current transaction commits: a job queued, the
 * queue resumed or a cancel asked for is only visible to it then (woken
 * before, it would look, find nothing and sleep a scheduler_interval).
 */
static bool wake_at_commit = false;
static bool wake_callback_registered = false;

static void
wake_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			if (wake_at_commit)
			{
				wake_at_commit = false;
				cm_scheduler_wake(MyDatabaseId);
			}
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			wake_at_commit = false;
			break;
		default:
			break;
	}
}

void
cm_scheduler_wake_at_commit(void)
{
	if (!wake_callback_registered)
	{
		RegisterXactCallback(wake_xact_callback, NULL);
		wake_callback_registered = true;
	}
	wake_at_commit = true;
}

/* post a request and wait (interrupts held) for the answer; false on timeout */
static bool
post_request(Oid dboid, CmRequest *r)
{
	int			slot = -1;
	bool		answered = false;

	if (cm_shared == NULL || cm_scheduler_pid(dboid) == 0)
		return false;
	SpinLockAcquire(&cm_shared->mutex);
	for (int i = 0; i < CM_REQUEST_SLOTS && slot < 0; i++)
		if (cm_shared->req[i].state == CMR_FREE)
			slot = i;
	if (slot >= 0)
	{
		memcpy(&cm_shared->req[slot], r, sizeof(CmRequest));
		cm_shared->req[slot].state = CMR_SUBMITTED;
		cm_shared->req[slot].dboid = dboid;
		cm_shared->req[slot].requester_pid = MyProcPid;
	}
	SpinLockRelease(&cm_shared->mutex);
	if (slot < 0)
		return false;
	cm_scheduler_wake(dboid);

	/* a pass of the scheduler answers it; 30 s is many passes */
	for (int i = 0; i < 3000 && !answered; i++)
	{
		SpinLockAcquire(&cm_shared->mutex);
		if (cm_shared->req[slot].state == CMR_ANSWERED)
		{
			memcpy(r, &cm_shared->req[slot], sizeof(CmRequest));
			cm_shared->req[slot].state = CMR_FREE;
			answered = true;
		}
		SpinLockRelease(&cm_shared->mutex);
		if (!answered)
		{
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 10L, PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
		}
	}
	if (!answered)
	{
		/* give the slot back, unless the answer came just now */
		SpinLockAcquire(&cm_shared->mutex);
		if (cm_shared->req[slot].state == CMR_ANSWERED)
		{
			memcpy(r, &cm_shared->req[slot], sizeof(CmRequest));
			answered = true;
		}
		cm_shared->req[slot].state = CMR_FREE;
		SpinLockRelease(&cm_shared->mutex);
	}
	return answered;
}

int64
cm_scheduler_request(Oid dboid, CmWorkerShared *req)
{
	CmRequest  *r = palloc0(sizeof(CmRequest));
	bool		answered;

	r->kind = CMR_ENQUEUE;
	r->run_as = GetUserId();
	r->session_role = GetSessionUserId();
	r->action = req->action;
	r->archive = req->archive;
	strlcpy(r->tenant, req->tenant, sizeof(r->tenant));
	HOLD_INTERRUPTS();
	answered = post_request(dboid, r);
	RESUME_INTERRUPTS();
	if (!answered)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_RESOURCES),
				 errmsg("the clinic_migrate scheduler of this database did not take the job"),
				 errhint("See the server log; SELECT clinic_migrate.pause_queue() makes such calls run on their own.")));
	if (r->sqlerrcode != 0)
		ereport(ERROR,
				(errcode(r->sqlerrcode),
				 errmsg("%s", r->error),
				 r->hint[0] ? errhint("%s", r->hint) : 0));
	return r->job_id;
}

void
cm_scheduler_cancel(Oid dboid, int64 job)
{
	CmRequest  *r = palloc0(sizeof(CmRequest));

	r->kind = CMR_CANCEL;
	r->job_id = job;
	(void) post_request(dboid, r);
}

/* ---- the scheduler ---- */

/* a job this scheduler started */
typedef struct RunningJob
{
	int64		job_id;
	dsm_segment *seg;
	BackgroundWorkerHandle *handle;
} RunningJob;

static RunningJob running[CM_MAX_RUNNING];
static int	nrunning = 0;

/*
 * Sessions waiting for a job they asked for (migrate_tenant and the like
 * while the scheduler runs): woken when its worker exits, its row committed,
 * rather than at their next poll.  A ring: a forgotten entry only costs the
 * waiter its poll interval.
 */
#define CM_WAITERS 64
static struct
{
	int64		job_id;
	int			pid;
}			waiters[CM_WAITERS];
static int	next_waiter = 0;

static void
wake_waiters(int64 job)
{
	for (int i = 0; i < CM_WAITERS; i++)
		if (waiters[i].job_id == job && waiters[i].pid != 0)
		{
			PGPROC	   *proc = BackendPidGetProc(waiters[i].pid);

			if (proc)
				SetLatch(&proc->procLatch);
			waiters[i].job_id = 0;
			waiters[i].pid = 0;
		}
}
static volatile sig_atomic_t got_sigterm = false;

static void
scheduler_sigterm(SIGNAL_ARGS)
{
	int			save_errno = errno;

	got_sigterm = true;
	SetLatch(MyLatch);
	errno = save_errno;
}

static void
scheduler_detach(int code, Datum arg)
{
	if (cm_shared == NULL)
		return;
	SpinLockAcquire(&cm_shared->mutex);
	for (int i = 0; i < CM_MAX_DATABASES; i++)
		if (cm_shared->pid[i] == MyProcPid)
			cm_shared->pid[i] = 0;
	SpinLockRelease(&cm_shared->mutex);
}

static bool
scheduler_attach(void)
{
	int			free_slot = -1;
	bool		other = false;

	SpinLockAcquire(&cm_shared->mutex);
	for (int i = 0; i < CM_MAX_DATABASES; i++)
	{
		if (cm_shared->dboid[i] == MyDatabaseId && cm_shared->pid[i] != 0 &&
			cm_shared->pid[i] != MyProcPid && BackendPidGetProc(cm_shared->pid[i]) != NULL)
			other = true;
		if (free_slot < 0 && (cm_shared->pid[i] == 0 || cm_shared->dboid[i] == MyDatabaseId))
			free_slot = i;
	}
	if (!other && free_slot >= 0)
	{
		cm_shared->dboid[free_slot] = MyDatabaseId;
		cm_shared->pid[free_slot] = MyProcPid;
	}
	SpinLockRelease(&cm_shared->mutex);
	return !other && free_slot >= 0;
}

static void
answer(int slot, int64 job, int sqlerrcode, const char *error, const char *hint)
{
	PGPROC	   *proc;
	int			pid;

	SpinLockAcquire(&cm_shared->mutex);
	cm_shared->req[slot].job_id = job;
	cm_shared->req[slot].sqlerrcode = sqlerrcode;
	strlcpy(cm_shared->req[slot].error, error ? error : "", sizeof(cm_shared->req[slot].error));
	strlcpy(cm_shared->req[slot].hint, hint ? hint : "", sizeof(cm_shared->req[slot].hint));
	cm_shared->req[slot].state = CMR_ANSWERED;
	pid = cm_shared->req[slot].requester_pid;
	SpinLockRelease(&cm_shared->mutex);
	proc = BackendPidGetProc(pid);
	if (proc)
		SetLatch(&proc->procLatch);
}

/* answer one request (a slot in state CMR_SUBMITTED for this database) */
static pg_noinline void
answer_request(int i, CmRequest *rp)
{
	CmRequest	r = *rp;
	MemoryContext cxt = CurrentMemoryContext;

	{
		PG_TRY();
		{
			int64		job = r.job_id;

			cm_begin_txn();
			if (r.kind == CMR_ENQUEUE)
				job = cm_job_insert(r.tenant, r.action, 100, GetCurrentTimestamp(), r.archive, r.run_as,
											 r.session_role);
			else
			{
				Oid			t = INT8OID;
				Datum		v = Int64GetDatum(r.job_id);

				cm_state_exec("UPDATE clinic_migrate.job_queue SET "
							  "state = CASE state WHEN 'queued' THEN 'cancelled' ELSE state END, "
							  "finished_at = CASE state WHEN 'queued' THEN clock_timestamp() ELSE finished_at END, "
							  "cancel_requested = true WHERE job_id = $1 AND state IN ('queued', 'running')",
							  1, &t, &v, NULL, 0);
			}
			cm_end_txn();
			if (r.kind == CMR_ENQUEUE)
			{
				waiters[next_waiter].job_id = job;
				waiters[next_waiter].pid = r.requester_pid;
				next_waiter = (next_waiter + 1) % CM_WAITERS;
			}
			answer(i, job, 0, NULL, NULL);
		}
		PG_CATCH();
		{
			ErrorData  *edata;

			MemoryContextSwitchTo(cxt);
			edata = CopyErrorData();
			FlushErrorState();
			AbortCurrentTransaction();
			answer(i, 0, edata->sqlerrcode, edata->message, edata->hint);
		}
		PG_END_TRY();
	}
}

/* 2. the sessions' requests for this database */
static void
answer_requests(void)
{
	for (int i = 0; i < CM_REQUEST_SLOTS; i++)
	{
		CmRequest	r;

		SpinLockAcquire(&cm_shared->mutex);
		memcpy(&r, &cm_shared->req[i], sizeof(CmRequest));
		SpinLockRelease(&cm_shared->mutex);
		if (r.state == CMR_SUBMITTED && r.dboid == MyDatabaseId)
			answer_request(i, &r);
	}
}

/* 1. forget the workers that exited */
static void
reap(void)
{
	for (int i = 0; i < nrunning;)
	{
		pid_t		pid;

		if (GetBackgroundWorkerPid(running[i].handle, &pid) == BGWH_STOPPED)
		{
			wake_waiters(running[i].job_id);
			dsm_detach(running[i].seg);
			pfree(running[i].handle);
			running[i] = running[--nrunning];
		}
		else
			i++;
	}
}

static bool
started_here(int64 job)
{
	for (int i = 0; i < nrunning; i++)
		if (running[i].job_id == job)
			return true;
	return false;
}

/* 3 and 4: jobs whose worker died; jobs asked to stop */
static void
look_after_running_jobs(void)
{
	SPITupleTable *tt;
	uint64		n;

	cm_begin_txn();
	cm_state_exec("SELECT job_id, tenant_id, cancel_requested, worker_pid, "
				  "started_at < clock_timestamp() - interval '5 seconds' "
				  "FROM clinic_migrate.job_queue WHERE state = 'running'", 0, NULL, NULL, NULL, 0);
	tt = SPI_tuptable;
	n = SPI_processed;
	for (uint64 i = 0; i < n; i++)
	{
		bool		isnull;
		int64		job = DatumGetInt64(SPI_getbinval(tt->vals[i], tt->tupdesc, 1, &isnull));
		char	   *tenant = SPI_getvalue(tt->vals[i], tt->tupdesc, 2);
		bool		cancel = DatumGetBool(SPI_getbinval(tt->vals[i], tt->tupdesc, 3, &isnull));
		Datum		d = SPI_getbinval(tt->vals[i], tt->tupdesc, 4, &isnull);
		int			pid = isnull ? 0 : DatumGetInt32(d);
		bool		old = DatumGetBool(SPI_getbinval(tt->vals[i], tt->tupdesc, 5, &isnull));

		if (started_here(job))
		{
			if (cancel)
				for (int r = 0; r < nrunning; r++)
					if (running[r].job_id == job)
						TerminateBackgroundWorker(running[r].handle);
			continue;
		}

		/*
		 * Not ours: a worker the previous scheduler started holds the
		 * tenant's lock while it lives.  Free lock, started a while ago:
		 * the worker is gone, and the job goes back in the queue.
		 */
		if (!cm_tenant_lock_free(tenant))
		{
			if (cancel && pid != 0 && BackendPidGetProc(pid) != NULL)
				(void) kill(pid, SIGTERM);
			continue;
		}
		if (!old)
			continue;
		{
			Oid			types[1] = {INT8OID};
			Datum		values[1] = {Int64GetDatum(job)};

			cm_state_exec("UPDATE clinic_migrate.job_queue SET "
						  "state = CASE WHEN cancel_requested THEN 'cancelled' "
						  "             WHEN attempts >= max_attempts THEN 'failed' ELSE 'queued' END, "
						  "finished_at = CASE WHEN cancel_requested OR attempts >= max_attempts "
						  "                   THEN clock_timestamp() END, "
						  "not_before = clock_timestamp(), worker_pid = NULL, "
						  "error = 'its worker stopped before it finished (crash, kill or restart)' "
						  "WHERE job_id = $1 AND state = 'running'",
						  1, types, values, NULL, 0);
			ereport(LOG,
					(errmsg("clinic_migrate: job " INT64_FORMAT " of tenant \"%s\" lost its worker; queued again",
							job, tenant)));
		}
	}
	cm_end_txn();
}

/*
 * 3b. the sync worker: after a restart (or a crash of it) no one would start
 * it again until the next migrate_tenant or cutover; copied and cut-over
 * tenants must stay in step meanwhile.
 */
static void
look_after_sync(void)
{
	static TimestampTz last_complaint = 0;
	bool		needed;

	cm_begin_txn();
	needed = !cm_sync_worker_running();
	if (needed)
	{
		cm_state_exec("SELECT 1 FROM clinic_migrate.tenants WHERE state IN ('copied', 'cut_over') LIMIT 1",
					  0, NULL, NULL, NULL, 0);
		needed = SPI_processed > 0;
	}
	cm_end_txn();
	if (needed && !cm_start_sync_worker() &&
		TimestampDifferenceExceeds(last_complaint, GetCurrentTimestamp(), 60000))
	{
		ereport(LOG,
				(errmsg("clinic_migrate: no background worker slot for the sync worker"),
				 errhint("Raise max_worker_processes.")));
		last_complaint = GetCurrentTimestamp();
	}
}

/* the highest replay lag of the standbys, in ms (0 if none or unknown) */
static double
replication_lag_ms(void)
{
	bool		isnull;
	Datum		d;

	cm_state_exec("SELECT coalesce(max(extract(epoch FROM replay_lag) * 1000), 0)::float8 "
				  "FROM pg_catalog.pg_stat_replication", 0, NULL, NULL, NULL, 0);
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	return isnull ? 0 : DatumGetFloat8(d);
}

/* the OID of the role a job's worker connects as; NULL if that role is gone */
#define SESSION_ROLE_OID "CASE WHEN session_role IS NULL THEN run_as " \
	"ELSE (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) session_role) END"

/* start the worker of a claimed job; false if no worker slot was free */
static bool
start_job(int64 job, const char *tenant, CmAction action, Oid run_as, Oid session_role,
		  bool archive, const char *run_as_name)
{
	dsm_segment *seg;
	CmWorkerShared *sh;
	BackgroundWorker worker;
	BackgroundWorkerHandle *handle;
	pid_t		pid;
	MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

	seg = dsm_create(sizeof(CmWorkerShared), 0);
	dsm_pin_mapping(seg);
	sh = dsm_segment_address(seg);
	memset(sh, 0, sizeof(*sh));
	SpinLockInit(&sh->mutex);
	sh->action = action;
	sh->dboid = MyDatabaseId;
	sh->caller_pid = MyProcPid;
	/* the session that queued it, never more (see cm_job_insert) */
	sh->sessionoid = session_role;
	sh->useroid = run_as;
	cm_current_settings(&sh->settings);
	strlcpy(sh->tenant, tenant, sizeof(sh->tenant));
	strlcpy(sh->started_by, run_as_name, NAMEDATALEN);
	sh->job_id = job;
	sh->archive = archive;
	sh->wait_backend = InvalidBackendId;

	cm_action_worker_define(&worker, seg,
							psprintf("clinic_migrate job " INT64_FORMAT " (%s)", job,
									 cm_action_name(action)));
	if (!RegisterDynamicBackgroundWorker(&worker, &handle))
	{
		dsm_detach(seg);
		MemoryContextSwitchTo(old);
		return false;
	}
	MemoryContextSwitchTo(old);
	running[nrunning].job_id = job;
	running[nrunning].seg = seg;
	running[nrunning].handle = handle;
	nrunning++;
	if (WaitForBackgroundWorkerStartup(handle, &pid) == BGWH_STARTED)
	{
		Oid			types[2] = {INT8OID, INT4OID};
		Datum		values[2] = {Int64GetDatum(job), Int32GetDatum(pid)};

		cm_begin_txn();
		cm_state_exec("UPDATE clinic_migrate.job_queue SET worker_pid = $2 "
					  "WHERE job_id = $1 AND state = 'running'", 2, types, values, NULL, 0);
		cm_end_txn();
	}
	return true;
}

/* 5. claim and start jobs while workers are free */
static void
claim_jobs(void)
{
	while (nrunning < cm_max_workers && nrunning < CM_MAX_RUNNING && !got_sigterm)
	{
		int64		job;
		char	   *tenant;
		CmAction	action;
		Oid			run_as;
		Oid			session_role;
		bool		can_login;
		bool		archive;
		char	   *run_as_name;
		bool		isnull;
		bool		paused;
		double		lag = 0;

		cm_begin_txn();
		paused = cm_queue_paused();
		if (!paused && cm_max_replication_lag > 0)
			lag = replication_lag_ms();
		if (paused || (cm_max_replication_lag > 0 && lag > cm_max_replication_lag))
		{
			cm_end_txn();
			pgstat_report_activity(STATE_IDLE, paused ? "clinic_migrate: the queue is paused"
								   : "clinic_migrate: waiting for the standbys to replay");
			return;
		}

		/* committed before the worker starts: no other pass claims it again */
		cm_state_exec(psprintf("UPDATE clinic_migrate.job_queue SET state = 'running', attempts = attempts + 1, "
							   "started_at = clock_timestamp(), finished_at = NULL, worker_pid = NULL "
							   "WHERE job_id = (SELECT job_id FROM clinic_migrate.job_queue "
							   "  WHERE state = 'queued' AND not_before <= clock_timestamp() "
							   "    AND NOT clinic_migrate.migration_active(tenant_id) "
							   "  ORDER BY priority DESC, job_id LIMIT 1 FOR UPDATE SKIP LOCKED) "
							   "RETURNING job_id, tenant_id, action, run_as, archive, "
							   "  (SELECT rolname::text FROM pg_catalog.pg_roles WHERE oid = run_as), %s, "
							   "  (SELECT rolcanlogin FROM pg_catalog.pg_roles WHERE oid = %s)",
							   cm_job_queue_has_session_role() ? SESSION_ROLE_OID : "run_as",
							   cm_job_queue_has_session_role() ? SESSION_ROLE_OID : "run_as"),
					  0, NULL, NULL, NULL, 0);
		if (SPI_processed == 0)
		{
			cm_end_txn();
			return;
		}
		job = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		tenant = MemoryContextStrdup(TopMemoryContext,
									 SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2));
		action = cm_action_from_name(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3));
		run_as = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4, &isnull));
		archive = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 5, &isnull));
		run_as_name = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 6);
		run_as_name = MemoryContextStrdup(TopMemoryContext, run_as_name ? run_as_name : "?");
		session_role = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 7, &isnull));
		if (isnull)
			run_as_name[0] = '?';	/* the session role is gone */
		can_login = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 8, &isnull)) && !isnull;
		cm_end_txn();

		if (action == 0 || run_as_name[0] == '?' || !can_login)
		{
			Oid			t = INT8OID;
			Datum		v = Int64GetDatum(job);

			cm_begin_txn();
			cm_state_exec(action == 0 || run_as_name[0] == '?' ?
						  "UPDATE clinic_migrate.job_queue SET state = 'failed', finished_at = clock_timestamp(), "
						  "error = 'the role that queued it no longer exists' WHERE job_id = $1" :
						  "UPDATE clinic_migrate.job_queue SET state = 'failed', finished_at = clock_timestamp(), "
						  "sqlstate = '28000', "
						  "error = 'the role whose session queued it cannot log in: a job''s worker connects as that role' "
						  "WHERE job_id = $1",
						  1, &t, &v, NULL, 0);
			cm_end_txn();
			continue;
		}
		if (!start_job(job, tenant, action, run_as, session_role, archive, run_as_name))
		{
			Oid			t = INT8OID;
			Datum		v = Int64GetDatum(job);

			/* no worker slot: back in the queue, the attempt not counted */
			cm_begin_txn();
			cm_state_exec("UPDATE clinic_migrate.job_queue SET state = 'queued', attempts = attempts - 1, "
						  "started_at = NULL WHERE job_id = $1", 1, &t, &v, NULL, 0);
			cm_end_txn();
			ereport(LOG,
					(errmsg("clinic_migrate: no background worker slot for job " INT64_FORMAT, job),
					 errhint("Raise max_worker_processes, or lower clinic_migrate.max_workers.")));
			return;
		}
		pfree(tenant);
		pfree(run_as_name);
	}
}

static bool
extension_here(void)
{
	bool		here;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	here = OidIsValid(get_extension_oid("clinic_migrate", true));
	CommitTransactionCommand();
	return here;
}

void
cm_scheduler_main(Datum main_arg)
{
	char		dbname[BGW_EXTRALEN];
	MemoryContext pass_cxt;

	strlcpy(dbname, MyBgworkerEntry->bgw_extra, sizeof(dbname));
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, scheduler_sigterm);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(dbname, NULL, 0);
	/* a superuser session: no database or role setting may move a name */
	cm_bgworker_session("clinic_migrate scheduler");
	if (cm_shared == NULL || !scheduler_attach())
	{
		ereport(LOG,
				(errmsg("clinic_migrate: another scheduler serves database \"%s\"", dbname)));
		proc_exit(1);
	}
	before_shmem_exit(scheduler_detach, (Datum) 0);
	ereport(LOG, (errmsg("clinic_migrate: scheduler of database \"%s\" started", dbname)));
	pass_cxt = AllocSetContextCreate(TopMemoryContext, "clinic_migrate scheduler pass",
									 ALLOCSET_DEFAULT_SIZES);

	while (!got_sigterm)
	{
		volatile long sleep_ms = cm_scheduler_interval;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		MemoryContextReset(pass_cxt);
		MemoryContextSwitchTo(pass_cxt);
		PG_TRY();
		{
			reap();
			if (!extension_here())
			{
				pgstat_report_activity(STATE_IDLE, "clinic_migrate: waiting for CREATE EXTENSION clinic_migrate");
				sleep_ms = Max(sleep_ms, 10000);
			}
			else
			{
				pgstat_report_activity(STATE_RUNNING, "clinic_migrate: scheduling");
				answer_requests();
				look_after_running_jobs();
				look_after_sync();
				claim_jobs();
				pgstat_report_activity(STATE_IDLE, NULL);
			}
		}
		PG_CATCH();
		{
			MemoryContextSwitchTo(pass_cxt);
			EmitErrorReport();
			FlushErrorState();
			AbortCurrentTransaction();
			sleep_ms = Max(sleep_ms, 5000);
		}
		PG_END_TRY();
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 sleep_ms, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}

	/*
	 * Exit status 1: the postmaster starts the scheduler again after
	 * bgw_restart_time (a SIGTERM from pg_terminate_backend or DROP
	 * DATABASE ... WITH (FORCE) must not end it for good; at shutdown
	 * nothing is restarted anyway).  Its workers go on meanwhile.
	 */
	proc_exit(1);
}

/* the job's row as the action's results, with the latest snapshot */
static char *
job_result(int64 job, CmWorkerShared *result, int *sqlerrcode, char **error,
		   char **detail, char **hint)
{
	Oid			t = INT8OID;
	Datum		v = Int64GetDatum(job);
	char	   *state = NULL;
	CmRoleSave	save;

	PushActiveSnapshot(GetLatestSnapshot());
	cm_owner_begin(&save);
	if (SPI_execute_with_args("SELECT state, result->>'schema', (result->>'tables')::int, "
							  "(result->>'rows')::bigint, (result->>'resumed')::boolean, "
							  "(result->>'attempts')::int, (result->>'pause_ms')::float8, "
							  "(result->>'keys_drained')::bigint, (result->>'rows_validated')::bigint, "
							  "(result->>'did')::boolean, sqlstate, error, "
							  "result->>'detail', result->>'hint' "
							  "FROM clinic_migrate.job_queue WHERE job_id = $1",
							  1, &t, &v, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "clinic_migrate: job lookup failed");
	cm_role_end(&save);
	if (SPI_processed > 0)
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	td = SPI_tuptable->tupdesc;
		bool		isnull;
		char	   *s;

		state = SPI_getvalue(tup, td, 1);
		s = SPI_getvalue(tup, td, 2);
		if (s)
			strlcpy(result->schema, s, NAMEDATALEN);
#define GETNUM(col, field, conv) \
		do { Datum d = SPI_getbinval(tup, td, col, &isnull); if (!isnull) result->field = conv(d); } while (0)
		GETNUM(3, tables_total, DatumGetInt32);
		GETNUM(4, rows_done, DatumGetInt64);
		GETNUM(5, resumed, DatumGetBool);
		GETNUM(6, attempts, DatumGetInt32);
		GETNUM(7, pause_ms, DatumGetFloat8);
		GETNUM(8, keys_drained, DatumGetInt64);
		GETNUM(9, rows_validated, DatumGetInt64);
		GETNUM(10, did, DatumGetBool);
#undef GETNUM
		s = SPI_getvalue(tup, td, 11);
		*sqlerrcode = s ? MAKE_SQLSTATE(s[0], s[1], s[2], s[3], s[4]) : ERRCODE_INTERNAL_ERROR;
		*error = SPI_getvalue(tup, td, 12);
		*detail = SPI_getvalue(tup, td, 13);
		*hint = SPI_getvalue(tup, td, 14);
	}
	PopActiveSnapshot();
	return state;
}

/* progress of the tenant for the waiting session, as migrate_tenant reports it */
static void
queue_progress_notice(const char *tenant)
{
	Oid			t = TEXTOID;
	Datum		v = CStringGetTextDatum(tenant);
	CmRoleSave	save;

	PushActiveSnapshot(GetLatestSnapshot());
	cm_owner_begin(&save);
	if (SPI_execute_with_args("SELECT format('tenant %s: %s of %s rows copied (%s of %s tables done), now %s.%s', "
							  "quote_literal(tenant_id), rows_copied, rows_total, tables_copied, tables, "
							  "schema_name, current_table) FROM clinic_migrate.status "
							  "WHERE tenant_id = $1 AND state = 'copying'",
							  1, &t, &v, NULL, true, 1) == SPI_OK_SELECT && SPI_processed > 0)
		ereport(NOTICE, (errmsg("%s", SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1))));
	cm_role_end(&save);
	PopActiveSnapshot();
}

void
cm_run_action(CmWorkerShared *req, CmWorkerShared *result)
{
	int64		job;
	char	   *state;
	TimestampTz last_notice;
	int			sqlerrcode = 0;
	char	   *error = NULL,
			   *detail = NULL,
			   *hint = NULL;
	bool		paused;
	MemoryContext caller = CurrentMemoryContext;

	if (cm_scheduler_pid(MyDatabaseId) == 0)
	{
		cm_run_in_worker(req, result);
		return;
	}
	SPI_connect();
	paused = cm_queue_paused();
	SPI_finish();
	if (paused)
	{
		/* the queue is paused: what is run by hand is not held by it */
		cm_run_in_worker(req, result);
		return;
	}

	/*
	 * The scheduler records the job (our own insert would be invisible to
	 * it until we commit), then runs it; we wait for its row.
	 */
	job = cm_scheduler_request(MyDatabaseId, req);
	memset(result, 0, sizeof(*result));
	strlcpy(result->tenant, req->tenant, sizeof(result->tenant));
	result->job_id = job;
	last_notice = GetCurrentTimestamp();
	SPI_connect();
	PG_TRY();
	{
		for (;;)
		{
			state = cm_job_state(job);
			if (state == NULL || cm_job_over(state))
				break;
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 100L, PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
			CHECK_FOR_INTERRUPTS();
			if (req->action == CMA_MIGRATE && cm_progress_interval > 0 &&
				TimestampDifferenceExceeds(last_notice, GetCurrentTimestamp(),
										   cm_progress_interval * 1000))
			{
				queue_progress_notice(req->tenant);
				last_notice = GetCurrentTimestamp();
			}
		}
	}
	PG_CATCH();
	{
		/* cancelled: the job is too, at its worker's next boundary */
		HOLD_INTERRUPTS();
		cm_scheduler_cancel(MyDatabaseId, job);
		RESUME_INTERRUPTS();
		PG_RE_THROW();
	}
	PG_END_TRY();
	state = job_result(job, result, &sqlerrcode, &error, &detail, &hint);
	if (state == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("job " INT64_FORMAT " of tenant \"%s\" is gone", job, req->tenant)));
	/* out of SPI's memory, which SPI_finish frees, into the caller's */
	state = MemoryContextStrdup(caller, state);
	error = error ? MemoryContextStrdup(caller, error) : NULL;
	detail = detail ? MemoryContextStrdup(caller, detail) : NULL;
	hint = hint ? MemoryContextStrdup(caller, hint) : NULL;
	SPI_finish();
	if (strcmp(state, "done") != 0)
		ereport(ERROR,
				(errcode(strcmp(state, "cancelled") == 0 ? ERRCODE_QUERY_CANCELED : sqlerrcode),
				 errmsg("%s", error ? error : "the job was cancelled"),
				 detail && detail[0] ? errdetail("%s", detail) : 0,
				 hint && hint[0] ? errhint("%s", hint) :
				 errhint("Job " INT64_FORMAT " in clinic_migrate.jobs has the record.", job)));
}
