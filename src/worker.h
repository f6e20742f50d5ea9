/*-------------------------------------------------------------------------
 * worker.h
 *	  Background workers: the action worker that runs one long step for one
 *	  tenant (copy, cutover, rollback after cutover, finalize) for the
 *	  session that started it, and the sync worker that keeps every copied
 *	  or cut-over tenant of a database in step.
 *-------------------------------------------------------------------------
 */
#ifndef CM_WORKER_H
#define CM_WORKER_H

#include "postgres.h"
#include "storage/spin.h"
#include "storage/lock.h"

#include "clinic_migrate.h"

typedef enum CmAction
{
	CMA_MIGRATE = 1,
	CMA_VALIDATE,
	CMA_CUTOVER,
	CMA_ROLLBACK,
	CMA_FINALIZE
} CmAction;

extern const char *cm_action_name(CmAction action);

typedef enum CmWorkerState
{
	CMW_STARTING = 0,
	CMW_RUNNING,
	CMW_DONE,
	CMW_FAILED
} CmWorkerState;

/* lives in a DSM segment created by whoever starts the worker */
typedef struct CmWorkerShared
{
	slock_t		mutex;
	/* set by the starter */
	CmAction	action;
	Oid			dboid;
	int			caller_pid;		/* whose latch to set when the action is done */
	Oid			sessionoid;		/* connects as the caller's session user... */
	Oid			useroid;		/* ...and acts as its current role */
	CmSettings	settings;
	char		tenant[CM_MAX_TENANT_LEN + 1];
	char		started_by[NAMEDATALEN];
	int64		job_id;			/* the queue job it runs, 0 for none */
	bool		archive;		/* finalize: archive (true) or delete the shared rows */
	/* set by the worker, read under mutex */
	CmWorkerState state;
	bool		resumed;
	char		schema[NAMEDATALEN];
	int			tables_total;
	int			tables_done;
	int64		rows_total;
	int64		rows_done;		/* this run */
	int64		rows_before;	/* copied by earlier runs */
	char		current_table[NAMEDATALEN];
	int64		table_rows_total;
	int64		table_rows_done;
	/* cutover and rollback after cutover */
	int			attempts;
	double		pause_ms;
	int64		keys_drained;
	int64		rows_validated;
	bool		did;			/* rollback: there was something to roll back */
	char		pause_point[64];	/* tests: the pause point the worker is held at */
	BackendId	wait_backend;	/* the transaction the worker waits for, if any... */
	LocalTransactionId wait_lxid;	/* ...which the caller then waits for too */
	/* the error, if the action failed */
	int			sqlerrcode;
	char		errmsg[1024];
	char		errdetail[1024];
	char		errhint[1024];
} CmWorkerShared;

extern void cm_worker_init(void);

/* the shared state of the action this worker runs (NULL elsewhere) */
extern CmWorkerShared *cm_worker_shared;

/* set by SIGTERM: long loops stop at their next boundary */
extern volatile sig_atomic_t cm_got_sigterm;

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

/* progress of the current run, published for the waiting session */
extern void cm_worker_progress(CmWorkerShared *sh);

/* start the database's sync worker unless one runs; false if none could start */
extern bool cm_start_sync_worker(void);

/* error unless called outside a transaction block (the action commits as it goes) */
extern void cm_require_no_transaction_block(const char *what);

#endif
