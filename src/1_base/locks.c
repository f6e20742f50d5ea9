/*-------------------------------------------------------------------------
 * locks.c
 *	  Floor 1 (base): clinic_migrate's locks (see locks.h): the per-tenant
 *	  migration, apply and sync locks and the tenant's write lock, in key
 *	  spaces of their own; and taking the application's tables all at once
 *	  with a short timeout, retried with back-off and jitter, cancelling a
 *	  blocking autovacuum as the lock manager would.
 *	  May call: settings, util.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_collation.h"
#include "common/hashfn.h"
#include "utils/resowner.h"
#include "utils/memutils.h"
#include "pgstat.h"
#include "executor/spi.h"
#include "access/xact.h"
#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "nodes/params.h"
#include "miscadmin.h"
#include "storage/lock.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/varlena.h"
#include "utils/typcache.h"
#include <signal.h>
#include "storage/lwlock.h"
#include "storage/sinvaladt.h"
#include "utils/backend_status.h"
#include "utils/timestamp.h"
#include "storage/lmgr.h"
#include "common/pg_prng.h"
#include "access/htup_details.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

#include "settings.h"
#include "util.h"
#include "locks.h"

/* 64 bits of the tenant id, for the lock tag */
void
cm_tenant_lock_key(const char *tenant, uint32 *hi, uint32 *lo)
{
	uint64		h = hash_bytes_extended((const unsigned char *) tenant,
									   strlen(tenant), 0x636c696e);

	*hi = (uint32) (h >> 32);
	*lo = (uint32) h;
}

static void
tenant_locktag_kind(LOCKTAG *tag, const char *tenant, int kind)
{
	uint32		hi,
				lo;

	cm_tenant_lock_key(tenant, &hi, &lo);
	SET_LOCKTAG_ADVISORY(*tag, MyDatabaseId, hi, lo, kind);
}

static void
tenant_locktag(LOCKTAG *tag, const char *tenant)
{
	tenant_locktag_kind(tag, tenant, CM_LOCK_FIELD4);
}

bool
cm_lock_tenant_kind(const char *tenant, int kind, bool wait, bool session)
{
	LOCKTAG		tag;

	tenant_locktag_kind(&tag, tenant, kind);
	return LockAcquire(&tag, ExclusiveLock, session, !wait) != LOCKACQUIRE_NOT_AVAIL;
}

void
cm_unlock_tenant_kind(const char *tenant, int kind, bool session)
{
	LOCKTAG		tag;

	tenant_locktag_kind(&tag, tenant, kind);
	LockRelease(&tag, ExclusiveLock, session);
}

bool
cm_tenant_lock_kind_free(const char *tenant, int kind)
{
	LOCKTAG		tag;
	LockAcquireResult r;

	tenant_locktag_kind(&tag, tenant, kind);
	r = LockAcquire(&tag, ExclusiveLock, false, true);
	if (r == LOCKACQUIRE_NOT_AVAIL)
		return false;
	LockRelease(&tag, ExclusiveLock, false);
	return r == LOCKACQUIRE_OK;
}

bool
cm_tenant_write_lock(Oid schema_oid, bool exclusive)
{
	LOCKTAG		tag;

	SET_LOCKTAG_RELATION(tag, MyDatabaseId, schema_oid);
	return LockAcquire(&tag, exclusive ? ExclusiveLock : RowExclusiveLock, false, false) !=
		LOCKACQUIRE_ALREADY_HELD;
}

/* the database-wide sync lock: advisory (db, 0, 0, CM_LOCK_SYNC) */
bool
cm_lock_sync_worker(bool session)
{
	LOCKTAG		tag;

	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, 0, 0, CM_LOCK_SYNC);
	return LockAcquire(&tag, ExclusiveLock, session, true) != LOCKACQUIRE_NOT_AVAIL;
}

bool
cm_sync_worker_running(void)
{
	LOCKTAG		tag;
	LockAcquireResult r;

	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, 0, 0, CM_LOCK_SYNC);
	r = LockAcquire(&tag, ExclusiveLock, false, true);
	if (r == LOCKACQUIRE_NOT_AVAIL)
		return true;
	LockRelease(&tag, ExclusiveLock, false);
	/* held by this very session (the sync worker asking itself) */
	return r != LOCKACQUIRE_OK;
}

/* Take the tenant's migration lock for the session; false if busy. */
bool
cm_lock_tenant(const char *tenant, bool wait, bool session)
{
	LOCKTAG		tag;

	tenant_locktag(&tag, tenant);
	return LockAcquire(&tag, ExclusiveLock, session, !wait) != LOCKACQUIRE_NOT_AVAIL;
}

