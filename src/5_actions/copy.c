/*-------------------------------------------------------------------------
 * copy.c
 *	  Copies one tenant's rows into its schema in committed keyset batches.
 *	  Floor 5 (the actions).  May call: floors 1 to 4.
 *
 * Tables are copied in plan order.  Each batch is one transaction that
 * (1) finds the batch's upper key on the root table, the table that holds
 * the tenant column, walking the (tenant, key) index: no OFFSET over the
 * table, no re-reading earlier batches; (2) copies the rows up to that key
 * with one INSERT ... SELECT; (3) records the key as the table's
 * checkpoint.  Data and checkpoint commit together, so a crash, a cancel
 * or a restart resumes after the last committed batch without skipping or
 * repeating a row.  Because of that, batch commits need not wait for the
 * WAL flush (synchronous_commit = off): a commit lost in a crash loses the
 * batch and its checkpoint together.
 *
 * The target tables get their indexes, keys and foreign keys after their
 * rows are in (clone.c), which is what makes the batched copy as fast as
 * one big INSERT into a fully indexed clone.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "executor/tuptable.h"
#include "nodes/params.h"
#include "utils/rel.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "storage/lmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/interrupt.h"
#include "storage/latch.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "apply.h"
#include "capture.h"
#include "decode.h"
#include "sync.h"
#include "settings.h"
#include "util.h"
#include "locks.h"
#include "runstate.h"
#include "clone.h"
#include "copy.h"
#include "ddl.h"
#include "policies.h"
#include "plan.h"
#include "state.h"


/* the tenant's row of tenant_tables, kept across batches */
typedef struct CopyTable
{
	PlanTable  *pt;
	Oid			target;
	int64		rows_total;
	int64		rows_copied;
	bool		copied;
	bool		indexed;
	bool		bulk;			/* target takes tuples straight from the scan */
	int			ncheck;
	char	   *checkpoint[INDEX_MAX_KEYS];	/* root keyset, as text */
} CopyTable;

#define begin_txn cm_begin_txn
#define end_txn cm_end_txn

