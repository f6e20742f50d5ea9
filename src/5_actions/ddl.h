/*-------------------------------------------------------------------------
 * ddl.h
 *	  The application's schema changes follow the tenants that are moving:
 *	  clinic_migrate.follow_ddl(), an event trigger (see ddl.c).
 *	  Floor 5 (actions).
 *-------------------------------------------------------------------------
 */
#ifndef CM_DDL_H
#define CM_DDL_H

#include "fmgr.h"

extern Datum cm_follow_ddl(PG_FUNCTION_ARGS);
extern Datum cm_follow_drop(PG_FUNCTION_ARGS);

/*
 * Before a cutover: the tables the tenant's plan takes that have no copy
 * yet (made while follow_ddl was off, or before 0.6) get one now; one
 * without a key refuses the cutover.  SPI connected.
 */
extern void ddl_adopt_missing(const char *tenant, const char *state, Oid schema_oid);

/*
 * The action of a schema_change job (fan_out): the job's version, in its
 * finalized tenant's schema, as the role that queued it; recorded in
 * tenant_schema_versions in the same transaction.
 */
#include "runstate.h"
extern void cm_schema_change_tenant(CmWorkerShared *sh, int64 *run_id);

/*
 * CREATE INDEX CONCURRENTLY of a shared table cannot run again inside its
 * own statement: the copies' indexes are recorded in pending_indexes and
 * built by an index job (cm_index_tenant, ddl_build_pending_indexes,
 * outside any transaction); cutover waits for them.  ddl_pending_indexes lists those not built yet (SPI connected).
 */
extern void cm_index_tenant(CmWorkerShared *sh, int64 *run_id);
extern int	ddl_build_pending_indexes(const char *tenant);
extern char *ddl_pending_indexes(const char *tenant);

/*
 * Cutover's check (SPI connected): indexes made by hand on the copies count
 * as built; any still pending refuses the cutover, saying which.  (Building
 * them there would deadlock: CREATE INDEX CONCURRENTLY waits for the
 * transaction of the session that waits for the cutover.)
 */
extern void ddl_check_pending_indexes(const char *tenant);

/*
 * A migration's worker: its statements (the copy, clinic_migrate's own
 * triggers) are not the application's schema changes, to be followed.
 */
extern void ddl_ignore_this_process(void);

#endif