void
cm_unlock_tenant(const char *tenant, bool session)
{
	LOCKTAG		tag;

	tenant_locktag(&tag, tenant);
	LockRelease(&tag, ExclusiveLock, session);
}

/* Is no session holding the tenant's lock?  Probes without waiting. */
bool
cm_tenant_lock_free(const char *tenant)
{
	LOCKTAG		tag;
	LockAcquireResult r;

	tenant_locktag(&tag, tenant);
	r = LockAcquire(&tag, ExclusiveLock, true, true);
	if (r == LOCKACQUIRE_NOT_AVAIL)
		return false;
	LockRelease(&tag, ExclusiveLock, true);
	return r == LOCKACQUIRE_OK;
}

/*
 * Run a statement that takes a strong lock on a table the application uses
 * (a trigger, a foreign key, a drop that reaches shared tables): in a
 * subtransaction with a short lock_timeout, retried with back-off.  A lock
 * request waiting behind a long transaction would queue every writer of
 * the table behind it; a short timeout keeps that wait brief.
 */
pg_attribute_unused()
static const char *
lock_mode_sql(LOCKMODE mode)
{
	switch (mode)
	{
		case AccessShareLock:
			return "ACCESS SHARE";
		case RowShareLock:
			return "ROW SHARE";
		case RowExclusiveLock:
			return "ROW EXCLUSIVE";
		case ShareUpdateExclusiveLock:
			return "SHARE UPDATE EXCLUSIVE";
		case ShareLock:
			return "SHARE";
		case ShareRowExclusiveLock:
			return "SHARE ROW EXCLUSIVE";
		case ExclusiveLock:
			return "EXCLUSIVE";
		default:
			return "ACCESS EXCLUSIVE";
	}
}

/*
 * Autovacuum workers holding a lock on one of the relations that conflicts
 * with mode.  One that is not preventing wraparound is cancelled, as the
 * lock manager itself would do after deadlock_timeout (SIGINT; it gives its
 * locks up at once), and the server log says so; one that is preventing
 * wraparound must not be: true is returned, and the caller waits outside
 * the lock queue.
 */
static bool
clear_autovacuum(List *relids, LOCKMODE mode)
{
	ListCell   *lc;
	bool		wraparound = false;

	foreach(lc, relids)
	{
		LOCKTAG		tag;
		VirtualTransactionId *vxids;

		SET_LOCKTAG_RELATION(tag, MyDatabaseId, lfirst_oid(lc));
		vxids = GetLockConflicts(&tag, mode, NULL);
		for (; VirtualTransactionIdIsValid(*vxids); vxids++)
		{
			PGPROC	   *proc = BackendIdGetProc(vxids->backendId);
			uint8		flags;
			int			pid;

			if (proc == NULL)
				continue;
			LWLockAcquire(ProcArrayLock, LW_SHARED);
			flags = ProcGlobal->statusFlags[proc->pgxactoff];
			pid = proc->pid;
			LWLockRelease(ProcArrayLock);
			if (!(flags & PROC_IS_AUTOVACUUM) || pid == 0)
				continue;
			if (flags & PROC_VACUUM_FOR_WRAPAROUND)
			{
				wraparound = true;
				continue;
			}
			ereport(LOG,
					(errmsg("clinic_migrate: canceling autovacuum (pid %d) to lock %s", pid,
							cm_qualified_relname(lfirst_oid(lc))),
					 errdetail("A step of a migration needs the table; autovacuum will come back to it.")));
			if (kill(pid, SIGINT) < 0)
				ereport(LOG,
						(errmsg("clinic_migrate: could not send a signal to process %d: %m", pid)));
		}
	}
	return wraparound;
}

/* the sessions holding locks on the relations, and what they are doing, for an error */
static char *
lock_holders(List *relids)
{
	StringInfoData buf;
	ListCell   *lc;
	int			n = 0;

	initStringInfo(&buf);
	foreach(lc, relids)
	{
		LOCKTAG		tag;
		VirtualTransactionId *vxids;

		SET_LOCKTAG_RELATION(tag, MyDatabaseId, lfirst_oid(lc));
		vxids = GetLockConflicts(&tag, AccessExclusiveLock, NULL);
		for (; VirtualTransactionIdIsValid(*vxids) && n < 10; vxids++)
		{
			PGPROC	   *proc = BackendIdGetProc(vxids->backendId);

			if (proc == NULL)
				continue;
			/*
			 * No query text: this error is kept in job_queue and runs, which
			 * roles that may not see another role's statements can read.
			 */
			appendStringInfo(&buf, "%spid %d on %s", n ? "; " : "", proc->pid,
							 cm_qualified_relname(lfirst_oid(lc)));
			n++;
		}
	}
	return n ? buf.data : NULL;
}