static int64
count_rows(TenantPlan *plan, PlanTable *pt, Datum tenant)
{
	StringInfoData sql;
	Oid			type = plan_root(plan, pt)->tenant_type;
	bool		isnull;

	initStringInfo(&sql);
	appendStringInfoString(&sql, "SELECT count(*)");
	plan_append_tenant_rows(&sql, plan, pt, 0, 0);
	if (SPI_execute_with_args(sql.data, 1, &type, &tenant, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "clinic_migrate: count failed");
	return DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

/* rows of the root table belonging to the tenant */
static int64
count_root_rows(PlanTable *root, Datum tenant)
{
	StringInfoData sql;
	Oid			type = root->tenant_type;
	bool		isnull;

	initStringInfo(&sql);
	appendStringInfo(&sql, "SELECT count(*) FROM %s WHERE %s = $1",
					 cm_qualified_relname(root->relid),
					 quote_identifier(get_attname(root->relid, root->tenant_att, false)));
	if (SPI_execute_with_args(sql.data, 1, &type, &tenant, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "clinic_migrate: count failed");
	return DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

static void
report_activity(CmWorkerShared *sh, CopyTable *ct, const char *what)
{
	char		buf[256];
	int			pct = ct && ct->rows_total > 0 ? (int) (100 * ct->rows_copied / ct->rows_total) : 0;

	if (ct)
		snprintf(buf, sizeof(buf), "clinic_migrate: %s %s.%s %d%%", what, sh->schema,
				 ct->pt->relname, Min(pct, 100));
	else
		snprintf(buf, sizeof(buf), "clinic_migrate: %s %s", what, sh->schema);
	pgstat_report_activity(STATE_RUNNING, buf);
	SpinLockAcquire(&sh->mutex);
	if (ct)
	{
		strlcpy(sh->current_table, ct->pt->relname, NAMEDATALEN);
		sh->table_rows_total = ct->rows_total;
		sh->table_rows_done = ct->rows_copied;
	}
	SpinLockRelease(&sh->mutex);
}


/*
 * The bulk path: the batch's SELECT streams its rows into this receiver,
 * which writes them into the target with table_multi_insert, as COPY FROM
 * does: one WAL record per page instead of one per row, no executor per
 * row, and a bulk-insert ring buffer that leaves shared buffers to the
 * application.  Used while the target has no indexes, triggers or rules
 * (the indexes come after the load); the rows are the shared table's own,
 * which already satisfy its constraints, generated values included.
 */
#define BULK_MAX_TUPLES 1000
#define BULK_MAX_BYTES	65535

typedef struct BulkInserter
{
	DestReceiver pub;
	Relation	rel;
	BulkInsertState bistate;
	CommandId	cid;
	TupleTableSlot *slots[BULK_MAX_TUPLES];
	int			nused;
	int			nbuffered;
	Size		bytes;
	int64		count;
	MemoryContext cxt;			/* outlives the executor: the slots live here */
} BulkInserter;

static void
bulk_flush(BulkInserter *b)
{
	if (b->nbuffered == 0)
		return;
	table_multi_insert(b->rel, b->slots, b->nbuffered, b->cid, 0, b->bistate);
	for (int i = 0; i < b->nbuffered; i++)
		ExecClearTuple(b->slots[i]);
	b->nbuffered = 0;
	b->bytes = 0;
}

static bool
bulk_receive(TupleTableSlot *slot, DestReceiver *self)
{
	BulkInserter *b = (BulkInserter *) self;
	TupleTableSlot *dst;

	if (b->nbuffered == b->nused)
	{
		MemoryContext old = MemoryContextSwitchTo(b->cxt);

		b->slots[b->nused++] = table_slot_create(b->rel, NULL);
		MemoryContextSwitchTo(old);
	}
	dst = b->slots[b->nbuffered++];
	/* a copy: the scan's buffers are not ours past this call */
	ExecCopySlot(dst, slot);
	if (TTS_IS_BUFFERTUPLE(dst))
		b->bytes += ((BufferHeapTupleTableSlot *) dst)->base.tuple->t_len;
	b->count++;
	if (b->nbuffered == BULK_MAX_TUPLES || b->bytes >= BULK_MAX_BYTES)
		bulk_flush(b);
	return true;
}

static void
bulk_startup(DestReceiver *self, int operation, TupleDesc typeinfo)
{
}

static void
bulk_shutdown(DestReceiver *self)
{
	bulk_flush((BulkInserter *) self);
}

static void
bulk_destroy(DestReceiver *self)
{
}

/* may the target take tuples straight from the scan? */
static bool
bulk_allowed(Oid source, Oid target)
{
	Relation	rel = table_open(target, AccessShareLock);
	/* a partitioned table has no storage: its rows are routed to partitions */
	bool		ok = rel->rd_rel->relkind == RELKIND_RELATION && !rel->rd_rel->relhasindex &&
		rel->trigdesc == NULL && !rel->rd_rel->relhasrules;
	Oid			types[1] = {OIDOID};
	Datum		values[1] = {ObjectIdGetDatum(source)};

	table_close(rel, AccessShareLock);
	/* a CHECK the shared table never validated may be broken by its rows */
	if (ok && SPI_execute_with_args("SELECT 1 FROM pg_constraint WHERE conrelid = $1 "
									"AND contype = 'c' AND NOT convalidated",
									1, types, values, NULL, true, 1) == SPI_OK_SELECT)
		ok = SPI_processed == 0;
	return ok;
}

/* run the SELECT into the target through the bulk receiver; rows written */
static int64
bulk_copy(const char *sql, Oid target, int nargs, Oid *types, Datum *values)
{
	BulkInserter *b = palloc0(sizeof(BulkInserter));
	SPIPlanPtr	plan;
	SPIExecuteOptions opts;
	ParamListInfo params = cm_param_list(nargs, types, values);

	b->pub.receiveSlot = bulk_receive;
	b->pub.rStartup = bulk_startup;
	b->pub.rShutdown = bulk_shutdown;
	b->pub.rDestroy = bulk_destroy;
	b->pub.mydest = DestNone;
	b->cxt = CurrentMemoryContext;
	b->rel = table_open(target, RowExclusiveLock);
	b->bistate = GetBulkInsertState();
	b->cid = GetCurrentCommandId(true);
	/*
	 * Planned without CURSOR_OPT_PARALLEL_OK: the receiver writes, and
	 * nothing may assign an XID inside a parallel operation.
	 */
	plan = SPI_prepare_cursor(sql, nargs, types, 0);
	if (plan == NULL)
		elog(ERROR, "clinic_migrate: could not prepare \"%s\"", sql);
	memset(&opts, 0, sizeof(opts));
	opts.params = params;
	opts.read_only = false;
	opts.dest = (DestReceiver *) b;
	if (SPI_execute_plan_extended(plan, &opts) < 0)
		elog(ERROR, "clinic_migrate: batch copy failed");
	SPI_freeplan(plan);
	bulk_flush(b);
	FreeBulkInsertState(b->bistate);
	for (int i = 0; i < b->nused; i++)
		ExecDropSingleTupleTableSlot(b->slots[i]);
	table_close(b->rel, NoLock);
	return b->count;
}

/* target's columns, in its order, generated ones included */
static List *
target_columns(Oid target)
{
	Relation	rel = RelationIdGetRelation(target);
	TupleDesc	td = RelationGetDescr(rel);
	List	   *cols = NIL;

	for (int i = 0; i < td->natts; i++)
		if (!TupleDescAttr(td, i)->attisdropped)
			cols = lappend(cols, pstrdup(NameStr(TupleDescAttr(td, i)->attname)));
	RelationClose(rel);
	return cols;
}

static bool
all_hops_indexed(PlanTable *pt)
{
	for (int h = 0; h < pt->nhops; h++)
		if (!pt->hops[h].indexed)
			return false;
	return true;
}

/* checkpoint text[] -> C strings in cxt */
static void
load_checkpoint(CopyTable *ct, Datum arr, MemoryContext cxt)
{
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	MemoryContext old = MemoryContextSwitchTo(cxt);

	deconstruct_array(DatumGetArrayTypeP(arr), TEXTOID, -1, false, TYPALIGN_INT,
					  &elems, &nulls, &n);
	ct->ncheck = Min(n, INDEX_MAX_KEYS);
	for (int i = 0; i < ct->ncheck; i++)
		ct->checkpoint[i] = TextDatumGetCString(elems[i]);
	MemoryContextSwitchTo(old);
}

/*
 * (1) of a batch: its upper bound, the root_batch-th key of the root table
 * after the checkpoint (values[1..nb]); into values[1+nb..2nb] and hi_text.
 * False when fewer keys are left: the batch takes them all.
 */
static bool
batch_upper_bound(PlanTable *root, bool have_lo, int64 root_batch, Oid *types, Datum *values,
				  char **hi_text)
{
	int			nb = root->nbatch;
	StringInfoData sql;
	const char *sep = "";

	if (nb == 0)
		return false;
	initStringInfo(&sql);
	appendStringInfoString(&sql, "SELECT ");
	for (int i = 0; i < nb; i++)
		appendStringInfo(&sql, "%ss.%s", i ? ", " : "",
						 quote_identifier(get_attname(root->relid, root->batch_att[i], false)));
	appendStringInfo(&sql, " FROM %s s WHERE s.%s = $1", cm_qualified_relname(root->relid),
					 quote_identifier(get_attname(root->relid, root->tenant_att, false)));
	if (have_lo)
	{
		appendStringInfoString(&sql, " AND (");
		for (int i = 0; i < nb; i++)
			appendStringInfo(&sql, "%ss.%s", i ? ", " : "",
							 quote_identifier(get_attname(root->relid, root->batch_att[i], false)));
		appendStringInfoString(&sql, ") > (");
		for (int i = 0; i < nb; i++)
			appendStringInfo(&sql, "%s$%d", i ? ", " : "", 2 + i);
		appendStringInfoChar(&sql, ')');
	}
	appendStringInfoString(&sql, " ORDER BY ");
	for (int i = 0; i < nb; i++)
	{
		appendStringInfo(&sql, "%ss.%s", sep,
						 quote_identifier(get_attname(root->relid, root->batch_att[i], false)));
		sep = ", ";
	}
	appendStringInfo(&sql, " OFFSET " INT64_FORMAT " LIMIT 1", root_batch - 1);
	if (SPI_execute_with_args(sql.data, have_lo ? 1 + nb : 1, types, values, NULL,
							  true, 0) != SPI_OK_SELECT)
		elog(ERROR, "clinic_migrate: batch bound query failed");
	if (SPI_processed == 0)
		return false;
	cm_bound_from_spi(nb, &types[1 + nb], &values[1 + nb], hi_text, CurrentMemoryContext);
	return true;
}

/*
 * (2) of a batch: its rows, in one statement, between the checkpoint (if
 * have_lo) and the upper bound (if have_hi); returns the rows copied.
 */
static int64
batch_rows(TenantPlan *plan, CopyTable *ct, bool have_lo, bool have_hi, int nb,
		   Oid *types, Datum *values)
{
	PlanTable  *pt = ct->pt;
	StringInfoData sql;
	bool		always;
	List	   *cols;
	int64		copied;

	/*
	 * The bulk path writes no index entries and fires nothing: it holds only
	 * while the target has no index, trigger or rule.  One may have come
	 * since the run began (a deploy's CREATE INDEX, carried to the copy by
	 * follow_ddl, or made by hand): look again under the batch's lock,
	 * which no CREATE INDEX gets past until this batch commits.
	 */
	LockRelationOid(ct->target, RowExclusiveLock);
	if (ct->bulk && !bulk_allowed(pt->relid, ct->target))
		ct->bulk = false;
	initStringInfo(&sql);
	if (ct->bulk)
	{
		appendStringInfoString(&sql, "SELECT ");
		cm_append_quoted_list(&sql, target_columns(ct->target), "s");
	}
	else
	{
		cols = plan_copy_columns(pt->relid, &always);
		appendStringInfo(&sql, "INSERT INTO %s (", cm_qualified_relname(ct->target));
		cm_append_quoted_list(&sql, cols, NULL);
		appendStringInfo(&sql, ")%s SELECT ", always ? " OVERRIDING SYSTEM VALUE" : "");
		cm_append_quoted_list(&sql, cols, "s");
	}
	{
		int			nargs = plan_append_batch_rows(&sql, plan, pt, have_lo, have_hi, nb,
												   types, values);
		int			nest = NewGUCNestLevel();

		/*
		 * A child table's batch walks its foreign-key indexes from the
		 * batch's root rows.  Left alone, the planner prefers a hash join
		 * that scans the whole child table in every batch: quadratic, and
		 * slow for a small tenant in a big table.
		 */
		if (pt->nhops > 0 && all_hops_indexed(pt))
		{
			(void) set_config_option("enable_hashjoin", "off", PGC_USERSET, PGC_S_SESSION,
									 GUC_ACTION_SAVE, true, 0, false);
			(void) set_config_option("enable_mergejoin", "off", PGC_USERSET, PGC_S_SESSION,
									 GUC_ACTION_SAVE, true, 0, false);
		}
		if (ct->bulk)
			copied = bulk_copy(sql.data, ct->target, nargs, types, values);
		else
		{
			if (SPI_execute_with_args(sql.data, nargs, types, values, NULL, false, 0) != SPI_OK_INSERT)
				elog(ERROR, "clinic_migrate: batch insert failed");
			copied = (int64) SPI_processed;
		}
		AtEOXact_GUC(true, nest);
	}

	return copied;
}

/* (3) of a batch: its checkpoint and counters, committed with its rows */
static void
batch_checkpoint(const char *tenant, PlanTable *pt, int64 copied, bool have_hi, int nb,
				 char **hi_text, int64 run_id)
{
	Oid			utypes[5] = {TEXTOID, OIDOID, INT8OID, TEXTARRAYOID, BOOLOID};
	Datum		uvalues[5];
	char		unulls[5] = {' ', ' ', ' ', ' ', ' '};
	Oid			rtypes[2] = {INT8OID, INT8OID};
	Datum		rvalues[2];

	uvalues[0] = CStringGetTextDatum(tenant);
	uvalues[1] = ObjectIdGetDatum(pt->relid);
	uvalues[2] = Int64GetDatum(copied);
	if (have_hi)
	{
		Datum		elems[INDEX_MAX_KEYS];

		for (int i = 0; i < nb; i++)
			elems[i] = CStringGetTextDatum(hi_text[i]);
		uvalues[3] = PointerGetDatum(construct_array(elems, nb, TEXTOID, -1, false, TYPALIGN_INT));
	}
	else
		unulls[3] = 'n';
	uvalues[4] = BoolGetDatum(!have_hi);
	cm_state_exec("UPDATE clinic_migrate.tenant_tables SET rows_copied = rows_copied + $3, "
				  "checkpoint = coalesce($4, checkpoint), copied = $5, "
				  "copy_time = copy_time + (clock_timestamp() - statement_timestamp()) "
				  "WHERE tenant_id = $1 AND source_table = $2",
				  5, utypes, uvalues, unulls, 0);
	cm_state_exec("UPDATE clinic_migrate.tenants SET rows_copied = rows_copied + $3 "
				  "WHERE tenant_id = $1",
				  3, utypes, uvalues, NULL, 0);
	rvalues[0] = Int64GetDatum(run_id);
	rvalues[1] = Int64GetDatum(copied);
	cm_state_exec("UPDATE clinic_migrate.runs SET rows_copied = rows_copied + $2 "
				  "WHERE run_id = $1", 2, rtypes, rvalues, NULL, 0);
}

static void
sleep_ms(long ms)
{
	if (ms <= 0)
		return;
	(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					 ms, PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
}

/*
 * One batch of a table, in a transaction of its own: the rows after the
 * checkpoint up to the batch's upper bound, and the new checkpoint with
 * them.  Returns false when the table is done.
 */
static bool
copy_batch(CmWorkerShared *sh, const char *tenant, TenantPlan *plan, CopyTable *ct,
		   int64 root_batch, int64 run_id, MemoryContext cxt)
{
	PlanTable  *pt = ct->pt;
	PlanTable  *root = plan_root(plan, pt);
	int			nb = root->nbatch;
	Oid			types[1 + 2 * INDEX_MAX_KEYS];
	Datum		values[1 + 2 * INDEX_MAX_KEYS];
	Oid			typinput[INDEX_MAX_KEYS];
	Oid			typioparam[INDEX_MAX_KEYS];
	bool		have_lo = ct->ncheck > 0;
	bool		have_hi;
	char	   *hi_text[INDEX_MAX_KEYS];
	int64		copied;
	List	   *rels = list_make1_oid(pt->relid);

	for (int h = 0; h < pt->nhops; h++)
		rels = list_append_unique_oid(rels, pt->hops[h].parent);

	/*
	 * A shared table rewritten by a deploy after this batch's snapshot
	 * looks empty to it: the batch would find no rows and end the copy.
	 * Locked, then looked at; a new transaction (a new snapshot, after the
	 * lock) when one was changed.
	 */
	for (;;)
	{
		begin_txn();
		if (!cm_relations_changed_since_snapshot(rels, list_make1_oid(ct->target)))
			break;
		end_txn();
		sleep_ms(10);
		CHECK_FOR_INTERRUPTS();
	}
	types[0] = root->tenant_type;
	values[0] = plan_tenant_datum(root, tenant);
	for (int i = 0; i < nb; i++)
	{
		Oid			t = get_atttype(root->relid, root->batch_att[i]);

		types[1 + i] = types[1 + nb + i] = t;
		getTypeInputInfo(t, &typinput[i], &typioparam[i]);
		if (have_lo)
			values[1 + i] = OidInputFunctionCall(typinput[i], ct->checkpoint[i], typioparam[i], -1);
	}
	have_hi = batch_upper_bound(root, have_lo, root_batch, types, values, hi_text);
	/*
	 * As a replica: the tenant's table may have the application's triggers
	 * already (create_tenant_schema made it whole); they fire for the
	 * application's writes after cutover, not for rows the shared table's
	 * triggers saw when they were written.
	 */
	{
		int			nest = cm_set_replica();

		copied = batch_rows(plan, ct, have_lo, have_hi, nb, types, values);
		cm_restore_output_settings(nest);
	}

	/* tests: a write racing the batch, between its snapshot and its commit */
	cm_pause_point("copy_batch");

	batch_checkpoint(tenant, pt, copied, have_hi, nb, hi_text, run_id);
	/* the new checkpoint, kept across transactions (SPI memory is not) */
	if (have_hi)
	{
		for (int i = 0; i < nb; i++)
		{
			if (ct->checkpoint[i])
				pfree(ct->checkpoint[i]);
			ct->checkpoint[i] = MemoryContextStrdup(cxt, hi_text[i]);
		}
		ct->ncheck = nb;
	}
	end_txn();

	ct->rows_copied += copied;
	ct->copied = !have_hi;
	SpinLockAcquire(&sh->mutex);
	sh->rows_done += copied;
	SpinLockRelease(&sh->mutex);
	return have_hi;
}

/* the highest replay lag of the standbys (ms), read as the extension owner */
static double
standby_lag_ms(void)
{
	double		lag;
	bool		isnull;
	Datum		d;

	begin_txn();
	cm_state_exec("SELECT coalesce(max(extract(epoch FROM replay_lag) * 1000), 0)::float8 "
				  "FROM pg_catalog.pg_stat_replication", 0, NULL, NULL, NULL, 0);
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	lag = isnull ? 0 : DatumGetFloat8(d);
	end_txn();
	return lag;
}

/*
 * Between two batches: the settings again if they were reloaded (SIGHUP),
 * then the throttles: batch_delay; max_rows_per_second, over the rows this
 * run copied since it began; max_replication_lag, polled every second
 * while a standby lags more.  A shutdown request is never ignored.
 */
static void
between_batches(CmWorkerShared *sh, const char *tenant, TimestampTz run_start)
{
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
	}
	sleep_ms(cm_batch_delay);
	if (cm_max_rows_per_second > 0)
	{
		int64		rows;
		long		secs;
		int			usecs;
		double		due;

		SpinLockAcquire(&sh->mutex);
		rows = sh->rows_done;
		SpinLockRelease(&sh->mutex);
		TimestampDifference(run_start, GetCurrentTimestamp(), &secs, &usecs);
		due = (double) rows / cm_max_rows_per_second - (secs + usecs / 1e6);
		if (due > 0)
		{
			pgstat_report_activity(STATE_RUNNING, "clinic_migrate: throttled (max_rows_per_second)");
			sleep_ms((long) (due * 1000));
		}
	}
	while (cm_max_replication_lag > 0 && !cm_got_sigterm)
	{
		double		lag = standby_lag_ms();
		char		activity[96];

		if (lag <= cm_max_replication_lag)
			break;
		snprintf(activity, sizeof(activity),
				 "clinic_migrate: waiting for the standbys to replay (lag %.0f ms)", lag);
		pgstat_report_activity(STATE_RUNNING, activity);
		sleep_ms(1000);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
	}
}

/*
 * Replay rounds until little is left: each round applies what was logged
 * up to its snapshot; writers keep logging meanwhile, so stop once a round
 * finds less than a thousand keys (the sync loop takes it from there).
 */
static void
catch_up(CmWorkerShared *sh, const char *tenant, TenantPlan *plan)
{
	for (int round = 0; round < 1000; round++)
	{
		int64		applied;
		List	   *read;
		List	   *written;

		CHECK_FOR_INTERRUPTS();
		report_activity(sh, NULL, "catching up");
		/* what the WAL has of the tenant's changes, into its log first */
		(void) cm_wal_drain();
		/* the apply lock before the snapshot (see cm_sync_tenant_round) */
		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		(void) cm_lock_tenant_kind(tenant, CM_LOCK_APPLY, true, false);
		SPI_connect();
		PushActiveSnapshot(GetTransactionSnapshot());
		/* a table rewritten since the snapshot: again, with a new one */
		read = apply_relations(plan, sh->schema, &written);
		if (cm_relations_changed_since_snapshot(read, written))
		{
			end_txn();
			round--;
			sleep_ms(10);
			CHECK_FOR_INTERRUPTS();
			continue;
		}
		applied = apply_round(tenant, plan, sh->schema);
		end_txn();
		if (applied < 1000)
			break;
	}
}

/*
 * Capture first, in a transaction of its own: creating the triggers takes
 * a brief lock on each shared table, which must not be held while the rest
 * of the start-up runs.  The checks that need no worker ran in the caller
 * already; they run again here, where the copy will run.
 */
static bool
copy_install_capture(CmWorkerShared *sh, const char *tenant, CmSettings *s, MemoryContext cxt)
{
	TenantPlan *plan;
	bool		wal;

	begin_txn();
	plan = clone_plan_for_tenant((char **) &tenant, s, cxt);
	clone_check_movable(tenant);
	plan_check_copyable(plan);
	clone_check_privileges(plan, tenant);
	clone_check_tenant_exists(plan, tenant);

	/*
	 * The capture method: a copy that resumes keeps the one it started
	 * with (its changes so far were captured that way); a new one gets
	 * what capture_method and the tables allow.
	 */
	if (capture_wal_supported())
		cm_state_exec_tenant("SELECT capture_method FROM clinic_migrate.tenants "
							 "WHERE tenant_id = $1 AND state IN ('copying', 'copied', 'failed') "
							 "AND capture_method IS NOT NULL", tenant);
	if (capture_wal_supported() && SPI_processed > 0)
		wal = strcmp(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1), "wal") == 0;
	else
		wal = capture_wal_choose(plan);
	end_txn();

	/*
	 * From the WAL: the slot first, in a transaction that has written
	 * nothing.  Its creation waits for the transactions running now, as
	 * the wait for older writers below does, at most lock_retry_time.
	 */
	if (wal)
	{
		report_activity(sh, NULL, "creating the replication slot for");
		begin_txn();
		capture_wal_ensure_slot();
		end_txn();
	}

	/*
	 * A transaction each table: its lock is the only one held while it is
	 * waited for.  In one transaction, the tables done so far stay locked
	 * while the next is awaited, and a writer holding that one and wanting
	 * one of them (every multi-table transaction of the application, in its
	 * own order) makes the attempt time out; under steady load, attempt
	 * after attempt.  The tenant is not 'copying' yet, so triggers on some
	 * tables and not others capture nothing of it; the installer's lock,
	 * held by the session from before this until copy_start commits, keeps
	 * the cleanup from taking them off in between (copy_start installs
	 * what is missing).
	 */
	report_activity(sh, NULL, "installing capture for");
	for (int i = 0; i < plan->ncopied; i++)
	{
		begin_txn();
		capture_install_table(plan, i, !wal);
		end_txn();
	}
	return wal;
}

/*
 * The tables of the run, from the tenant's stored plan, which must still be
 * the plan; with their checkpoints, and the rows each has to copy (an
 * index-only count, for progress).  Adds the rows copied by earlier runs to
 * *rows_before.  SPI connected.
 */
static CopyTable *
copy_load_tables(const char *tenant, TenantPlan *plan, MemoryContext cxt, int *ntables_p,
				 int64 *rows_before)
{
	CopyTable  *tables;
	int			ntables;

	cm_state_exec_tenant("SELECT source_table, target_table, rows_total, rows_copied, checkpoint, "
						 "copied, indexed FROM clinic_migrate.tenant_tables "
						 "WHERE tenant_id = $1 ORDER BY position",
						 tenant);
	ntables = SPI_processed;
	if (ntables != plan->ncopied)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the plan changed since tenant \"%s\" started migrating", tenant),
				 errdetail("Its schema has %d tables, the plan now has %d.", ntables, plan->ncopied),
				 errhint("Roll it back with clinic_migrate.rollback_tenant('%s') and migrate again.", tenant)));
	tables = MemoryContextAllocZero(cxt, sizeof(CopyTable) * Max(ntables, 1));
	{
		SPITupleTable *tt = SPI_tuptable;

		for (int i = 0; i < ntables; i++)
		{
			HeapTuple	tup = tt->vals[i];
			bool		isnull;
			Oid			src = DatumGetObjectId(SPI_getbinval(tup, tt->tupdesc, 1, &isnull));
			Datum		d;

			tables[i].pt = plan_find(plan, src);
			if (tables[i].pt == NULL || tables[i].pt->position == 0)
				ereport(ERROR,
						(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						 errmsg("the plan changed since tenant \"%s\" started migrating", tenant),
						 errdetail("Table with OID %u is no longer planned.", src),
						 errhint("Roll it back with clinic_migrate.rollback_tenant('%s') and migrate again.", tenant)));
			tables[i].target = DatumGetObjectId(SPI_getbinval(tup, tt->tupdesc, 2, &isnull));
			d = SPI_getbinval(tup, tt->tupdesc, 3, &isnull);
			tables[i].rows_total = isnull ? -1 : DatumGetInt64(d);
			tables[i].rows_copied = DatumGetInt64(SPI_getbinval(tup, tt->tupdesc, 4, &isnull));
			d = SPI_getbinval(tup, tt->tupdesc, 5, &isnull);
			if (!isnull)
				load_checkpoint(&tables[i], d, cxt);
			tables[i].copied = DatumGetBool(SPI_getbinval(tup, tt->tupdesc, 6, &isnull));
			tables[i].indexed = DatumGetBool(SPI_getbinval(tup, tt->tupdesc, 7, &isnull));
			*rows_before += tables[i].rows_copied;
		}
	}

	/* rows to copy, for progress (an index-only count per table) */
	for (int i = 0; i < ntables; i++)
	{
		CopyTable  *ct = &tables[i];

		ct->bulk = !ct->copied && bulk_allowed(ct->pt->relid, ct->target);

		if (ct->rows_total < 0)
		{
			Oid			types[3] = {TEXTOID, OIDOID, INT8OID};
			Datum		values[3];

			ct->rows_total = count_rows(plan, ct->pt,
										plan_tenant_datum(plan_root(plan, ct->pt), tenant));
			values[0] = CStringGetTextDatum(tenant);
			values[1] = ObjectIdGetDatum(ct->pt->relid);
			values[2] = Int64GetDatum(ct->rows_total);
			cm_state_exec("UPDATE clinic_migrate.tenant_tables SET rows_total = $3 "
						  "WHERE tenant_id = $1 AND source_table = $2",
						  3, types, values, NULL, 0);
		}
	}
	*ntables_p = ntables;
	return tables;
}

