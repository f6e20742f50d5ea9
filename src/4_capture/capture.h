/*-------------------------------------------------------------------------
 * capture.h
 *	  Change capture on the shared tables while tenants move.
 *	  Floor 4 (capture and replay).  May include: floors 1 to 3.
 *-------------------------------------------------------------------------
 */
#ifndef CM_CAPTURE_H
#define CM_CAPTURE_H

#include "postgres.h"
#include "plan.h"
#include "access/htup.h"
#include "datatype/timestamp.h"
#include "utils/relcache.h"

/*
 * A tenant's state (clinic_migrate.tenants.state) as the triggers see it:
 *   copying, copied, failed  shared rows authoritative; their changes are logged
 *   cut_over                 the schema is authoritative; shared rows refuse
 *                            writes; the schema's changes are logged (reverse)
 *   finalizing, finalized    the schema is authoritative; shared rows refuse
 *                            writes; nothing is logged
 *   rolling_back             shared rows authoritative again; the schema
 *                            refuses writes until it is dropped
 */
#define CM_STATE_NONE			0
#define CM_STATE_CAPTURE		'c'
#define CM_STATE_CUT_OVER		'x'
#define CM_STATE_FINALIZING		'f'
#define CM_STATE_FINALIZED		'F'
#define CM_STATE_ROLLING_BACK	'b'

extern char cm_state_code(const char *state);

/* is the tenant's schema where it lives (cut_over, finalizing, finalized)? */
extern bool cm_state_after_cutover(const char *state);
#define cm_state_after_cutover_code(c) \
	((c) == CM_STATE_CUT_OVER || (c) == CM_STATE_FINALIZING || (c) == CM_STATE_FINALIZED)

/*
 * Set while this backend applies captured changes itself: its own writes
 * must not be captured again.
 */
extern bool cm_applying;

/* name of the log table of a shared table */
extern Oid	capture_log_relid(Oid source);

/*
 * Create the log tables and triggers that are missing for the planned
 * tables.  Each trigger is created in a subtransaction with a short
 * lock_timeout, retried with back-off, so that it never queues the
 * application's writers behind a long transaction.
 */
extern void capture_install(TenantPlan *plan, bool full);

/*
 * The same for the one planned table at position i: its lock only.  A
 * caller installing table by table, a transaction each, holds the
 * installer's lock at session level across them (capture_installer_lock),
 * so that no cleanup takes off what the tables done so far got.
 */
extern void capture_install_table(TenantPlan *plan, int i, bool full);
extern void capture_installer_lock(bool acquire);

/*
 * full: the triggers that log every change (capture_method = trigger, and
 * every tenant from its cutover on, whose writes they also pause and
 * refuse).  Else those that capture from the WAL needs: the one that logs
 * an UPDATE moving a row to another tenant or parent, whose old tenant the
 * WAL does not carry, and the TRUNCATE guard.
 */
extern bool capture_full_triggers_needed(void);

/*
 * After a trigger was made on a captured table (or a partition of one): a
 * BEFORE UPDATE row trigger of the application's may change the tenant
 * column in a statement that does not set it, which UPDATE OF misses:
 * the tenant-change trigger is made again without it.
 */
extern void capture_recheck_tenant_trigger(Oid relid);

/* is some tenant's move captured from the WAL? */
extern bool capture_wal_tenants_exist(void);

/*
 * Log a change read from the WAL (decode.c) as the trigger would have:
 * old and new images of a row of rel (either NULL), committed then.
 * Nothing is refused or waited for.
 */
extern void capture_row_from_wal(Relation rel, HeapTuple oldtup, HeapTuple newtup,
								 TimestampTz committed, const char *tenant_column);

/*
 * The columns (by attnum, natts + 1 entries) a change of rel read from the
 * WAL must carry: its key, its tenant column, or a child table's foreign
 * key to its parent.  Cached with the table's capture entry.
 */
extern bool *capture_wal_needed(Relation rel, const char *tenant_column);

/*
 * The reverse capture on a tenant's own tables (cutover installs it,
 * finalize drops it), and their TRUNCATE guard.
 */
extern void capture_install_reverse(TenantPlan *plan, const char *schema, const char *tenant);
extern void capture_drop_reverse(TenantPlan *plan, const char *schema);

/*
 * After partitions of a partitioned table with our triggers were made or
 * attached (and at install): our row triggers there fire ALWAYS, and our
 * truncate guard is on each partition too.
 */
extern void capture_fix_partitions(Oid relid);

/*
 * Drop the shared tables' capture triggers when no tenant needs them (see
 * capture.c); the number of tables, -1 when they were busy.  SPI connected.
 */
extern int	capture_uninstall_if_unused(void);

/* tell every backend that the set of captured tenants changed (at commit) */
extern void capture_tenants_changed(void);

/*
 * Wait until every transaction that may have written a planned table before
 * capture of a tenant began has ended: after that, every write of the
 * tenant's rows is captured.
 */
extern void capture_wait_for_writers(TenantPlan *plan);

/*
 * Where a tenant's rows live now, from the cache of moving tenants: its
 * schema once cut over, else its source schema (routing asks); and, if
 * source_schema is not NULL, the tenant's source schema there.
 */
extern const char *capture_tenant_location(const char *tenant, const char **source_schema);

#endif
