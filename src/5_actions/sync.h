/*-------------------------------------------------------------------------
 * sync.h
 *	  The sync worker: one per database, it keeps every copied tenant's
 *	  schema up to date with its shared rows (forward), and every cut-over
 *	  tenant's shared rows up to date with its schema (reverse), until the
 *	  tenant is cut over, rolled back or finalized.
 *	  Floor 5 (the actions).  May include: floors 1 to 4.
 *-------------------------------------------------------------------------
 */
#ifndef CM_SYNC_H
#define CM_SYNC_H

#include "postgres.h"

/*
 * One replay round of a tenant in the current transaction, in the direction
 * its state calls for (copied: forward, cut_over: reverse), under the
 * tenant's apply lock.  SPI connected.  Returns the keys applied; 0 when
 * the tenant is in neither state.
 */
extern int64 cm_sync_tenant_once(const char *tenant);

/*
 * The same as a transaction of its own (a worker's): the apply lock is
 * taken before the snapshot, so that in REPEATABLE READ a round never sees
 * the rows another round just committed as a concurrent change.
 */
extern int64 cm_sync_tenant_round(const char *tenant);

/*
 * Drop the shared tables' capture triggers if no tenant needs them, in a
 * transaction of its own (none may be open); a failure (the tables busy
 * in a few short attempts) leaves them.  The number of tables, -1 when
 * they are still there for want of locks or of an error (logged).
 */
extern int	cm_capture_cleanup(void);

/*
 * Capture from the WAL: log what the slot has (a transaction), then move
 * the slot past it (another); the changes read.  0 without a slot.
 */
extern int64 cm_wal_drain(void);

/*
 * The sync worker's drain: at most max_changes rows in its transaction
 * (0: all); *more when there is more to read now.
 */
extern int64 cm_wal_drain_some(int64 max_changes, bool *more);

/* drop the slot if no tenant captures from the WAL any more; true if none is left */
extern bool cm_wal_cleanup(void);

#endif
