/*-------------------------------------------------------------------------
 * worker.h
 *	  The dynamic background worker that copies a tenant, and the state it
 *	  shares with the session that started it.
 *-------------------------------------------------------------------------
 */
#ifndef CM_WORKER_H
#define CM_WORKER_H

#include "postgres.h"
#include "storage/spin.h"

#include "clinic_migrate.h"

typedef enum CmWorkerState
{
	CMW_STARTING = 0,
	CMW_RUNNING,
	CMW_DONE,
	CMW_FAILED
} CmWorkerState;

/* lives in a DSM segment created by migrate_tenant */
typedef struct CmWorkerShared
{
	slock_t		mutex;
	/* set by the caller */
	Oid			dboid;
	int			caller_pid;		/* whose latch to set when the copy is done */
	Oid			sessionoid;		/* connects as the caller's session user... */
	Oid			useroid;		/* ...and acts as its current role */
	CmSettings	settings;
	char		tenant[CM_MAX_TENANT_LEN + 1];
	char		started_by[NAMEDATALEN];
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
	int			sqlerrcode;
	char		errmsg[1024];
	char		errdetail[1024];
	char		errhint[1024];
} CmWorkerShared;

extern void cm_worker_init(void);

/* set by SIGTERM: the copy stops at the next batch boundary */
extern volatile sig_atomic_t cm_got_sigterm;

/* progress of the current run, published for the waiting session */
extern void cm_worker_progress(CmWorkerShared *sh);

#endif
