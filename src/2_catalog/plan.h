/*-------------------------------------------------------------------------
 * plan.h
 *	  The plan: which tables of the source schema hold tenant rows, how a
 *	  tenant's rows of each are found, and in which order they are copied.
 *	  Floor 2 (the catalog).  May include: floor 1.
 *-------------------------------------------------------------------------
 */
#ifndef CM_PLAN_H
#define CM_PLAN_H

#include "postgres.h"
#include "access/attnum.h"
#include "lib/stringinfo.h"
#include "nodes/pg_list.h"

#include "settings.h"
#include "util.h"
#include "locks.h"
#include "runstate.h"

typedef enum PlanKind
{
	PLAN_TENANT,				/* has the tenant column: copied */
	PLAN_CHILD,					/* reaches a tenant table by foreign keys: copied */
	PLAN_REFERENCE,				/* no tenant path: stays shared */
	PLAN_EXCLUDED,				/* the user keeps it shared */
	PLAN_REGISTRY,				/* the tenant registry: stays shared */
	PLAN_UNSUPPORTED			/* a kind of table not handled: stays shared */
} PlanKind;

/* one foreign key step from a table towards the table holding the tenant */
typedef struct PlanHop
{
	Oid			conoid;
	Oid			parent;			/* referenced table */
	int			nkeys;
	AttrNumber	child_att[INDEX_MAX_KEYS];	/* referencing columns */
	AttrNumber	parent_att[INDEX_MAX_KEYS]; /* referenced columns */
	bool		indexed;		/* an index leads with the referencing columns */
} PlanHop;

typedef struct PlanTable
{
	Oid			relid;
	char	   *nspname;
	char	   *relname;
	PlanKind	kind;
	int			position;		/* 1-based copy order; 0 when not copied */

	AttrNumber	tenant_att;		/* when the table has the tenant column */
	Oid			tenant_type;

	int			nhops;			/* PLAN_CHILD: path to its root */
	PlanHop    *hops;
	Oid			root;			/* table holding the tenant column (self for tenant tables) */

	int			nkey;			/* row identity: primary key or unique not-null key */
	AttrNumber	key_att[INDEX_MAX_KEYS];
	Oid			key_index;

	int			nbatch;			/* keyset columns (key minus the tenant column) */
	AttrNumber	batch_att[INDEX_MAX_KEYS];
	Oid			batch_index;	/* index on (tenant, batch columns...), if any */

	char	   *note;			/* warnings for the user, or NULL */

	int64		applied;		/* keys replayed (apply.c), reset by whoever reads it */
} PlanTable;

typedef struct TenantPlan
{
	Oid			source_nsp;
	char	   *source_schema;
	char	   *tenant_column;
	Oid			registry;
	int			ntables;
	PlanTable  *tables;			/* copied ones first, in position order */
	int			ncopied;
} TenantPlan;

/* Build the plan (SPI connected); allocated in mcxt. */
extern TenantPlan *plan_build(const CmSettings *s, MemoryContext mcxt);
extern PlanTable *plan_find(TenantPlan *plan, Oid relid);
extern const char *plan_kind_name(PlanKind kind);

/* Error out (with a hint) if a copied table cannot be copied safely. */
extern void plan_check_copyable(TenantPlan *plan);

/*
 * The tenant's rows of a table, as SQL:
 * " FROM <table> s [JOIN parent a1 ON ...]... WHERE <root>.<tenant> = $1
 *   [AND (<root keyset>) > ($lo...)] [AND (<root keyset>) <= ($hi...)]"
 * lo_param / hi_param: number of the first parameter of each bound, 0 for none.
 */
extern void plan_append_tenant_rows(StringInfo buf, TenantPlan *plan,
									PlanTable *pt, int lo_param, int hi_param);

/*
 * The rows of one batch of the tenant's rows of pt's table, with
 * plan_append_tenant_rows: the tenant in $1, the keyset bounds (nb columns
 * of the root table) after it in values[1..nb] (lower, if have_lo) and
 * values[1+nb..2nb] (upper, if have_hi); an upper bound alone is moved down
 * to $2.  Returns the number of parameters.
 */
extern int	plan_append_batch_rows(StringInfo buf, TenantPlan *plan, PlanTable *pt,
								   bool have_lo, bool have_hi, int nb, Oid *types, Datum *values);

/*
 * A boolean SQL expression: the row of pt's table under alias belongs to
 * the tenant in parameter $param (its tenant column, or the tenant column
 * at the end of its foreign key chain, through EXISTS).
 */
extern void plan_append_belongs(StringInfo buf, TenantPlan *plan, PlanTable *pt,
								const char *alias, int param);

/*
 * The same with any SQL expression of the tenant column's type for the
 * tenant, and the foreign key chain's tables aliased hop_prefix1..N (a
 * policy's expression names its own table by alias = the table's name).
 */
extern void plan_append_belongs_to(StringInfo buf, TenantPlan *plan, PlanTable *pt,
								   const char *alias, const char *hop_prefix,
								   const char *tenant);

/* alias of the root table in plan_append_tenant_rows' SQL */
extern const char *plan_root_alias(PlanTable *pt);

/* the root (tenant-column) table of a copied table */
extern PlanTable *plan_root(TenantPlan *plan, PlanTable *pt);

/* columns to copy: not dropped, not generated; sets *has_always_identity */
extern List *plan_copy_columns(Oid relid, bool *has_always_identity);

/* all key columns of the table, by name */
extern List *plan_key_columns(PlanTable *pt);

/*
 * The canonical text of a tenant id: read as the tenant column's type and
 * written back ('01' and ' 1' are tenant 1 of an integer column), so that
 * one tenant never gets two schemas.  Errors name the column.
 */
extern char *plan_canonical_tenant(TenantPlan *plan, const char *tenant);

/* tenant id as a Datum of the tenant column's type */
extern Datum plan_tenant_datum(PlanTable *root, const char *tenant);

/* a column's name; "a, b" for a list of columns (quoted) */
extern char *plan_attname(Oid relid, AttrNumber att);
extern char *plan_att_list_text(Oid relid, AttrNumber *atts, int n);

#endif
