/*-------------------------------------------------------------------------
 * queue.h
 *	  The job queue: enqueue, cancel, wait, pause; and what a worker that
 *	  runs a job records of it.
 *-------------------------------------------------------------------------
 */
#ifndef CM_QUEUE_H
#define CM_QUEUE_H

#include "postgres.h"

#include "worker.h"

/* the action of a job's name, or 0 */
extern CmAction cm_action_from_name(const char *name);

/*
 * Record how a job ended, in a transaction of its own (none may be open):
 * done with the action's results; or, given the error, failed, cancelled,
 * or queued again (a transient error with attempts left, after a back-off;
 * an interruption by shutdown, at once).
 */
extern void cm_job_finish(CmWorkerShared *sh, ErrorData *edata);

/*
 * Run an action for the calling session: through the queue when the
 * database's scheduler runs (and the queue is not paused), waiting for the
 * job; else in a worker of its own.  Either way *result holds what the
 * action reported; errors are raised.
 */
extern void cm_run_action(CmWorkerShared *req, CmWorkerShared *result);

#endif
