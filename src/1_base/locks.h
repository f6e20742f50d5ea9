/*-------------------------------------------------------------------------
 * locks.h
 *	  Floor 1 (base): clinic_migrate's locks: the per-tenant migration,
 *	  apply and sync locks, the tenant's write lock, the database's sync
 *	  worker lock, and taking the application's tables all at once with a
 *	  short timeout, retried with back-off.
 *	  May call: settings, util.
 *-------------------------------------------------------------------------
 */
#ifndef CM_LOCKS_H
#define CM_LOCKS_H

#include "postgres.h"
#include "nodes/pg_list.h"
#include "storage/lock.h"

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
 * Run DDL that locks a table the application uses with a short
 * lock_timeout in a subtransaction, retried with back-off (SPI connected).
 */
extern void cm_ddl_with_retry(const char *sql);

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
 * The same for work that can wait for a better moment: at most that many
 * attempts (each clinic_migrate.lock_timeout, with back-off between them);
 * false, with nothing held, when they all failed.
 */
extern bool cm_try_lock_relations(List *relids, LOCKMODE mode, int attempts);

/*
 * Wait for a transaction to end, as a lock waiter (pg_blocking_pids() of
 * this session names it), for at most timeout_ms (a lock_timeout in a
 * subtransaction, which the timeout rolls back); true if it ended.  With
 * timeout_ms <= 0, only looks.
 */
extern bool cm_wait_for_vxact(VirtualTransactionId vxid, int timeout_ms);

/* lock the relations; were any changed (a rewrite) since the active snapshot? */
extern bool cm_relations_changed_since_snapshot(List *relids, List *written);

#endif