/* one attempt of run_with_lock_retry, in its subtransaction */
typedef struct LockAttempt
{
	const char *sql;
	List	   *relids;
	LOCKMODE	mode;
	int			timeout_ms;
	int			waiting;		/* index in relids of the lock being waited for */
} LockAttempt;

static void
lock_attempt(void *arg)
{
	LockAttempt *a = arg;
	int			nest = NewGUCNestLevel();
	char		timeout[32];

	snprintf(timeout, sizeof(timeout), "%d", a->timeout_ms);
	(void) set_config_option("lock_timeout", timeout, PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	if (a->sql == NULL)
	{
		ListCell   *lc;

		/*
		 * From C, not LOCK TABLE: that would ask the caller for UPDATE or
		 * DELETE rights it need not have (the step checked what it needs,
		 * such as TRIGGER).
		 */
		TimestampTz start = GetCurrentTimestamp();

		/*
		 * One budget for the attempt, not one per table: a writer queued
		 * behind the first table waits for the whole attempt, which must
		 * stay within timeout_ms.
		 */
		foreach(lc, a->relids)
		{
			long		left;

			a->waiting = foreach_current_index(lc);
			if (ConditionalLockRelationOid(lfirst_oid(lc), a->mode))
				continue;
			left = a->timeout_ms - TimestampDifferenceMilliseconds(start, GetCurrentTimestamp());
			if (left <= 0)
				ereport(ERROR,
						(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
						 errmsg("could not obtain lock on relation \"%s\"",
								get_rel_name(lfirst_oid(lc)))));
			snprintf(timeout, sizeof(timeout), "%ld", left);
			(void) set_config_option("lock_timeout", timeout, PGC_USERSET, PGC_S_SESSION,
									 GUC_ACTION_SAVE, true, 0, false);
			LockRelationOid(lfirst_oid(lc), a->mode);
		}
	}
	else if (SPI_execute(a->sql, false, 0) < 0)
		elog(ERROR, "clinic_migrate: SPI error in \"%s\"", a->sql);
	AtEOXact_GUC(true, nest);
}

/*
 * The retry loop behind cm_ddl_with_retry and cm_lock_relations: the
 * statement runs in a subtransaction with lock_timeout at
 * clinic_migrate.lock_timeout; a lock timeout rolls the subtransaction
 * back (every lock it took goes with it), backs off with jitter and tries
 * again, for clinic_migrate.lock_retry_time in all, then fails with 55P03
 * naming who holds the tables.  With the relations known, a blocking
 * autovacuum is cancelled first (or, preventing wraparound, waited for
 * outside the lock queue).
 *
 * Relations are locked in list order, so an attempt waits for one while it
 * holds the ones before it.  A writer holding the awaited table may want
 * one of those next (a foreign key check locks the parent after the child;
 * an application takes its tables in its own order): neither can go on
 * until our lock_timeout gives up.  The table an attempt gave up on is
 * locked first in the next one, so the order learns the writers' order and
 * the same cycle does not come back.
 */
static bool
run_with_lock_retry(const char *sql, List *relids, LOCKMODE mode, int timeout_ms, int max_attempts)
{
	int			delay_ms = 10;
	int			attempts = 0;
	TimestampTz give_up = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													   (int64) cm_lock_retry_time * 1000);
	LockAttempt attempt = {sql, list_copy(relids), mode, timeout_ms, 0};

	for (;;)
	{
		/*
		 * A step that may give up (max_attempts) is one that can wait for a
		 * quieter moment: it never cancels an autovacuum.
		 */
		if (relids != NIL && max_attempts == 0 && clear_autovacuum(relids, mode))
		{
			/* an anti-wraparound vacuum: never queue behind it, wait it out */
			pgstat_report_activity(STATE_RUNNING,
								   "clinic_migrate: waiting for an autovacuum preventing wraparound");
		}
		else
		{
			ErrorData  *failed = cm_try_in_subxact(lock_attempt, &attempt);

			if (failed == NULL)
				return true;
			if (failed->sqlerrcode != ERRCODE_LOCK_NOT_AVAILABLE)
			{
				/* the user's error, not our statement's text */
				cm_hide_internal_sql(failed);
				ReThrowError(failed);
			}
			FreeErrorData(failed);
			if (attempt.waiting > 0)
			{
				Oid			first = list_nth_oid(attempt.relids, attempt.waiting);

				attempt.relids = list_delete_nth_cell(attempt.relids, attempt.waiting);
				attempt.relids = lcons_oid(first, attempt.relids);
			}
		}
		if (max_attempts > 0 && ++attempts >= max_attempts)
			return false;
		if (GetCurrentTimestamp() >= give_up)
		{
			char	   *holders = relids != NIL ? lock_holders(relids) : NULL;

			ereport(ERROR,
					(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
					 errmsg("could not lock the tables this step needs within clinic_migrate.lock_retry_time (%d s)",
							cm_lock_retry_time),
					 holders ? errdetail("Held by: %s.", holders) :
					 errdetail("Each attempt waited at most %d ms; nothing was changed.", timeout_ms),
					 errhint("A long transaction holds a lock on a table this step needs; "
							 "try again when it has finished (pg_locks and pg_stat_activity show it), or raise clinic_migrate.lock_retry_time.")));
		}
		pgstat_report_activity(STATE_RUNNING,
							   "clinic_migrate: waiting for a lock (retrying with back-off)");
		/* back off, with jitter: writers that collided with us need not collide again */
		pg_usleep((delay_ms + (long) pg_prng_uint64_range(&pg_global_prng_state, 0, delay_ms)) * 1000L);
		CHECK_FOR_INTERRUPTS();
		delay_ms = Min(delay_ms * 2, 1000);
	}
}