/*
 * Start of a run: the plan, the schema and its tables (without indexes),
 * the run record, the tenant's state; any run left 'running' by a dead
 * worker is interrupted.  From this commit on, every backend captures the
 * tenant's writes.  Returns the plan; *tables and *ntables the tables.
 */
static TenantPlan *
copy_start(CmWorkerShared *sh, const char *tenant, CmSettings *s, MemoryContext cxt,
		   int64 *run_id, CopyTable **tables, int *ntables, bool *resumed,
		   bool *already_copied, int64 *rows_before, bool wal)
{
	TenantPlan *plan;
	TenantInfo	info;
	char	   *schema;

	begin_txn();
	plan = clone_plan_for_tenant((char **) &tenant, s, cxt);
	clone_check_movable(tenant);
	clone_tenant_info(tenant, &info);
	*resumed = cm_runs_mark_interrupted(tenant) > 0 ||
		(info.exists && strcmp(info.state, "copying") == 0);
	*already_copied = info.exists && strcmp(info.state, "copied") == 0;
	schema = clone_prepare_schema(tenant, plan, s, true);
	clone_tenant_info(tenant, &info);
	if (strcmp(info.state, "schema_created") == 0)
		(void) clone_reset_if_empty(tenant, schema);
	/* the tenant policies of the shared tables, on the tenant's own */
	cm_rls_cover_tenant(plan, tenant);
	strlcpy(sh->schema, schema, NAMEDATALEN);
	*run_id = cm_run_start(tenant, sh->schema, "migrate", sh->started_by, MyProcPid);

	/* the tables and their rows to copy, before any lock below */
	*tables = copy_load_tables(tenant, plan, cxt, ntables, rows_before);

	/*
	 * The triggers again, under the installer's lock until this commit: a
	 * sync worker that found no tenant needing them may have taken them
	 * off since copy_install_capture (cm_capture_cleanup); it cannot once
	 * the tenant is 'copying'.  Nothing to do when they are all there;
	 * else the shared tables' locks are held only to this commit, just
	 * after.
	 */
	capture_install(plan, !wal);
	cm_state_exec_tenant("UPDATE clinic_migrate.tenants SET state = 'copying', last_error = NULL, "
						 "started_at = CASE WHEN state = 'copying' THEN started_at ELSE clock_timestamp() END, "
						 "completed_at = NULL WHERE tenant_id = $1 AND state <> 'copied'",
						 tenant);
	if (capture_wal_supported())
		cm_state_exec_tenant(wal ? "UPDATE clinic_migrate.tenants SET capture_method = 'wal' WHERE tenant_id = $1" :
						 "UPDATE clinic_migrate.tenants SET capture_method = 'trigger' WHERE tenant_id = $1",
						 tenant);
	/* from this commit on, every backend captures the tenant's writes */
	capture_tenants_changed();
	cm_registry_sync(tenant, "copying", s->source_schema);
	end_txn();
	return plan;
}

