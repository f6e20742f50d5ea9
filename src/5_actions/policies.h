/*-------------------------------------------------------------------------
 * policies.h
 *	  Row-level security for the tenants that stay in the shared tables,
 *	  and the audit of its permissive mode.
 *	  Floor 5 (the actions).  May include: floors 1 to 4.
 *-------------------------------------------------------------------------
 */
#ifndef CM_POLICIES_H
#define CM_POLICIES_H

#include "postgres.h"
#include "datatype/timestamp.h"
#include "nodes/pg_list.h"

#include "state.h"
#include "plan.h"

/* shared memory for the audit counters (from _PG_init) */
extern void cm_policies_init(void);

/*
 * Put the tenant policies on every planned shared table (tenant and child
 * kinds) for the roles (a List of role OIDs), in mode "enforce" or
 * "permissive", replacing those of an earlier call, and take them off the
 * tables that are no longer planned.  All the tables are locked at once
 * (cm_lock_relations) before any changes.  Runs the DDL as the caller.
 * SPI connected.  Returns the number of tables covered.
 */
extern int	cm_rls_enable(List *roles, const char *mode);

/*
 * The tenant's schema gets them too (its tables: a row only when the
 * session's tenant is this tenant), where the shared tables carry them:
 * after the clone, before the copy.  SPI connected.
 */
extern void cm_rls_cover_tenant(TenantPlan *plan, const char *tenant);

/* Take every policy of cm_rls_enable off and restore each table's own row
 * level security flags.  SPI connected.  Returns the number of tables. */
extern int	cm_rls_disable(void);

/*
 * A partition made or attached under a partitioned table that
 * enable_tenant_rls covers gets the same policy (and its own partitions);
 * SPI connected.
 */
extern void cm_rls_cover_new_partition(Oid part);

/* one audit counter: rows the enforcing policy would have hidden */
typedef struct CmRlsAuditRow
{
	Oid			role;
	Oid			relid;
	int64		other_tenant;	/* rows of another tenant than the session's */
	int64		no_tenant;		/* rows read with no current tenant set */
	TimestampTz last;
} CmRlsAuditRow;

/* this database's counters; *overflow: rows not counted for lack of room.
 * False if the counters are not there (not in shared_preload_libraries). */
extern bool cm_rls_audit_rows(CmRlsAuditRow **rows, int *n, int64 *overflow);

#endif
