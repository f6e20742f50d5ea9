/*-------------------------------------------------------------------------
 * state.h
 *	  Access to clinic_migrate's own tables (tenants, tenant_tables, runs).
 *	  Floor 1 (base).  May include: settings, util, runstate, locks.
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

/*
 * Acting with other rights than the caller's.  Every statement clinic_migrate
 * runs with more rights than its caller runs with search_path pinned to
 * "pg_catalog, pg_temp" (the caller's temp types and functions, and its own
 * schemas, resolve nothing), and names everything else qualified.
 *
 * cm_owner_begin: the extension owner, for clinic_migrate's own tables.
 * cm_table_owner_begin: the owner of a user table, inside a
 *   security-restricted operation (as VACUUM and REFRESH MATERIALIZED VIEW
 *   run): for statements that read or write the application's tables, so
 *   that their triggers, CHECKs, index expressions and operators run with
 *   no more rights than the role that wrote them.
 * cm_role_end: back to the saved role and search_path.  Nests; an error
 * unwinds all of it with the (sub)transaction.
 */
typedef struct CmRoleSave
{
	Oid			userid;
	int			sec;
	int			nest;
} CmRoleSave;

#define CM_SAFE_SEARCH_PATH "pg_catalog, pg_temp"

/*
 * The settings every clinic_migrate background worker's session starts
 * with, whatever the database's or role's settings say: search_path
 * pinned to CM_SAFE_SEARCH_PATH (every name its SQL uses is qualified, and
 * nothing may resolve elsewhere), no statement, lock or idle timeout (its
 * own waits are bounded where they are taken), and its application_name.
 */
extern void cm_bgworker_session(const char *appname);

extern void cm_owner_begin(CmRoleSave *save);
extern void cm_table_owner_begin(Oid relid, CmRoleSave *save);
extern void cm_role_end(CmRoleSave *save);
extern Oid	cm_extension_owner(void);
extern Oid	cm_rel_owner(Oid relid);

/* pin search_path (and jit off) at a new GUC nest level; returns the level to pass to AtEOXact_GUC */
extern int	cm_pin_search_path(void);

/*
 * Error out in a security-restricted operation: work started there (a job,
 * a worker) would run in the session behind it, with more rights.
 */
extern void cm_refuse_in_restricted_operation(void);

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

/*
 * The policies enable_tenant_rls (policies.c) puts on a shared table, by
 * name, and the table's own row level security flags before it changed
 * them, when it did: the clone copies the table's own, not these.  SPI
 * connected.
 */
#define CM_RLS_POLICY		"clinic_migrate_tenant"
#define CM_RLS_OPEN_POLICY	"clinic_migrate_open"
extern bool cm_rls_table_before(Oid relid, bool *rls, bool *force);

#endif