/* Copy one table in batches, then build its indexes; each step committed. */
static TimestampTz last_drain = 0;

static void
copy_table(CmWorkerShared *sh, const char *tenant, TenantPlan *plan, CopyTable *ct,
		   int64 run_id, TimestampTz run_start, MemoryContext cxt)
{
	PlanTable  *root = plan_root(plan, ct->pt);
	int64		root_batch = cm_batch_size;

	if (!ct->copied)
	{
		/*
		 * A child table is batched by its root's keys: scale the number
		 * of root rows so that a batch copies about batch_size rows.
		 */
		if (root != ct->pt && ct->rows_total > 0)
		{
			int64		nroot;

			begin_txn();
			nroot = count_root_rows(root, plan_tenant_datum(root, tenant));
			end_txn();
			root_batch = Max(1, (int64) ((double) cm_batch_size * nroot / ct->rows_total));
		}
		for (;;)
		{
			bool		more;

			CHECK_FOR_INTERRUPTS();
			if (cm_got_sigterm)
				ereport(ERROR,
						(errcode(ERRCODE_ADMIN_SHUTDOWN),
						 errmsg("copy of tenant \"%s\" stopped by request at a batch boundary",
								tenant),
						 errhint("Run clinic_migrate.migrate_tenant('%s') again to resume.", tenant)));
			report_activity(sh, ct, "copying");
			more = copy_batch(sh, tenant, plan, ct, root_batch, run_id, cxt);
			if (!more)
				break;
			between_batches(sh, tenant, run_start);
			/*
			 * Captured from the WAL: the slot read into the log every
			 * sync_interval, so that it keeps little WAL however long the
			 * copy (no sync worker runs for a copying tenant).
			 */
			if (TimestampDifferenceExceeds(last_drain, GetCurrentTimestamp(), cm_sync_interval))
			{
				(void) cm_wal_drain();
				last_drain = GetCurrentTimestamp();
			}
			/* batch_size may have been reloaded: child tables scale it again */
			if (root == ct->pt)
				root_batch = cm_batch_size;
		}
	}
	if (!ct->indexed)
	{
		Oid			types[2] = {TEXTOID, OIDOID};
		Datum		values[2];

		report_activity(sh, ct, "indexing");
		/* the deletes still in the WAL are logged first: the prune reads the log */
		(void) cm_wal_drain();
		begin_txn();
		apply_prune_before_index(tenant, plan, sh->schema, ct->pt);
		clone_finish_table(ct->pt, sh->schema);
		values[0] = CStringGetTextDatum(tenant);
		values[1] = ObjectIdGetDatum(ct->pt->relid);
		cm_state_exec("UPDATE clinic_migrate.tenant_tables SET indexed = true, "
					  "index_time = clock_timestamp() - statement_timestamp() "
					  "WHERE tenant_id = $1 AND source_table = $2",
					  2, types, values, NULL, 0);
		end_txn();
		ct->indexed = true;
	}
}