void
cm_ddl_with_retry(const char *sql)
{
	(void) run_with_lock_retry(sql, NIL, NoLock, cm_lock_timeout, 0);
}

void
cm_lock_relations(List *relids, LOCKMODE mode, bool tenant_tables)
{
	if (relids == NIL)
		return;
	(void) run_with_lock_retry(NULL, relids, mode,
							   tenant_tables ? cm_cutover_max_pause : cm_lock_timeout, 0);
}

bool
cm_try_lock_relations(List *relids, LOCKMODE mode, int attempts)
{
	if (relids == NIL)
		return true;
	return run_with_lock_retry(NULL, relids, mode, cm_lock_timeout, Max(attempts, 1));
}

static void
vxact_wait(void *arg)
{
	(void) VirtualXactLock(*(VirtualTransactionId *) arg, true);
}

bool
cm_wait_for_vxact(VirtualTransactionId vxid, int timeout_ms)
{
	int			nest;
	char		buf[16];
	ErrorData  *failed;

	if (timeout_ms <= 0)
		return VirtualXactLock(vxid, false);
	nest = NewGUCNestLevel();
	snprintf(buf, sizeof(buf), "%d", timeout_ms);
	(void) set_config_option("lock_timeout", buf, PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	failed = cm_try_in_subxact(vxact_wait, &vxid);
	AtEOXact_GUC(true, nest);
	if (failed == NULL)
		return true;
	if (failed->sqlerrcode != ERRCODE_LOCK_NOT_AVAILABLE)
		ReThrowError(failed);
	FreeErrorData(failed);
	return false;
}

/*
 * A table rewritten by a schema change (ALTER COLUMN TYPE, ADD COLUMN with a
 * volatile default) gets new rows stamped with the rewriting transaction:
 * to a snapshot taken before it committed, the table looks empty (the
 * rewrite is not MVCC-safe).  A copy batch or a replay round whose snapshot
 * predates such a change would copy nothing, or take logged rows for
 * deleted.  Each relation is locked (ACCESS SHARE, kept to the end of the
 * transaction, as the batch or round would lock it when reading it: no
 * rewrite can come after this), then its pg_class row is compared with the
 * active snapshot: true when any was changed by a transaction the snapshot
 * does not see.  Callers pass only the tables they are about to read.
 */
bool
cm_relations_changed_since_snapshot(List *relids, List *written)
{
	Snapshot	snap = GetActiveSnapshot();
	ListCell   *lc;
	bool		changed = false;

	/*
	 * The tables the caller writes next in the mode it writes them in: an
	 * ACCESS SHARE now, upgraded to ROW EXCLUSIVE later, would deadlock with
	 * a step that holds SHARE ROW EXCLUSIVE and waits for ACCESS EXCLUSIVE.
	 */
	int			nread = list_length(relids);

	/*
	 * The tables read first, then those written, as the statements that
	 * follow take them: a deploy holding a shared table and waiting for its
	 * copy must not find the copy already ours.
	 */
	relids = list_concat_copy(relids, written);
	foreach(lc, relids)
	{
		Oid			relid = lfirst_oid(lc);
		HeapTuple	tup;

		if (!OidIsValid(relid))
			continue;
		LockRelationOid(relid, foreach_current_index(lc) < nread ? AccessShareLock : RowExclusiveLock);
		tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
		if (!HeapTupleIsValid(tup))
			continue;
		if (XidInMVCCSnapshot(HeapTupleHeaderGetXmin(tup->t_data), snap))
			changed = true;
		ReleaseSysCache(tup);
	}
	return changed;
}
