/*-------------------------------------------------------------------------
 * decode.h
 *	  Capture from the WAL (clinic_migrate.capture_method = wal): the
 *	  logical decoding output plugin "clinic_migrate", the slot it reads
 *	  through, and the drain that turns what it emits into the same log
 *	  entries the capture triggers write.
 *	  Floor 4 (capture and replay).  May include: floors 1 to 3, capture.
 *-------------------------------------------------------------------------
 */
#ifndef CM_DECODE_H
#define CM_DECODE_H

#include "postgres.h"
#include "access/xlogdefs.h"
#include "plan.h"

/* clinic_migrate.capture_method */
#define CM_CAPTURE_AUTO		0
#define CM_CAPTURE_TRIGGER	1
#define CM_CAPTURE_WAL		2

/* is the extension's SQL at 0.8 or later (tenants.capture_method)? */
extern bool capture_wal_supported(void);

/* the slot of this database: clinic_migrate_<database OID> */
extern char *capture_wal_slot_name(void);

/* does the slot of this database exist?  (and its WAL status, when asked) */
extern bool capture_wal_slot_exists(bool *lost);

/*
 * The capture method a new move of this plan gets: 'wal' when
 * capture_method asks for it or is auto and wal_level is logical and every
 * table's replica identity carries its key; else 'trigger'.  With
 * capture_method = wal and a table that cannot, an error naming it.
 */
extern bool capture_wal_choose(TenantPlan *plan);

/*
 * Create the slot when it is missing.  Not in a transaction that has
 * written: the caller runs it in one of its own, first.  Waits, as
 * creating any logical slot does, for the transactions running now.
 */
extern void capture_wal_ensure_slot(void);

/*
 * Read what the slot has up to the WAL flushed now and log it (as
 * capture's triggers would have), in the current transaction, which the
 * caller commits; returns the position to confirm after that commit with
 * capture_wal_confirm, or InvalidXLogRecPtr when there is no slot.  One
 * drain at a time in the database (the others wait).  Transactions that
 * committed at or before skip_upto are passed over (read already by the
 * same transaction: sync_now).
 */
extern XLogRecPtr capture_wal_read(int64 *changes, XLogRecPtr skip_upto);

/*
 * The same, reading at most max_changes rows (0: all), whole transactions:
 * returns where it read up to (what the slot may be moved to), *more set
 * when it stopped short of the WAL flushed at its start.
 */
extern XLogRecPtr capture_wal_read_some(int64 *changes, XLogRecPtr skip_upto,
										int64 max_changes, bool *more);
extern void capture_wal_confirm(XLogRecPtr upto);

/* bytes of WAL the slot keeps (-1: no slot) */
extern int64 capture_wal_retained(void);

/* drop the slot when no tenant captures from the WAL; true if it is gone */
extern bool capture_wal_drop_if_unused(void);

/* drop the slot whatever it serves */
extern void capture_wal_drop(void);

/*
 * At this transaction's commit, drop the slot if the extension is gone by
 * then (DROP EXTENSION, DROP SCHEMA ... CASCADE, DROP OWNED).
 */
extern void capture_wal_drop_at_commit(void);

#endif
