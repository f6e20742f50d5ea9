/*-------------------------------------------------------------------------
 * validate.h
 *	  Checks cutover and rollback make before and during their pause.
 *	  Floor 5 (the actions).  May include: floors 1 to 4.
 *-------------------------------------------------------------------------
 */
#ifndef CM_VALIDATE_H
#define CM_VALIDATE_H

#include "postgres.h"
#include "nodes/execnodes.h"

#include "plan.h"

/*
 * Compare every table of a tenant, both sides in the current snapshot:
 * where counts or checksums differ, every key that differs must be pending
 * in the log (taken in the same snapshot), else ERROR naming the keys.  A
 * replay round applies exactly the logged keys and deletes their entries in
 * one transaction, so in any snapshot a key that is not logged is equal on
 * both sides: this check is exact while the application writes.  Sets the
 * rows compared (both sides) and the keys found in flight.  SPI connected.
 */
extern void validate_before_pause(TenantPlan *plan, const char *schema, const char *tenant,
								  int64 *rows, int64 *in_flight);

/*
 * The rows of the keys replayed in this transaction (apply_keys_table, for
 * the tables whose PlanTable.applied counts some) are equal on both sides,
 * else ERROR.  Returns the rows compared.
 */
extern int64 validate_applied_keys(TenantPlan *plan, const char *schema, const char *tenant);

/*
 * The validate action (queue jobs): validate_migration of the tenant, which
 * fails unless every table matches.  Runs in a worker.
 */
struct CmWorkerShared;
extern void cm_validate_tenant(struct CmWorkerShared *sh, int64 *run_id);

/*
 * validate_migration() of a tenant, both sides in the caller's snapshot:
 * one row per table into rsinfo's tuplestore (a materialized SRF), with at
 * most max_keys differing keys of each kind; cm_validate_keys: one row per
 * differing key.
 */
extern void cm_validate_summary(const char *tenant, int max_keys, ReturnSetInfo *rsinfo);
extern void cm_validate_keys(const char *tenant, ReturnSetInfo *rsinfo);

#endif
