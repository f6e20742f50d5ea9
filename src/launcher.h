/*-------------------------------------------------------------------------
 * launcher.h
 *	  The scheduler of each configured database (clinic_migrate.databases,
 *	  with clinic_migrate in shared_preload_libraries): it works the job
 *	  queue with up to clinic_migrate.max_workers workers, finds the jobs of
 *	  workers that died, and takes requests from sessions.
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

/* queue.c: a job row (SPI connected); the queue's pause flag */
extern int64 cm_job_insert(const char *tenant, CmAction action, int priority,
						   TimestampTz not_before, bool archive, Oid run_as,
						   Oid session_role);

/* does job_queue have session_role (version 0.2 on)? */
extern bool cm_job_queue_has_session_role(void);
extern bool cm_queue_paused(void);

#endif