/*
 * Finish: bring the copy up to the present, foreign keys, sequences past
 * the copied keys, and the records.  The last commit waits for the WAL
 * flush: "completed" is a promise.
 */
static void
copy_finish(CmWorkerShared *sh, const char *tenant, TenantPlan *plan, CopyTable *tables,
			int ntables, CmSettings *s, int64 run_id, TimestampTz *mark5)
{
	/*
	 * Finish: foreign keys, sequences past the copied keys, and the records.
	 * This commit waits for the WAL flush: "completed" is a promise.
	 */
	/*
	 * Bring the copy up to the present before the foreign keys: a child row
	 * copied late may point at a parent that arrived after the parent
	 * table's copy and is only in the log.
	 */
	catch_up(sh, tenant, plan);
	report_activity(sh, NULL, "finishing");
	begin_txn();
	clone_finish_schema(plan, sh->schema);
	end_txn();
	begin_txn();
	clone_finish_views(plan, sh->schema);
	end_txn();
	catch_up(sh, tenant, plan);
	*mark5 = GetCurrentTimestamp();
	SetConfigOption("synchronous_commit", "on", PGC_USERSET, PGC_S_SESSION);
	begin_txn();
	/*
	 * No ANALYZE here: the tables have just received their rows, which
	 * makes autovacuum analyze them within autovacuum_naptime.
	 */
	for (int i = 0; i < ntables; i++)
		clone_set_sequences(tables[i].target);
	cm_state_exec_tenant("UPDATE clinic_migrate.tenants SET state = 'copied', structure_done = true, "
						 "completed_at = coalesce(completed_at, clock_timestamp()) WHERE tenant_id = $1",
						 tenant);
	cm_registry_sync(tenant, "copied", s->source_schema);
	{
		int64		done;

		SpinLockAcquire(&sh->mutex);
		done = sh->rows_done;
		SpinLockRelease(&sh->mutex);
		cm_run_finish(run_id, "completed", done, NULL, NULL);
	}
	end_txn();
}

