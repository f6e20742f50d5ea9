/*-------------------------------------------------------------------------
 * worker.h
 *	  Background workers: the action worker that runs one long step for one
 *	  tenant (copy, cutover, rollback after cutover, finalize) for the
 *	  session that started it, and the sync worker that keeps every copied
 *	  or cut-over tenant of a database in step.
 *	  Floor 6 (where an action runs).  May include: floors 1 to 5, jobs.
 *-------------------------------------------------------------------------
 */
#ifndef CM_WORKER_H
#define CM_WORKER_H

#include "postgres.h"
#include "storage/spin.h"
#include "storage/lock.h"
#include "postmaster/bgworker.h"
#include "storage/dsm.h"

#include "runstate.h"

/*
 * Fill in who starts an action (database, roles, settings) for a worker
 * that acts for the current session.
 */
extern void cm_worker_request_init(CmWorkerShared *req, CmAction action, const char *tenant);

/*
 * Start a worker for the request and wait for it, relaying progress for a
 * copy; raises its error.  Cancelling the caller stops the worker.
 */
extern void cm_run_in_worker(CmWorkerShared *req, CmWorkerShared *result);


/*
 * The definition of an action worker for the request in seg (a DSM segment
 * holding a CmWorkerShared), which notifies this process of its start and
 * exit; name is what logs and pg_stat_activity call it.
 */
extern void cm_action_worker_define(BackgroundWorker *worker, dsm_segment *seg, const char *name);

/* start the database's sync worker unless one runs; false if none could start */
extern bool cm_start_sync_worker(void);

/* error unless called outside a transaction block (the action commits as it goes) */
extern void cm_require_no_transaction_block(const char *what);

#endif
