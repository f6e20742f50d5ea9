/*-------------------------------------------------------------------------
 * state.h
 *	  Access to clinic_migrate's own tables (tenants, tenant_tables, runs).
 *-------------------------------------------------------------------------
 */
#ifndef CM_STATE_H
#define CM_STATE_H

#include "postgres.h"

/*
 * Run a statement on clinic_migrate's tables as the extension's owner, so
 * that a migration role needs EXECUTE on the functions but no privilege on
 * the state tables.  SPI must be connected.  Returns the SPI result code.
 */
extern int	cm_state_exec(const char *sql, int nargs, Oid *argtypes,
						  Datum *values, const char *nulls, long count);

/* act as the extension owner until cm_owner_end (nests; errors unwind it) */
extern void cm_owner_begin(Oid *save_userid, int *save_sec);
extern void cm_owner_end(Oid save_userid, int save_sec);

/* convenience wrappers for single text/int8 arguments */
extern int	cm_state_exec_tenant(const char *sql, const char *tenant);

/* runs: start one (returns run_id) and finish it */
extern int64 cm_run_start(const char *tenant, const char *schema,
						  const char *action, const char *started_by, int pid);
extern void cm_run_finish(int64 run_id, const char *status, int64 rows,
						  const char *error, const char *sqlstate);

/* mark runs left 'running' by a worker that died as 'interrupted' */
extern int	cm_runs_mark_interrupted(const char *tenant);

/* record a failed copy for a tenant: state 'failed' and the error */
extern void cm_tenant_record_error(const char *tenant, const char *msg);

/* record the last error of a tenant, leaving its state as it is */
extern void cm_tenant_record_last_error(const char *tenant, const char *msg);

/* a worker's transaction: start it with SPI and a snapshot, and commit it */
extern void cm_begin_txn(void);

/* the same in READ COMMITTED: each statement sees what committed before it (after a lock) */
extern void cm_begin_txn_read_committed(void);
extern void cm_end_txn(void);

#endif
