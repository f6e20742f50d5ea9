/*-------------------------------------------------------------------------
 * clinic_migrate.h
 *	  Settings and small helpers shared by every part of clinic_migrate:
 *	  tenant argument checks, the tenant's schema name, the per-tenant
 *	  migration lock, and stable output settings for text renderings.
 *-------------------------------------------------------------------------
 */
#ifndef CLINIC_MIGRATE_H
#define CLINIC_MIGRATE_H

#include "postgres.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "nodes/pg_list.h"
#include "storage/lockdefs.h"

#define CM_SCHEMA "clinic_migrate"

/*
 * The relations of a schema (ns: an SQL expression of its OID), through
 * their dependency on it: pg_depend's reference index finds them, where a
 * test of pg_class.relnamespace reads all of pg_class, which every tenant
 * schema makes longer.  (Every relation depends on its schema, unless the
 * schema is pinned, as pg_catalog is; public is not.)
 */
#define CM_RELS_OF_NAMESPACE(ns) \
	"(SELECT d.objid FROM pg_catalog.pg_depend d " \
	"WHERE d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_namespace'::pg_catalog.regclass " \
	"AND d.refobjid OPERATOR(pg_catalog.=) " ns " AND d.refobjsubid OPERATOR(pg_catalog.=) 0 " \
	"AND d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass " \
	"AND d.deptype OPERATOR(pg_catalog.=) 'n')"

/* settings (clinic_migrate.*) */
extern char *cm_source_schema;
extern char *cm_tenant_column;
extern char *cm_schema_template;
extern char *cm_registry_table;
extern int	cm_batch_size;
extern int	cm_progress_interval;
extern int	cm_batch_delay;
extern int	cm_sync_interval;
extern int	cm_cutover_max_lag;
extern int	cm_cutover_max_pause;
extern bool cm_shared_foreign_keys;
extern int	cm_cutover_attempts;
extern int	cm_cutover_wait;
extern int	cm_archive_batch_size;
extern int	cm_lock_timeout;
extern int	cm_lock_retry_time;
extern char *cm_archive_schema;
extern char *cm_registry_schema_column;
extern char *cm_registry_status_column;
extern char *cm_pause_points;
extern int	cm_max_rows_per_second;
extern int	cm_max_replication_lag;
extern int	cm_alert_migration_time;
extern int	cm_alert_lag_seconds;
extern int	cm_alert_lag_changes;

/* the longest tenant id we accept (bytes); longer ids are rejected cleanly */
#define CM_MAX_TENANT_LEN 1024

/* settings a migration runs with, fixed when it starts */
typedef struct CmSettings
{
	char		source_schema[NAMEDATALEN];
	char		tenant_column[NAMEDATALEN];
	char		schema_template[NAMEDATALEN * 2];
	char		registry_table[NAMEDATALEN];
	int			batch_size;
	int			batch_delay;
	int			sync_interval;
	int			cutover_max_lag;
	int			cutover_max_pause;
	int			cutover_attempts;
	int			cutover_wait;
	int			archive_batch_size;
	char		archive_schema[NAMEDATALEN];
	char		registry_schema_column[NAMEDATALEN];
	char		registry_status_column[NAMEDATALEN];
	char		pause_points[256];
	int			lock_timeout;
	int			lock_retry_time;
	bool		shared_foreign_keys;
} CmSettings;

extern void cm_current_settings(CmSettings *s);

/* make a worker's clinic_migrate.* settings those of the session that started it */
extern void cm_apply_settings(const CmSettings *s);

/*
 * A named point where clinic_migrate code stops while a session holds
 * pg_advisory_lock(hashtext('clinic_migrate:<name>')), if <name> is listed
 * in clinic_migrate.pause_points (superuser only; for tests of races).
 */
extern void cm_pause_point(const char *name);

/* wait until the session holding a pause point lets it go (the worker's caller) */
extern void cm_pause_point_follow(const char *name);

/* tenant argument: not NULL, not empty, not too long, valid encoding */
extern char *cm_tenant_arg(FunctionCallInfo fcinfo, int argno);

/* schema name for a tenant under a template: safe, unique, <= 63 bytes */
extern char *cm_schema_name_for(const char *tenant, const char *template);

/*
 * The per-tenant migration lock: a session-level advisory lock in a key
 * space of its own (field4 = CM_LOCK_FIELD4) so that it never collides with
 * the application's advisory locks.  Held by whoever copies or rolls back a
 * tenant; a crash releases it.
 */
