/*-------------------------------------------------------------------------
 * jobs.h
 *	  Floor 6, bottom: the rows of the job queue (see jobs.c).
 *	  May include: floors 1 to 5.
 *-------------------------------------------------------------------------
 */
#ifndef CM_JOBS_H
#define CM_JOBS_H

#include "postgres.h"

#include "datatype/timestamp.h"

#include "runstate.h"

/* the action of a job's name, or 0 */
extern CmAction cm_action_from_name(const char *name);

/*
 * Record how a job ended, in a transaction of its own (none may be open):
 * done with the action's results; or, given the error, failed, cancelled,
 * or queued again (a transient error with attempts left, after a back-off;
 * an interruption by shutdown, at once).
 */
extern void cm_job_finish(CmWorkerShared *sh, ErrorData *edata);

/* the state of a job now (a fresh snapshot), NULL if it is gone */
extern char *cm_job_state(int64 job);

/* is a job in this state over (done, failed, cancelled)? */
extern bool cm_job_over(const char *state);

/* a job row (SPI connected); see the function for who it runs as */
extern int64 cm_job_insert(const char *tenant, CmAction action, int priority,
						   TimestampTz not_before, bool archive, Oid run_as,
						   Oid session_role);

/* is the queue paused? (SPI connected) */
extern bool cm_queue_paused(void);

/* does job_queue have session_role (0.2 and later)? */
extern bool cm_job_queue_has_session_role(void);

#endif
