/*-------------------------------------------------------------------------
 * runstate.h
 *	  Floor 1 (base): the state of the run this process does for a tenant
 *	  (an action: migrate, validate, cutover, rollback, finalize), shared
 *	  with whoever waits for it.  The actions (floor 5) publish their
 *	  progress in it and stop at a boundary when cm_got_sigterm is set; the
 *	  machinery of floor 6 creates it, starts the worker and reads it back.
 *	  Also the pause points of the tests, which report through it.
 *	  May call: settings, util.
 *-------------------------------------------------------------------------
 */
#ifndef CM_RUNSTATE_H
#define CM_RUNSTATE_H

#include "postgres.h"
#include <signal.h>
#include "storage/backendid.h"
#include "storage/spin.h"

#include "settings.h"

typedef enum CmAction
{
	CMA_MIGRATE = 1,
	CMA_VALIDATE,
	CMA_CUTOVER,
	CMA_ROLLBACK,
	CMA_FINALIZE,
	CMA_SCHEMA_CHANGE,			/* a fan_out version in a finalized tenant's schema */
	CMA_INDEX					/* CREATE INDEX CONCURRENTLY on a moving tenant's copies */
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

/* the shared state of the action this worker runs (NULL elsewhere) */
extern CmWorkerShared *cm_worker_shared;

/* set by SIGTERM: long loops stop at their next boundary */
extern volatile sig_atomic_t cm_got_sigterm;

/*
 * A named point where clinic_migrate code stops while a session holds
 * pg_advisory_lock(hashtext('clinic_migrate:<name>')), if <name> is listed
 * in clinic_migrate.pause_points (superuser only; for tests of races).
 */
extern void cm_pause_point(const char *name);

/* wait until the session holding a pause point lets it go (the worker's caller) */
extern void cm_pause_point_follow(const char *name);

#endif
