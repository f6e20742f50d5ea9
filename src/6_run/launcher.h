/*-------------------------------------------------------------------------
 * launcher.h
 *	  The scheduler of each configured database (clinic_migrate.databases,
 *	  with clinic_migrate in shared_preload_libraries): it works the job
 *	  queue with up to clinic_migrate.max_workers workers, finds the jobs of
 *	  workers that died, and takes requests from sessions; and
 *	  cm_run_action, which runs a session's action through it (or in a worker
 *	  of its own when none runs).
 *	  Floor 6, its top.  May include: floors 1 to 5, jobs, worker.
 *-------------------------------------------------------------------------
 */
#ifndef CM_LAUNCHER_H
#define CM_LAUNCHER_H

#include "postgres.h"

#include "worker.h"

extern int	cm_max_workers;
extern int	cm_scheduler_interval;
extern char *cm_databases;

/* _PG_init: settings; with preload, shared memory and one scheduler per database */
extern void cm_launcher_init(void);

/* the pid of the database's scheduler, 0 if none runs */
extern int	cm_scheduler_pid(Oid dboid);

/* set the scheduler's latch: something for it to do */
extern void cm_scheduler_wake(Oid dboid);
extern void cm_scheduler_wake_at_commit(void);

/*
 * Ask the scheduler to record a job for req (as the current role) and
 * return its id; raises its error.  The job commits in the scheduler's
 * transaction, so the session can wait for it before its own ends.
 */
extern int64 cm_scheduler_request(Oid dboid, CmWorkerShared *req);

/* ask the scheduler to cancel a job (never raises) */
extern void cm_scheduler_cancel(Oid dboid, int64 job);

/*
 * Run an action for the calling session: through the queue when the
 * database's scheduler runs (and the queue is not paused), waiting for the
 * job; else in a worker of its own.  Either way *result holds what the
 * action reported; errors are raised.
 */
extern void cm_run_action(CmWorkerShared *req, CmWorkerShared *result);

#endif
