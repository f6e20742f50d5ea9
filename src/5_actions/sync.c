/*-------------------------------------------------------------------------
 * sync.c
 *	  Floor 5 (actions): one replay round of a tenant, in the direction its
 *	  state calls for (the sync worker of 6_run/worker.c runs them for every
 *	  tenant; sync_now runs one in the caller's session).
 *	  May call: floors 1 to 4.
 *
 * Between its copy and its cutover a tenant's schema must follow every
 * change of its shared rows; between its cutover and its finalize the
 * shared rows must follow every change made in its schema, so that a
 * rollback loses nothing.  Both directions use the same log tables: which
 * direction a tenant's entries go is told by its state (see capture.c).
 *
 * One worker per database does this for every tenant, one replay round per
 * tenant with pending changes every clinic_migrate.sync_interval.  It is
 * started by migrate_tenant and cutover when they finish, by
 * clinic_migrate.start_sync(), and exits when no tenant needs it.  A round
 * is one transaction under the tenant's apply lock, so rounds of the
 * worker, of cutover's drain and of sync_now never overlap for a tenant.
 * A failing round records the error in the tenant's last_error and is
 * tried again next time; nothing is lost meanwhile, the log keeps it.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "access/xlogdefs.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/wait_event.h"

#include "apply.h"
#include "capture.h"
#include "decode.h"
#include "settings.h"
#include "util.h"
#include "locks.h"
#include "runstate.h"
#include "clone.h"
#include "plan.h"
#include "state.h"
#include "sync.h"


int64
cm_sync_tenant_once(const char *tenant)
{
	TenantInfo	info;
	CmSettings	s;
	char	   *t = (char *) tenant;
	TenantPlan *plan;
	int64		applied = 0;

	(void) cm_lock_tenant_kind(tenant, CM_LOCK_APPLY, true, false);
	clone_tenant_info(tenant, &info);
	if (!info.exists)
		return 0;
	if (strcmp(info.state, "copied") != 0 && strcmp(info.state, "cut_over") != 0)
		return 0;
	cm_current_settings(&s);
	plan = clone_plan_for_tenant(&t, &s, CurrentMemoryContext);
	if (strcmp(info.state, "copied") == 0)
		applied = apply_round(tenant, plan, info.schema_name);
	else
		applied = apply_reverse_round(tenant, plan, info.schema_name);
	return applied;
}

int64
cm_sync_tenant_round(const char *tenant)
{
	int64		applied;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	(void) cm_lock_tenant_kind(tenant, CM_LOCK_APPLY, true, false);
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	applied = cm_sync_tenant_once(tenant);
	cm_pause_point("sync_round");
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	return applied;
}

int64
cm_wal_drain(void)
{
	return cm_wal_drain_some(0, NULL);
}

int64
cm_wal_drain_some(int64 max_changes, bool *more)
{
	XLogRecPtr	upto;
	int64		n = 0;

	cm_begin_txn_read_committed();
	upto = capture_wal_read_some(&n, InvalidXLogRecPtr, max_changes, more);
	cm_end_txn();
	/*
	 * The keys must be on disk before the slot forgets them: this worker
	 * may commit with synchronous_commit off, and the slot's new position
	 * is saved at once.
	 */
	if (!XLogRecPtrIsInvalid(upto) && n > 0)
		XLogFlush(XactLastCommitEnd);
	/* tests: the keys are committed, the slot not moved yet */
	if (!XLogRecPtrIsInvalid(upto) && n > 0)
		cm_pause_point("wal_confirm");
	/* the keys are committed: the slot may forget what they came from */
	if (!XLogRecPtrIsInvalid(upto))
	{
		cm_begin_txn_read_committed();
		capture_wal_confirm(upto);
		cm_end_txn();
	}
	return n;
}

bool
cm_wal_cleanup(void)
{
	volatile bool gone = false;
	MemoryContext cxt = CurrentMemoryContext;

	if (!capture_wal_slot_exists(NULL))
		return true;
	PG_TRY();
	{
		cm_begin_txn_read_committed();
		gone = capture_wal_drop_if_unused();
		cm_end_txn();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		ereport(LOG,
				(errmsg("clinic_migrate: the replication slot stays for now: %s", edata->message)));
		FreeErrorData(edata);
	}
	PG_END_TRY();
	return gone;
}

int
cm_capture_cleanup(void)
{
	volatile int n = 0;
	MemoryContext cxt = CurrentMemoryContext;

	PG_TRY();
	{
		cm_begin_txn_read_committed();
		n = capture_uninstall_if_unused();
		cm_end_txn();
		(void) cm_wal_cleanup();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		ereport(LOG,
				(errmsg("clinic_migrate: the capture triggers stay for now: %s", edata->message),
				 errdetail("No tenant needs them; the next rollback, finalize or idle sync worker tries again.")));
		FreeErrorData(edata);
		n = -1;
	}
	PG_END_TRY();
	return n;
}