#define CM_LOCK_FIELD4 0x434D
extern bool cm_lock_tenant(const char *tenant, bool wait, bool session);
extern void cm_unlock_tenant(const char *tenant, bool session);
extern bool cm_tenant_lock_free(const char *tenant);

/*
 * Two more locks per tenant, in key spaces of their own: the apply lock
 * (transaction-level) serializes replay rounds with rollback; the sync
 * lock (session-level) is held by the worker that keeps a copied tenant in
 * sync, so its presence can be seen.
 */
#define CM_LOCK_APPLY	(CM_LOCK_FIELD4 + 1)
#define CM_LOCK_SYNC	(CM_LOCK_FIELD4 + 2)
extern bool cm_lock_tenant_kind(const char *tenant, int kind, bool wait, bool session);
extern void cm_unlock_tenant_kind(const char *tenant, int kind, bool session);
extern bool cm_tenant_lock_kind_free(const char *tenant, int kind);
extern void cm_tenant_lock_key(const char *tenant, uint32 *hi, uint32 *lo);

/*
 * The tenant's write lock (transaction-level): every write of a moving
 * tenant's rows takes it in ROW EXCLUSIVE mode through the capture
 * triggers; cutover and rollback take it EXCLUSIVE for their pause, which
 * makes the tenant's writers, and only them, wait.  Its tag is a relation
 * tag on the OID of the tenant's schema (no relation has it), so that the
 * writers' mode goes through the lock manager's per-backend fast path, as
 * a table's ROW EXCLUSIVE does, and cutover's EXCLUSIVE request moves them
 * to the shared table and waits for them, as it would for a table.
 * Returns true when this transaction did not hold it yet.
 */
extern bool cm_tenant_write_lock(Oid schema_oid, bool exclusive);

/* the database's sync worker lock (session-level): one sync worker per database */
extern bool cm_lock_sync_worker(bool session);
extern bool cm_sync_worker_running(void);

/*
 * Output settings that make text renderings independent of the session:
 * returns a GUC nest level to hand to cm_restore_output_settings.
 */
extern int	cm_stable_output_settings(void);
extern void cm_restore_output_settings(int nestlevel);

/*
 * Planner settings for statements driven by a small set of keys (replay,
 * the checks of the pause): nested loops with index probes, whatever the
 * sizes of the tables; no JIT.  Returns a GUC nest level to pass to
 * AtEOXact_GUC(true, ...) or cm_restore_output_settings.
 */
extern int	cm_replay_plan_settings(void);

/* "schema"."table" for a relation OID, quoted */
extern char *cm_qualified_relname(Oid relid);

/*
 * Run DDL that locks a table the application uses with a short
 * lock_timeout in a subtransaction, retried with back-off (SPI connected).
 */
extern void cm_ddl_with_retry(const char *sql);

/* a ParamListInfo of non-null constants, for SPI_execute_extended */
struct ParamListInfoData;
extern struct ParamListInfoData *cm_param_list(int n, Oid *types, Datum *values);

/* a comma separated list of quoted identifiers */
extern void cm_append_quoted_list(StringInfo buf, List *names, const char *prefix);

/*
 * "left OPERATOR(nsp.=) right": the default equality operator of ltype,
 * schema-qualified, with casts where rtype differs, so that the comparison
 * means the same whatever the search_path.
 */
/*
 * Lock every relation of the list in one LOCK TABLE statement, retried
 * with back-off like cm_ddl_with_retry: a failed attempt releases all of
 * them, so no lock is held while waiting for another across attempts, and
 * the DDL that follows never waits.  Each attempt waits at most
 * clinic_migrate.lock_timeout for shared tables (every tenant's writers
 * queue behind it), clinic_migrate.cutover_max_pause for a tenant's own
 * tables (tenant_tables: only that tenant's writers do).
 */
extern void cm_lock_relations(List *relids, LOCKMODE mode, bool tenant_tables);

/*
 * Run fn(arg) in a subtransaction: NULL if it succeeded, else its error
 * (copied into the caller's memory context), the subtransaction rolled
 * back with every lock it took.
 */
struct ErrorData;
extern struct ErrorData *cm_try_in_subxact(void (*fn) (void *arg), void *arg);

extern void cm_append_eq(StringInfo buf, const char *left, Oid ltype,
						 const char *right, Oid rtype);

#endif
