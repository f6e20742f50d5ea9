/*-------------------------------------------------------------------------
 * apply.h
 *	  Replay of captured changes into a tenant's schema.
 *	  Floor 4 (capture and replay).  May include: floors 1 to 3, capture.
 *-------------------------------------------------------------------------
 */
#ifndef CM_APPLY_H
#define CM_APPLY_H

#include "postgres.h"
#include "plan.h"

/*
 * One round: every change of the tenant logged and committed so far is
 * applied by re-reading the shared row by key, and its log entries are
 * deleted, in the current transaction (SPI connected).  Returns the number
 * of keys applied.
 */
extern int64 apply_round(const char *tenant, TenantPlan *plan, const char *schema);

/*
 * The same after cutover, the other way: every change made in the tenant's
 * schema and logged so far is applied to its shared rows (re-read from the
 * schema by key: upserted, or deleted from the shared table).
 */
extern int64 apply_reverse_round(const char *tenant, TenantPlan *plan, const char *schema);

/*
 * The temporary table that holds the keys of a table applied in this
 * transaction (all rounds of it), as a quoted name; NULL if it has none.
 */
extern char *apply_keys_table(PlanTable *pt);

/*
 * Changes of the tenant captured and not yet applied, in every log table:
 * how many, and the age of the oldest in seconds (0 when none).
 */
extern void apply_backlog(const char *tenant, int64 *count, double *age);

/* forget the tenant's captured changes (rollback) */
extern void apply_forget(const char *tenant);

/* the relations a replay round of the tenant reads and writes (shared, parents, its copies) */
extern List *apply_relations(TenantPlan *plan, const char *schema, List **written);

/* before a copied table's indexes: its rows whose logged keys are gone from the source leave */
extern void apply_prune_before_index(const char *tenant, TenantPlan *plan, const char *schema,
									 PlanTable *pt);

#endif
