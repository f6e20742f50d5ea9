/*-------------------------------------------------------------------------
 * clone.h
 *	  A tenant's schema: created from the plan, table by table, with the
 *	  structure of the shared tables.
 *	  Floor 3 (the tenant's schema).  May include: floors 1 and 2.
 *-------------------------------------------------------------------------
 */
#ifndef CM_CLONE_H
#define CM_CLONE_H

#include "postgres.h"
#include "plan.h"

/* what clinic_migrate knows of a tenant (the tenants row) */
typedef struct TenantInfo
{
	bool		exists;
	char		schema_name[NAMEDATALEN];
	Oid			schema_oid;
	char		source_schema[NAMEDATALEN];
	char		tenant_column[NAMEDATALEN];
	char		state[32];
	bool		structure_done;
} TenantInfo;

extern void clone_tenant_info(const char *tenant, TenantInfo *info);
extern void clone_check_movable(const char *tenant);

/* settings with the tenant's recorded source schema and tenant column */
extern void clone_settings_for_tenant(const char *tenant, CmSettings *s);

/*
 * The plan a tenant is migrated with (its recorded source schema and tenant
 * column if it has started, else the current settings), and *tenant
 * replaced by its canonical id.  SPI connected; allocated in mcxt.
 */
extern TenantPlan *clone_plan_for_tenant(char **tenant, CmSettings *s, MemoryContext mcxt);
/*
 * The same, but once the tenant is cut over: clone_plan_for_tenant then
 * holds only the tables recorded for it (a table created later without a
 * key, which it could not take, stays shared for it); this one holds every
 * table the catalog would give it (to give it one that has a copy now).
 */
extern TenantPlan *clone_catalog_plan_for_tenant(char **tenant, CmSettings *s, MemoryContext mcxt);
/* the shared tables that have a copy recorded for the tenant, in mcxt (SPI connected) */
extern List *clone_recorded_tables(const char *tenant, MemoryContext mcxt);

/* error (with the GRANT to run) unless the caller may do the whole migration */
extern void clone_check_privileges(TenantPlan *plan, const char *tenant);

/* error unless the tenant has rows in a tenant table or is in the registry */
extern void clone_check_tenant_exists(TenantPlan *plan, const char *tenant);

/*
 * Create the tenant's schema if needed (or check it is clinic_migrate's),
 * create the tables that are missing and record them in tenant_tables.
 * With defer_indexes, new tables get no indexes, keys or foreign keys:
 * clone_finish_table and clone_finish_schema add them after the load.
 */
extern char *clone_prepare_schema(const char *tenant, TenantPlan *plan,
								  const CmSettings *s, bool defer_indexes);

/*
 * A schema made by create_tenant_schema has its keys and foreign keys
 * before any row: a copy in batches would trip over cycles and forward
 * self-references.  If all its tables are still empty, drop their indexes,
 * key constraints and the foreign keys between them (never anything on a
 * shared table); the copy adds them back after the load.  Returns true if
 * it did.
 */
extern bool clone_reset_if_empty(const char *tenant, const char *schema);

/* indexes (and key constraints) of one table that are still missing */
extern void clone_finish_table(PlanTable *pt, const char *schema);

/*
 * The application's triggers of shared table source that target lacks (all,
 * or the one named only), made on target (the copy and replay write as a
 * replica: they fire for the application's writes only); as the current
 * role.
 */
extern void clone_triggers(Oid source, Oid target, const char *only);

/*
 * The views of the source schema over the tenant's planned tables that the
 * tenant's schema lacks (all, or only view only), made there (one that
 * cannot be: a WARNING).
 */
extern void clone_views(TenantPlan *plan, const char *schema, Oid only);

/*
 * The tenant's partition qpart of its partitioned table qparent, made as
 * the shared partition part is (bound: pg_get_expr of its relpartbound),
 * with its own partitions; SPI connected.
 */
extern void clone_one_partition(Oid part, const char *schema, const char *qparent,
								const char *qpart, const char *bound);

/* foreign keys still missing, re-pointed to the tenant's tables */
extern void clone_finish_schema(TenantPlan *plan, const char *schema);

/*
 * The views of the source schema over the tenant's tables, in a transaction
 * that first takes ACCESS SHARE on the shared tables (SPI connected).
 */
extern void clone_finish_views(TenantPlan *plan, const char *schema);
/* the same for one table (views not included) */
extern void clone_table_foreign_keys(TenantPlan *plan, const char *schema, PlanTable *pt);

/* serial and identity sequences of a tenant table set past its keys */
extern void clone_set_sequences(Oid target);

/* a serial or identity sequence owned by a column */
typedef struct OwnedSequence
{
	Oid			seq;
	char	   *column;			/* quoted */
	char	   *name;			/* the column's name, unquoted */
	int64		increment;
	char		identity;		/* clone_owned_sequences: attidentity, or '\0' (serial) */
} OwnedSequence;

/* the sequences a table's columns own (List of OwnedSequence *) */
extern List *clone_owned_sequences(Oid relid);

/*
 * Every sequence a table's columns draw their values from: their identity,
 * a default on a sequence, or a default that draws from a shared table's
 * identity (clinic_migrate.identity_nextval); List of OwnedSequence *.
 */
extern List *clone_column_sequences(Oid relid);

/*
 * Until finalize, new keys in a cut-over tenant's schema come from the
 * shared tables' sequences, so that replaying them into the shared tables
 * never collides with another tenant's keys: serial and identity columns of
 * the tenant's tables are switched to them (cutover), and back to sequences
 * of their own, set past the highest key (finalize).
 */
extern void clone_switch_sequences(TenantPlan *plan, const char *schema);
extern void clone_restore_sequences(TenantPlan *plan, const char *schema);

/* where a foreign key to ref points in the tenant's schema: its copy, or ref */
extern Oid	clone_fk_target(TenantPlan *plan, const char *schema, Oid ref);

extern Oid	clone_target_relid(const char *schema, const char *relname);

/* keep the application's registry columns in step, if configured (never fails) */
extern void cm_registry_sync(const char *tenant, const char *state, const char *location);

/*
 * create_tenant_schema: the tenant's schema, complete and empty, made in
 * the current transaction (*tenant becomes the canonical id).  SPI connected.
 */
extern char *clone_create_schema(char **tenant);

#endif
