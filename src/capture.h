/*-------------------------------------------------------------------------
 * capture.h
 *	  Change capture on the shared tables while tenants move.
 *-------------------------------------------------------------------------
 */
#ifndef CM_CAPTURE_H
#define CM_CAPTURE_H

#include "postgres.h"
#include "plan.h"

/* capture mode of a tenant, as the triggers see it */
#define CM_MODE_NONE	0
#define CM_MODE_CAPTURE 'c'		/* copying or in sync: log its changes */

/*
 * Set while this backend applies captured changes itself: its own writes
 * must not be captured again.
 */
extern bool cm_applying;

/* name of the log table of a shared table */
extern char *capture_log_name(Oid source);

/*
 * Create the log tables and triggers that are missing for the planned
 * tables.  Each trigger is created in a subtransaction with a short
 * lock_timeout, retried with back-off, so that it never queues the
 * application's writers behind a long transaction.
 */
extern void capture_install(TenantPlan *plan);

/* tell every backend that the set of captured tenants changed (at commit) */
extern void capture_tenants_changed(void);

/*
 * Wait until every transaction that may have written a planned table before
 * capture of a tenant began has ended: after that, every write of the
 * tenant's rows is captured.
 */
extern void capture_wait_for_writers(TenantPlan *plan);

#endif
