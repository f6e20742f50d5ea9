/*-------------------------------------------------------------------------
 * util.h
 *	  Floor 1 (base): small helpers every floor above uses: tenant
 *	  arguments, the tenant's schema name, identifier quoting and qualified
 *	  operators, stable output and planner settings, subtransactions.
 *	  May call: settings.
 *-------------------------------------------------------------------------
 */
#ifndef CM_UTIL_H
#define CM_UTIL_H

#include "postgres.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "nodes/pg_list.h"

#include "settings.h"

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

/* tenant argument: not NULL, not empty, not too long, valid encoding */
extern char *cm_tenant_arg(FunctionCallInfo fcinfo, int argno);

/* schema name for a tenant under a template: safe, unique, <= 63 bytes */
extern char *cm_schema_name_for(const char *tenant, const char *template);

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

/*
 * session_replication_role = replica until cm_restore_output_settings: the
 * application's triggers (ENABLE, not ALWAYS) and foreign-key checks do not
 * fire for our writes of rows written, checked and triggered already.
 */
extern int	cm_set_replica(void);

/* "schema"."table" for a relation OID, quoted */
extern char *cm_qualified_relname(Oid relid);

/*
 * "ONLY " before a table name in a scan or DELETE of one table's rows (an
 * inheritance parent's own rows), "" for a partitioned table, whose rows
 * are all in its partitions: ONLY would find none.
 */
extern const char *cm_only(Oid relid);

/*
 * An error raised inside a statement clinic_migrate built: its text is
 * ours, not the user's (the "SQL statement" context line and the internal
 * query go); the message, detail and hint stay.
 */
struct ErrorData;
extern void cm_hide_internal_sql(struct ErrorData *edata);

/*
 * In a PG_CATCH of such a statement: the error again, without our text
 * (cxt: the memory context from before the PG_TRY).
 */
extern void cm_rethrow_without_internal_sql(MemoryContext cxt) pg_attribute_noreturn();

/* the partitions of a partitioned table, at every level (not relid); NIL otherwise */
extern List *cm_partitions_of(Oid relid);

/* a ParamListInfo of non-null constants, for SPI_execute_extended */
struct ParamListInfoData;
extern struct ParamListInfoData *cm_param_list(int n, Oid *types, Datum *values);

/* a comma separated list of quoted identifiers */
extern void cm_append_quoted_list(StringInfo buf, List *names, const char *prefix);

/*
 * Run fn(arg) in a subtransaction: NULL if it succeeded, else its error
 * (copied into the caller's memory context), the subtransaction rolled
 * back with every lock it took.
 */
struct ErrorData;
extern struct ErrorData *cm_try_in_subxact(void (*fn) (void *arg), void *arg);

/*
 * "left OPERATOR(nsp.=) right": the default equality operator of ltype,
 * schema-qualified, with casts where rtype differs, so that the comparison
 * means the same whatever the search_path.
 */
extern void cm_append_eq(StringInfo buf, const char *left, Oid ltype,
						 const char *right, Oid rtype);

/* the text of the n bound values of a key, in the caller's memory context */
extern void cm_bound_from_spi(int nb, const Oid *types, Datum *values, char **out, MemoryContext cxt);

#endif