/*
 * copy_install_capture, then copy_start, under the installer's lock held by
 * the session from before the first trigger to the commit of 'copying'.
 */
static TenantPlan *
copy_install_and_start(CmWorkerShared *sh, const char *tenant, CmSettings *s, MemoryContext cxt,
					   int64 *run_id, CopyTable **tables, int *ntables, bool *resumed,
					   bool *already_copied, int64 *rows_before, TimestampTz *installed)
{
	TenantPlan *volatile plan = NULL;

	capture_installer_lock(true);
	PG_TRY();
	{
		bool		wal = copy_install_capture(sh, tenant, s, cxt);

		*installed = GetCurrentTimestamp();
		plan = copy_start(sh, tenant, s, cxt, run_id, tables, ntables, resumed,
						  already_copied, rows_before, wal);
	}
	PG_FINALLY();
	{
		/* a session lock outlives an aborted transaction: give it back */
		capture_installer_lock(false);
	}
	PG_END_TRY();
	return plan;
}

/*
 * Copy the tenant of sh (see copy.h): capture, the start of the run, the
 * wait for older writers, each table in committed batches, the finish.
 */
void
cm_copy_tenant(CmWorkerShared *sh, int64 *run_id)
{
	const char *tenant = sh->tenant;
	CmSettings	s = sh->settings;
	MemoryContext cxt = AllocSetContextCreate(TopMemoryContext, "clinic_migrate copy",
											  ALLOCSET_DEFAULT_SIZES);
	TenantPlan *plan;
	CopyTable  *tables;
	int			ntables;
	int64		rows_before = 0;
	bool		resumed = false;
	bool		already_copied = false;
	TimestampTz run_start;
	TimestampTz mark[7];			/* phase boundaries, for the DEBUG1 line at the end */

	mark[0] = GetCurrentTimestamp();
	ddl_ignore_this_process();
	plan = copy_install_and_start(sh, tenant, &s, cxt, run_id, &tables, &ntables, &resumed,
								  &already_copied, &rows_before, &mark[1]);

	/*
	 * A transaction that began before the commit above may still write
	 * the tenant's rows without capturing them, and commit after the first
	 * batch's snapshot: its write would be in neither.  Wait for every such
	 * transaction to end (as CREATE INDEX CONCURRENTLY does).
	 */
	mark[2] = GetCurrentTimestamp();
	report_activity(sh, NULL, "waiting for older transactions before copying");
	begin_txn();
	capture_wait_for_writers(plan);
	end_txn();
	cm_pause_point("copy_start");

	run_start = mark[3] = GetCurrentTimestamp();
	SpinLockAcquire(&sh->mutex);
	sh->state = CMW_RUNNING;
	sh->resumed = resumed || (rows_before > 0 && !already_copied);
	sh->tables_total = ntables;
	sh->rows_before = rows_before;
	sh->rows_total = 0;
	for (int i = 0; i < ntables; i++)
		sh->rows_total += tables[i].rows_total;
	SpinLockRelease(&sh->mutex);

	for (int i = 0; i < ntables; i++)
	{
		copy_table(sh, tenant, plan, &tables[i], *run_id, run_start, cxt);
		SpinLockAcquire(&sh->mutex);
		sh->tables_done = i + 1;
		SpinLockRelease(&sh->mutex);
	}

	mark[4] = GetCurrentTimestamp();
	copy_finish(sh, tenant, plan, tables, ntables, &s, *run_id, &mark[5]);
	mark[6] = GetCurrentTimestamp();
	pgstat_report_activity(STATE_IDLE, NULL);
#define CM_MS(a, b) (TimestampDifferenceMilliseconds(mark[a], mark[b]))
	ereport(DEBUG1,
			(errmsg_internal("clinic_migrate: migrated tenant \"%s\" in %ld ms: plan and capture %ld, "
							 "schema and records %ld, waiting for older writers %ld, copy and indexes %ld, "
							 "catch-up and foreign keys %ld, sequences and commit %ld",
							 tenant, CM_MS(0, 6), CM_MS(0, 1), CM_MS(1, 2), CM_MS(2, 3), CM_MS(3, 4),
							 CM_MS(4, 5), CM_MS(5, 6))));
#undef CM_MS
}
