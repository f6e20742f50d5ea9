/*-------------------------------------------------------------------------
 * decode.c
 *	  Capture from the WAL (clinic_migrate.capture_method = wal, or auto
 *	  with wal_level = logical): while a tenant copies and syncs, no
 *	  trigger is on the shared tables' INSERT, UPDATE and DELETE path.
 *	  Floor 4 (capture and replay).  May call: floors 1 to 3, capture.
 *
 * The output plugin "clinic_migrate" (this library; pg_squeeze's design):
 * for each change of a table that has a capture log, it emits the
 * columns the log needs (the key, the tenant; a child table's whole row,
 * whose tenant is found through its parent) when the row belongs to a
 * tenant whose changes are captured, or when the WAL does not say whose it
 * was (a DELETE, or an UPDATE of the key, whose old row has the replica
 * identity's columns only).  Which tables and tenants: clinic_migrate's
 * capture_logs and tenants, user catalog tables, read with the decoding
 * snapshot, so that each change is judged by the state its own commit saw.
 *
 * One slot per database, made with the first tenant that captures from the
 * WAL and dropped when none is left.  The drain (the sync worker's, the
 * copy's catch-up, cutover's) peeks at what the slot has up to the WAL
 * flushed when it starts, logs it through capture.c as the trigger would
 * have, commits, and only then moves the slot's confirmed position there:
 * a crash in between reads the same changes again, which replay, by key,
 * takes twice without harm.
 *
 * What the WAL does not carry is left to two triggers the executor skips
 * for ordinary writes: one for UPDATEs that set the tenant column (or a
 * child's foreign key), and the TRUNCATE guard; and to cutover, which puts
 * the full capture triggers on before it pauses the tenant (they pause its
 * writers and refuse them after the switch).
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "access/xlog_internal.h"
#include "access/xlogdefs.h"
#include "catalog/namespace.h"
#include "catalog/partition.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "libpq/pqformat.h"
#include "miscadmin.h"
#include "replication/logical.h"
#include "replication/output_plugin.h"
#include "replication/reorderbuffer.h"
#include "replication/slot.h"
#include "storage/lmgr.h"
#include "parser/parse_relation.h"
#include "utils/builtins.h"
#include "utils/pg_lsn.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/syscache.h"

#include "capture.h"
#include "decode.h"
#include "locks.h"
#include "settings.h"
#include "state.h"
#include "util.h"

/* ---------------- the output plugin ---------------- */

/* a table as the plugin sees it, by OID, in the decoding snapshot */
typedef struct DecodeRel
{
	Oid			relid;			/* hash key */
	bool		valid;
	bool		captured;		/* it (or the partitioned table above it) has a log */
	AttrNumber	tenant_att;		/* InvalidAttrNumber: a child table, every column goes */
	FmgrInfo	tenant_out;
	bool		tenant_bpchar;
	int			natts;			/* the columns emitted */
	AttrNumber	atts[INDEX_MAX_KEYS + 1];
	bool		all;			/* every column (child tables) */
} DecodeRel;

typedef struct DecodeState
{
	MemoryContext cxt;			/* reset per change */
	char	   *tenant_column;
} DecodeState;

static HTAB *decode_rels = NULL;
static HTAB *decode_tenants = NULL; /* tenants captured now, by id text */
static bool decode_tenants_valid = false;
static HTAB *decode_logs = NULL;	/* source table OID -> log OID */
static bool decode_logs_valid = false;
static Oid	decode_tenants_relid = InvalidOid;
static Oid	decode_logs_relid = InvalidOid;
static bool decode_callback = false;

typedef struct DecodeTenant
{
	char		tenant[CM_MAX_TENANT_LEN + 1];
} DecodeTenant;

typedef struct DecodeLog
{
	Oid			source;
	Oid			log;
} DecodeLog;

static void
decode_invalidate(Datum arg, Oid relid)
{
	HASH_SEQ_STATUS seq;
	DecodeRel  *r;

	if (relid == InvalidOid || relid == decode_tenants_relid)
		decode_tenants_valid = false;
	if (relid == InvalidOid || relid == decode_logs_relid)
	{
		decode_logs_valid = false;
		relid = InvalidOid;		/* every table's entry depends on the logs */
	}
	if (decode_rels == NULL)
		return;
	if (relid != InvalidOid)
	{
		r = hash_search(decode_rels, &relid, HASH_FIND, NULL);
		if (r)
			r->valid = false;
		return;
	}
	hash_seq_init(&seq, decode_rels);
	while ((r = hash_seq_search(&seq)) != NULL)
		r->valid = false;
}

static HTAB *
decode_hash(const char *name, Size keysize, Size entrysize, bool strings)
{
	HASHCTL		ctl;

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = keysize;
	ctl.entrysize = entrysize;
	ctl.hcxt = CacheMemoryContext;
	return hash_create(name, 64, &ctl, HASH_ELEM | HASH_CONTEXT | (strings ? HASH_STRINGS : HASH_BLOBS));
}

/* our two user catalog tables, read in the decoding snapshot */
static void
decode_load(void)
{
	Oid			nsp = get_namespace_oid(CM_SCHEMA, true);

	if (!decode_callback)
	{
		CacheRegisterRelcacheCallback(decode_invalidate, (Datum) 0);
		decode_callback = true;
	}
	{
		Oid			t = OidIsValid(nsp) ? get_relname_relid("tenants", nsp) : InvalidOid;
		Oid			l = OidIsValid(nsp) ? get_relname_relid("capture_logs", nsp) : InvalidOid;

		/* the extension made again since: nothing cached holds */
		if (t != decode_tenants_relid || l != decode_logs_relid)
			decode_invalidate((Datum) 0, InvalidOid);
		decode_tenants_relid = t;
		decode_logs_relid = l;
	}

	if (!decode_tenants_valid)
	{
		decode_tenants_valid = true;
		if (decode_tenants)
			hash_destroy(decode_tenants);
		decode_tenants = decode_hash("clinic_migrate decoded tenants", CM_MAX_TENANT_LEN + 1,
									 sizeof(DecodeTenant), true);
		if (OidIsValid(decode_tenants_relid))
		{
			Relation	rel = table_open(decode_tenants_relid, AccessShareLock);
			AttrNumber	att_tenant = attnameAttNum(rel, "tenant_id", false);
			AttrNumber	att_state = attnameAttNum(rel, "state", false);
			SysScanDesc scan = systable_beginscan(rel, InvalidOid, false, NULL, 0, NULL);
			HeapTuple	tup;

			while ((tup = systable_getnext(scan)) != NULL)
			{
				bool		isnull;
				char	   *tenant = TextDatumGetCString(heap_getattr(tup, att_tenant, RelationGetDescr(rel), &isnull));
				char	   *state = TextDatumGetCString(heap_getattr(tup, att_state, RelationGetDescr(rel), &isnull));

				/* every tenant whose changes are captured, whatever its method */
				if (cm_state_code(state) == CM_STATE_CAPTURE && strlen(tenant) <= CM_MAX_TENANT_LEN)
					(void) hash_search(decode_tenants, tenant, HASH_ENTER, NULL);
			}
			systable_endscan(scan);
			table_close(rel, AccessShareLock);
		}
	}
	if (!decode_logs_valid)
	{
		decode_logs_valid = true;
		if (decode_logs)
			hash_destroy(decode_logs);
		decode_logs = decode_hash("clinic_migrate decoded logs", sizeof(Oid), sizeof(DecodeLog), false);
		if (OidIsValid(decode_logs_relid))
		{
			Relation	rel = table_open(decode_logs_relid, AccessShareLock);
			AttrNumber	att_source = attnameAttNum(rel, "source_table", false);
			AttrNumber	att_log = attnameAttNum(rel, "log_table", false);
			SysScanDesc scan = systable_beginscan(rel, InvalidOid, false, NULL, 0, NULL);
			HeapTuple	tup;

			while ((tup = systable_getnext(scan)) != NULL)
			{
				bool		isnull;
				Oid			source = DatumGetObjectId(heap_getattr(tup, att_source, RelationGetDescr(rel), &isnull));
				Oid			log = DatumGetObjectId(heap_getattr(tup, att_log, RelationGetDescr(rel), &isnull));
				DecodeLog  *l = hash_search(decode_logs, &source, HASH_ENTER, NULL);

				l->log = log;
			}
			systable_endscan(scan);
			table_close(rel, AccessShareLock);
		}
	}
}

/* the table at the top of a partition tree, or relid */
static Oid
decode_base(Relation rel)
{
	if (rel->rd_rel->relispartition)
	{
		List	   *up = get_partition_ancestors(RelationGetRelid(rel));

		if (up != NIL)
			return llast_oid(up);
	}
	return RelationGetRelid(rel);
}

static DecodeRel *
decode_rel(Relation rel, DecodeState *st)
{
	Oid			relid = RelationGetRelid(rel);
	bool		found;
	DecodeRel  *r;
	DecodeLog  *l;
	Oid			base;

	decode_load();
	if (decode_rels == NULL)
		decode_rels = decode_hash("clinic_migrate decoded tables", sizeof(Oid), sizeof(DecodeRel), false);
	r = hash_search(decode_rels, &relid, HASH_ENTER, &found);
	if (found && r->valid)
		return r;
	memset(((char *) r) + sizeof(Oid), 0, sizeof(DecodeRel) - sizeof(Oid));
	r->valid = true;
	base = decode_base(rel);
	l = hash_search(decode_logs, &base, HASH_FIND, NULL);
	if (l == NULL || !OidIsValid(l->log))
		return r;
	r->captured = true;
	r->tenant_att = (st->tenant_column && st->tenant_column[0]) ?
		get_attnum(relid, st->tenant_column) : InvalidAttrNumber;
	/* a system column is no tenant column */
	if (r->tenant_att < 0)
		r->tenant_att = InvalidAttrNumber;
	if (r->tenant_att == InvalidAttrNumber)
	{
		r->all = true;
		return r;
	}
	{
		Oid			typid = get_atttype(relid, r->tenant_att);
		Oid			typout;
		bool		varlena;

		getTypeOutputInfo(typid, &typout, &varlena);
		fmgr_info_cxt(typout, &r->tenant_out, CacheMemoryContext);
		r->tenant_bpchar = getBaseType(typid) == BPCHAROID;
	}
	/* the tenant, then the log's key columns, by name, in this table */
	r->atts[r->natts++] = r->tenant_att;
	{
		Relation	logrel = table_open(l->log, AccessShareLock);
		TupleDesc	desc = RelationGetDescr(logrel);

		for (int i = 0; i < desc->natts && r->natts <= INDEX_MAX_KEYS; i++)
		{
			Form_pg_attribute a = TupleDescAttr(desc, i);
			AttrNumber	att;

			if (a->attisdropped || strcmp(NameStr(a->attname), "_cm_tenant") == 0 ||
				strcmp(NameStr(a->attname), "_cm_at") == 0)
				continue;
			att = get_attnum(relid, NameStr(a->attname));
			if (att <= 0)
			{
				/* a key column gone: let the drain's error say so, with every column */
				r->all = true;
				break;
			}
			r->atts[r->natts++] = att;
		}
		table_close(logrel, AccessShareLock);
	}
	return r;
}

/* is the tenant in this row captured?  -1: the row does not say */
static int
decode_row_captured(Relation rel, DecodeRel *r, HeapTuple tup)
{
	bool		isnull;
	Datum		d;
	char	   *t;

	if (r->tenant_att == InvalidAttrNumber)
		return -1;
	d = heap_getattr(tup, r->tenant_att, RelationGetDescr(rel), &isnull);
	if (isnull)
		return -1;
	t = OutputFunctionCall(&r->tenant_out, d);
	if (r->tenant_bpchar)
	{
		int			len = strlen(t);

		while (len > 0 && t[len - 1] == ' ')
			t[--len] = '\0';
	}
	if (strlen(t) > CM_MAX_TENANT_LEN)
		return 0;
	return hash_search(decode_tenants, t, HASH_FIND, NULL) != NULL;
}

static void
decode_write_tuple(StringInfo out, Relation rel, DecodeRel *r, HeapTuple tup)
{
	TupleDesc	desc = RelationGetDescr(rel);
	int			n = r->all ? desc->natts : r->natts;

	pq_sendint16(out, n);
	for (int i = 0; i < n; i++)
	{
		AttrNumber	att = r->all ? i + 1 : r->atts[i];
		Form_pg_attribute a = TupleDescAttr(desc, att - 1);
		bool		isnull;
		Datum		d;

		pq_sendint16(out, att);
		if (a->attisdropped)
		{
			pq_sendbyte(out, 'n');
			continue;
		}
		d = heap_getattr(tup, att, desc, &isnull);
		if (isnull)
			pq_sendbyte(out, 'n');
		else if (a->attlen == -1 && VARATT_IS_EXTERNAL_ONDISK(DatumGetPointer(d)))
			pq_sendbyte(out, 'u');	/* unchanged, in TOAST: not in the WAL record */
		else
		{
			Oid			typout;
			bool		varlena;
			char	   *text;

			getTypeOutputInfo(a->atttypid, &typout, &varlena);
			text = OidOutputFunctionCall(typout, d);
			pq_sendbyte(out, 't');
			pq_sendint32(out, strlen(text));
			pq_sendbytes(out, text, strlen(text));
		}
	}
}

static void
decode_startup(LogicalDecodingContext *ctx, OutputPluginOptions *opt, bool is_init)
{
	DecodeState *st = palloc0(sizeof(DecodeState));
	ListCell   *lc;

	st->cxt = AllocSetContextCreate(ctx->context, "clinic_migrate decoding", ALLOCSET_DEFAULT_SIZES);
	foreach(lc, ctx->output_plugin_options)
	{
		DefElem    *e = lfirst(lc);

		if (strcmp(e->defname, "tenant_column") == 0 && e->arg)
			st->tenant_column = pstrdup(strVal(e->arg));
		else
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("option \"%s\" of clinic_migrate's output plugin is unknown", e->defname)));
	}
	ctx->output_plugin_private = st;
	/*
	 * Read the tables again from the first change on: this backend's
	 * caches were filled by an earlier call, at a later point of the WAL,
	 * maybe before the extension was dropped and made again.
	 */
	decode_invalidate((Datum) 0, InvalidOid);
	opt->output_type = OUTPUT_PLUGIN_BINARY_OUTPUT;
	opt->receive_rewrites = false;
}

static void
decode_shutdown(LogicalDecodingContext *ctx)
{
	/* the caches belong to the backend: kept for its next call */
}

static void
decode_begin(LogicalDecodingContext *ctx, ReorderBufferTXN *txn)
{
}

static void
decode_commit(LogicalDecodingContext *ctx, ReorderBufferTXN *txn, XLogRecPtr commit_lsn)
{
}

static void
decode_change(LogicalDecodingContext *ctx, ReorderBufferTXN *txn, Relation rel,
			  ReorderBufferChange *change)
{
	DecodeState *st = ctx->output_plugin_private;
	DecodeRel  *r;
	HeapTuple	oldtup = NULL;
	HeapTuple	newtup = NULL;
	char		action;
	bool		emit;
	MemoryContext old;

	r = decode_rel(rel, st);
	if (!r->captured)
		return;
	switch (change->action)
	{
		case REORDER_BUFFER_CHANGE_INSERT:
			action = 'I';
			break;
		case REORDER_BUFFER_CHANGE_UPDATE:
			action = 'U';
			break;
		case REORDER_BUFFER_CHANGE_DELETE:
			action = 'D';
			break;
		default:
			return;
	}
	if (change->data.tp.oldtuple)
		oldtup = &change->data.tp.oldtuple->tuple;
	if (change->data.tp.newtuple)
		newtup = &change->data.tp.newtuple->tuple;
	if (action == 'D' && oldtup == NULL)
	{
		/*
		 * A DELETE that logged no old row: the table lost the replica
		 * identity its capture needs.  The drain fails rather than lose it.
		 */
		OutputPluginPrepareWrite(ctx, true);
		pq_sendbyte(ctx->out, 'X');
		pq_sendint32(ctx->out, RelationGetRelid(rel));
		pq_sendint64(ctx->out, txn->xact_time.commit_time);
		pq_sendint64(ctx->out, txn->end_lsn);
		OutputPluginWrite(ctx, true);
		return;
	}
	if (oldtup == NULL && newtup == NULL)
		return;

	old = MemoryContextSwitchTo(st->cxt);
	if (r->tenant_att == InvalidAttrNumber)
		emit = true;			/* a child row: its tenant is found at the drain */
	else
	{
		/* a row whose old tenant the WAL does not carry goes: the drain asks the copies */
		emit = (newtup && decode_row_captured(rel, r, newtup) == 1) ||
			(oldtup && decode_row_captured(rel, r, oldtup) != 0);
	}
	if (emit)
	{
		OutputPluginPrepareWrite(ctx, true);
		pq_sendbyte(ctx->out, action);
		pq_sendint32(ctx->out, RelationGetRelid(rel));
		pq_sendint64(ctx->out, txn->xact_time.commit_time);
		pq_sendint64(ctx->out, txn->end_lsn);
		pq_sendbyte(ctx->out, oldtup ? 1 : 0);
		if (oldtup)
			decode_write_tuple(ctx->out, rel, r, oldtup);
		pq_sendbyte(ctx->out, newtup ? 1 : 0);
		if (newtup)
			decode_write_tuple(ctx->out, rel, r, newtup);
		OutputPluginWrite(ctx, true);
	}
	MemoryContextSwitchTo(old);
	MemoryContextReset(st->cxt);
}

static bool
decode_filter_origin(LogicalDecodingContext *ctx, RepOriginId origin_id)
{
	return false;
}

extern PGDLLEXPORT void _PG_output_plugin_init(OutputPluginCallbacks *cb);

void
_PG_output_plugin_init(OutputPluginCallbacks *cb)
{
	cb->startup_cb = decode_startup;
	cb->begin_cb = decode_begin;
	cb->change_cb = decode_change;
	cb->commit_cb = decode_commit;
	cb->filter_by_origin_cb = decode_filter_origin;
	cb->shutdown_cb = decode_shutdown;
}

/* ---------------- the slot and the drain ---------------- */

bool
capture_wal_supported(void)
{
	Oid			nsp = get_namespace_oid(CM_SCHEMA, true);
	Oid			rel = OidIsValid(nsp) ? get_relname_relid("tenants", nsp) : InvalidOid;

	return OidIsValid(rel) && get_attnum(rel, "capture_method") != InvalidAttrNumber;
}

char *
capture_wal_slot_name(void)
{
	return psprintf("clinic_migrate_%u", MyDatabaseId);
}

bool
capture_wal_slot_exists(bool *lost)
{
	char	   *name = capture_wal_slot_name();
	bool		found = false;

	if (lost)
		*lost = false;
	LWLockAcquire(ReplicationSlotControlLock, LW_SHARED);
	for (int i = 0; i < max_replication_slots; i++)
	{
		ReplicationSlot *s = &ReplicationSlotCtl->replication_slots[i];

		if (s->in_use && strcmp(NameStr(s->data.name), name) == 0)
		{
			found = true;
			/* made by someone else under our name (a REPLICATION role may): not ours to read */
			if (s->data.database != MyDatabaseId || strcmp(NameStr(s->data.plugin), "clinic_migrate") != 0)
			{
				LWLockRelease(ReplicationSlotControlLock);
				ereport(ERROR,
						(errcode(ERRCODE_DUPLICATE_OBJECT),
						 errmsg("replication slot %s is not clinic_migrate's", name),
						 errdetail("Its output plugin is \"%s\".", NameStr(s->data.plugin)),
						 errhint("Drop it (pg_drop_replication_slot), or capture with triggers (capture_method = trigger).")));
			}
			if (lost)
			{
				SpinLockAcquire(&s->mutex);
				*lost = XLogRecPtrIsInvalid(s->data.restart_lsn) &&
					!XLogRecPtrIsInvalid(s->data.invalidated_at);
				SpinLockRelease(&s->mutex);
			}
			break;
		}
	}
	LWLockRelease(ReplicationSlotControlLock);
	return found;
}

int64
capture_wal_retained(void)
{
	char	   *name = capture_wal_slot_name();
	int64		bytes = -1;

	LWLockAcquire(ReplicationSlotControlLock, LW_SHARED);
	for (int i = 0; i < max_replication_slots; i++)
	{
		ReplicationSlot *s = &ReplicationSlotCtl->replication_slots[i];

		if (s->in_use && strcmp(NameStr(s->data.name), name) == 0)
		{
			XLogRecPtr	restart;

			SpinLockAcquire(&s->mutex);
			restart = s->data.restart_lsn;
			SpinLockRelease(&s->mutex);
			bytes = XLogRecPtrIsInvalid(restart) ? 0 : (int64) (GetXLogInsertRecPtr() - restart);
			break;
		}
	}
	LWLockRelease(ReplicationSlotControlLock);
	return bytes;
}

/* which tables cannot be captured from the WAL, and why; NULL when all can */
static char *
wal_unsuitable(TenantPlan *plan)
{
	StringInfoData why;

	initStringInfo(&why);
	for (int i = 0; i < plan->ncopied; i++)
	{
		PlanTable  *pt = &plan->tables[i];
		Relation	rel = table_open(pt->relid, AccessShareLock);
		Bitmapset  *ident = RelationGetIndexAttrBitmap(rel, INDEX_ATTR_BITMAP_IDENTITY_KEY);
		bool		full = rel->rd_rel->relreplident == REPLICA_IDENTITY_FULL;
		List	   *keys = plan_key_columns(pt);
		ListCell   *lc;

		/* the old row of a DELETE must carry the key the log needs */
		foreach(lc, keys)
		{
			AttrNumber	att = get_attnum(pt->relid, (char *) lfirst(lc));

			if (!full && (att == InvalidAttrNumber ||
						  !bms_is_member(att - FirstLowInvalidHeapAttributeNumber, ident)))
			{
				appendStringInfo(&why, "%s%s (its replica identity does not hold key column %s)",
								 why.len ? ", " : "", cm_qualified_relname(pt->relid),
								 quote_identifier((char *) lfirst(lc)));
				break;
			}
		}
		table_close(rel, AccessShareLock);
	}
	return why.len ? why.data : NULL;
}

bool
capture_wal_choose(TenantPlan *plan)
{
	const char *method = cm_capture_method == CM_CAPTURE_WAL ? "wal" :
		cm_capture_method == CM_CAPTURE_TRIGGER ? "trigger" : "auto";
	char	   *why;

	if (strcmp(method, "trigger") == 0 || !capture_wal_supported())
		return false;
	/*
	 * Before 15.13 an invalidation sent by a transaction reached the
	 * decoding of transactions running at its commit only at their end:
	 * the plugin could judge a change by the tenants as they were before.
	 */
	if (atoi(GetConfigOption("server_version_num", false, false)) < 150013)
	{
		if (strcmp(method, "wal") == 0)
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("capture from the WAL needs PostgreSQL 15.13 or later")));
		return false;
	}
	if (wal_level < WAL_LEVEL_LOGICAL)
	{
		if (strcmp(method, "wal") == 0)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("clinic_migrate.capture_method is wal, but wal_level is %s",
							GetConfigOption("wal_level", false, false)),
					 errhint("Set wal_level = logical (a restart), or capture_method = auto or trigger.")));
		return false;
	}
	why = wal_unsuitable(plan);
	if (why)
	{
		if (strcmp(method, "wal") == 0)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("these tables cannot be captured from the WAL: %s", why),
					 errhint("Give them a replica identity that holds the key (the primary key is the default one; "
							 "ALTER TABLE ... REPLICA IDENTITY USING INDEX ...), or set capture_method = auto or trigger.")));
		ereport(NOTICE,
				(errmsg("capturing with triggers: %s", why)));
		return false;
	}
	return true;
}

static int64 decode_apply_message(const char *data, int len, const char *tenant_column,
								  XLogRecPtr skip_upto);
static void drop_slot(void);

/* is a tenant captured from the WAL now?  (SPI connected) */
static bool
wal_tenants_exist(void)
{
	CommandCounterIncrement();
	cm_state_exec("SELECT 1 FROM clinic_migrate.tenants WHERE capture_method = 'wal' "
				  "AND state IN ('copying', 'copied', 'failed') LIMIT 1", 0, NULL, NULL, NULL, 0);
	return SPI_processed > 0;
}

/*
 * output_plugin_libraries (a superuser setting) lists the libraries a
 * slot may be made or read with: ours, for the statement, as the
 * extension's owner does it.  Returns the GUC nest level to restore.
 */
static int
allow_our_plugin(void)
{
	int			nest = NewGUCNestLevel();
	const char *now = GetConfigOption("output_plugin_libraries", true, false);

	if (now != NULL)
		(void) set_config_option("output_plugin_libraries",
								 now[0] ? psprintf("%s, clinic_migrate", now) : "clinic_migrate",
								 PGC_SUSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	return nest;
}

void
capture_wal_ensure_slot(void)
{
	CmRoleSave	save;
	Oid			types[1] = {TEXTOID};
	Datum		values[1];
	char		timeout[32];
	int			nest;

	{
		bool		lost;

		if (capture_wal_slot_exists(&lost))
		{
			if (!lost)
				return;
			/* a slot that lost WAL is of no use to anyone: made again, if nobody still counts on it */
			if (wal_tenants_exist())
				ereport(ERROR,
						(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						 errmsg("the replication slot %s of clinic_migrate has lost WAL it needed",
								capture_wal_slot_name()),
						 errhint("Roll back the tenants captured from the WAL (clinic_migrate.status), then migrate again.")));
			drop_slot();
		}
		else if (wal_tenants_exist())
		{
			/*
			 * Gone while tenants count on it (a failover, a restore, a drop
			 * by hand): a new one would not have what happened since.
			 */
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("the replication slot %s of clinic_migrate is gone", capture_wal_slot_name()),
					 errdetail("Tenants are captured from the WAL; their changes since it went are not captured."),
					 errhint("Roll back the tenants captured from the WAL (clinic_migrate.status), then migrate again.")));
		}
	}
	values[0] = CStringGetTextDatum(capture_wal_slot_name());
	/* it waits for the transactions running now: at most lock_retry_time */
	nest = NewGUCNestLevel();
	snprintf(timeout, sizeof(timeout), "%d", Max(cm_lock_retry_time, 1) * 1000);
	(void) set_config_option("statement_timeout", timeout, PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	cm_owner_begin(&save);
	(void) allow_our_plugin();
	PG_TRY();
	{
		if (SPI_execute_with_args("SELECT pg_catalog.pg_create_logical_replication_slot($1, 'clinic_migrate')",
								  1, types, values, NULL, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "clinic_migrate: could not create the replication slot");
	}
	PG_CATCH();
	{
		ErrorData  *e;

		MemoryContextSwitchTo(TopTransactionContext);
		e = CopyErrorData();
		FlushErrorState();
		if (e->sqlerrcode == ERRCODE_QUERY_CANCELED)
			ereport(ERROR,
					(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
					 errmsg("could not start capture from the WAL within clinic_migrate.lock_retry_time (%d s)",
							cm_lock_retry_time),
					 errdetail("Creating the replication slot waits for every transaction running when it starts, "
							   "and one of them is still open."),
					 errhint("Find it in pg_stat_activity (xact_start) and end it, or raise clinic_migrate.lock_retry_time.")));
		cm_hide_internal_sql(e);
		ReThrowError(e);
	}
	PG_END_TRY();
	cm_role_end(&save);
	AtEOXact_GUC(true, nest);
}



XLogRecPtr
capture_wal_read(int64 *changes, XLogRecPtr skip_upto)
{
	return capture_wal_read_some(changes, skip_upto, 0, NULL);
}

/* the position read up to: the end of the last transaction read when max_changes cut it short */
static XLogRecPtr drain_last_end;

XLogRecPtr
capture_wal_read_some(int64 *changes, XLogRecPtr skip_upto, int64 max_changes, bool *more)
{
	CmRoleSave	save;
	XLogRecPtr	upto;
	LOCKTAG		tag;
	bool		lost;
	Portal		portal;
	Oid			types[4] = {TEXTOID, PG_LSNOID, TEXTOID, INT4OID};
	Datum		values[4];
	char		nulls[4] = {' ', ' ', ' ', 'n'};
	volatile int64 n = 0;
	volatile int64 rows = 0;
	const char *tenant_column;
	MemoryContext msgcxt;

	*changes = 0;
	if (more)
		*more = false;
	drain_last_end = InvalidXLogRecPtr;
	if (!capture_wal_supported())
		return InvalidXLogRecPtr;
	if (!capture_wal_slot_exists(&lost))
	{
		/* gone while a tenant needs it (dropped by hand, or by a DROP EXTENSION that failed) */
		cm_state_exec("SELECT string_agg(pg_catalog.quote_literal(tenant_id), ', ') FROM clinic_migrate.tenants "
					  "WHERE capture_method = 'wal' AND state IN ('copying', 'copied', 'failed') "
					  "HAVING count(*) > 0", 0, NULL, NULL, NULL, 0);
		if (SPI_processed > 0)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("the replication slot %s of clinic_migrate is gone", capture_wal_slot_name()),
					 errdetail("Tenants %s are captured from the WAL; their changes since it went are not captured.",
							   SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1)),
					 errhint("Roll those tenants back (clinic_migrate.rollback_tenant) and migrate them again.")));
		return InvalidXLogRecPtr;
	}
	if (lost && !wal_tenants_exist())
		return InvalidXLogRecPtr;	/* nobody needs it: the cleanup drops it */
	if (lost)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the replication slot %s of clinic_migrate has lost WAL it needed",
						capture_wal_slot_name()),
				 errdetail("It kept more than max_slot_wal_keep_size allows, so changes of the tenants captured "
						   "from the WAL may be missing from their copies."),
				 errhint("Roll those tenants back (clinic_migrate.rollback_tenant) and migrate them again.")));
	/* one drain at a time: a slot has one reader */
	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, 0, 4, CM_LOCK_FIELD4);
	(void) LockAcquire(&tag, ExclusiveLock, false, false);

	/*
	 * Up to the WAL written now, flushed: a commit made with
	 * synchronous_commit off before this drain is read by it.
	 */
	/*
	 * The tenant column the captured tenants started with (a session's
	 * setting may say another): one for all of them.
	 */
	CommandCounterIncrement();
	cm_state_exec("SELECT DISTINCT tenant_column::pg_catalog.text FROM clinic_migrate.tenants "
				  "WHERE state IN ('copying', 'copied', 'failed') AND capture_method = 'wal' "
				  "AND tenant_column IS NOT NULL",
				  0, NULL, NULL, NULL, 0);
	if (SPI_processed > 1)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("tenants captured now have different tenant columns"),
				 errhint("Capture from the WAL needs one tenant column for all the tenants that move at once: "
						 "finish or roll back the others, or capture with triggers (capture_method = trigger).")));
	tenant_column = SPI_processed == 1 ?
		MemoryContextStrdup(CurTransactionContext,
							SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1)) :
		(cm_tenant_column ? cm_tenant_column : "");

	upto = GetXLogInsertRecPtr();
	/*
	 * The insert position skips a page's header once a record ends at the
	 * page's start: flush up to where that record ended.
	 */
	if (XLogSegmentOffset(upto, wal_segment_size) == SizeOfXLogLongPHD)
		upto -= SizeOfXLogLongPHD;
	else if (upto % XLOG_BLCKSZ == SizeOfXLogShortPHD)
		upto -= SizeOfXLogShortPHD;
	XLogFlush(upto);
	upto = GetFlushRecPtr(NULL);
	values[0] = CStringGetTextDatum(capture_wal_slot_name());
	values[1] = LSNGetDatum(upto);
	values[2] = CStringGetTextDatum(tenant_column);

	/*
	 * At most max_changes rows: the decoding stops after the transaction
	 * that reaches them, whole transactions only.
	 */
	if (max_changes > 0)
	{
		values[3] = Int32GetDatum((int32) Min(max_changes, PG_INT32_MAX));
		nulls[3] = ' ';
	}
	cm_owner_begin(&save);
	(void) allow_our_plugin();
	portal = SPI_cursor_open_with_args(NULL,
									   "SELECT data FROM pg_catalog.pg_logical_slot_peek_binary_changes("
									   "$1, $2, $4, 'tenant_column', $3)",
									   4, types, values, nulls, true, 0);
	cm_role_end(&save);
	msgcxt = AllocSetContextCreate(CurrentMemoryContext, "clinic_migrate drain", ALLOCSET_DEFAULT_SIZES);
	PG_TRY();
	{
		for (;;)
		{
			cm_owner_begin(&save);
			(void) allow_our_plugin();
			SPI_cursor_fetch(portal, true, 1000);
			cm_role_end(&save);
			if (SPI_processed == 0)
				break;
			for (uint64 i = 0; i < SPI_processed; i++)
			{
				bool		isnull;
				bytea	   *b = DatumGetByteaPP(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
				MemoryContext old = MemoryContextSwitchTo(msgcxt);

				/* each change's tuples and lookups freed after it */
				n += decode_apply_message(VARDATA_ANY(b), VARSIZE_ANY_EXHDR(b), tenant_column, skip_upto);
				rows++;
				MemoryContextSwitchTo(old);
				MemoryContextReset(msgcxt);
			}
			SPI_freetuptable(SPI_tuptable);
			CHECK_FOR_INTERRUPTS();
		}
	}
	PG_CATCH();
	{
		/*
		 * PostgreSQL releases a slot left acquired by an error only at the
		 * top level: a caller that catches the error (a worker, a PL/pgSQL
		 * EXCEPTION block around sync_now) would keep it busy for others.
		 */
		if (MyReplicationSlot != NULL)
			ReplicationSlotRelease();
		PG_RE_THROW();
	}
	PG_END_TRY();
	MemoryContextDelete(msgcxt);
	SPI_cursor_close(portal);
	*changes = n;

	/*
	 * Cut short: read up to the end of the last transaction read (the
	 * transactions before it with nothing to capture were decoded too).
	 * The rest is read by the next call.
	 */
	if (max_changes > 0 && rows >= max_changes && !XLogRecPtrIsInvalid(drain_last_end) &&
		drain_last_end < upto)
	{
		if (more)
			*more = true;
		return drain_last_end;
	}
	return upto;
}

void
capture_wal_confirm(XLogRecPtr upto)
{
	CmRoleSave	save;
	Oid			types[2] = {TEXTOID, PG_LSNOID};
	Datum		values[2];
	LOCKTAG		tag;

	if (XLogRecPtrIsInvalid(upto) || !capture_wal_slot_exists(NULL))
		return;
	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, 0, 4, CM_LOCK_FIELD4);
	(void) LockAcquire(&tag, ExclusiveLock, false, false);
	values[0] = CStringGetTextDatum(capture_wal_slot_name());
	values[1] = LSNGetDatum(upto);
	cm_owner_begin(&save);
	/* never backwards: another drain may have confirmed further meanwhile */
	if (SPI_execute_with_args("SELECT pg_catalog.pg_replication_slot_advance($1, $2) "
							  "FROM pg_catalog.pg_replication_slots "
							  "WHERE slot_name = $1 AND confirmed_flush_lsn < $2",
							  2, types, values, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "clinic_migrate: could not advance the replication slot");
	cm_role_end(&save);
}

/*
 * One emitted tuple, as a tuple of rel: the columns in needed (by attnum),
 * read with their base type's input function (no domain's CHECK runs: the
 * values were committed), the others NULL.  The caller runs this as the
 * table's owner in a security-restricted operation: a composite or array
 * of a domain still runs the domain's code, with no more than the owner's
 * rights.  A column not needed is not read: a type changed since (ALTER
 * COLUMN TYPE of another column) does not matter.
 */
static HeapTuple
decode_read_tuple(StringInfo in, Relation rel, const bool *needed)
{
	TupleDesc	desc = RelationGetDescr(rel);
	Datum	   *values = palloc0(sizeof(Datum) * desc->natts);
	bool	   *nulls = palloc(sizeof(bool) * desc->natts);
	int			n = pq_getmsgint(in, 2);

	for (int i = 0; i < desc->natts; i++)
		nulls[i] = true;
	for (int i = 0; i < n; i++)
	{
		AttrNumber	att = (int16) pq_getmsgint(in, 2);
		char		kind = pq_getmsgbyte(in);
		int			len;
		char	   *text;

		if (kind != 't')
			continue;
		len = pq_getmsgint(in, 4);
		if (len < 0 || len > in->len - in->cursor)
			elog(ERROR, "clinic_migrate: a change from the replication slot is malformed");
		/* a column dropped since, or not one the log needs */
		if (att < 1 || att > desc->natts || TupleDescAttr(desc, att - 1)->attisdropped || !needed[att])
		{
			in->cursor += len;
			continue;
		}
		text = palloc(len + 1);
		pq_copymsgbytes(in, text, len);
		text[len] = '\0';
		{
			Form_pg_attribute a = TupleDescAttr(desc, att - 1);
			int32		typmod = a->atttypmod;
			Oid			base = getBaseTypeAndTypmod(a->atttypid, &typmod);
			Oid			typinput;
			Oid			typioparam;

			getTypeInputInfo(base, &typinput, &typioparam);
			values[att - 1] = OidInputFunctionCall(typinput, text, typioparam, typmod);
			nulls[att - 1] = false;
		}
	}
	return heap_form_tuple(desc, values, nulls);
}

static int64
decode_apply_message(const char *data, int len, const char *tenant_column, XLogRecPtr skip_upto)
{
	XLogRecPtr	end_lsn;
	StringInfoData in;
	char		action;
	Oid			relid;
	TimestampTz committed;
	HeapTuple	oldtup = NULL;
	HeapTuple	newtup = NULL;
	Relation	rel;
	bool	   *needed;
	CmRoleSave	save;

	in.data = (char *) data;
	in.len = len;
	in.maxlen = len;
	in.cursor = 0;
	action = pq_getmsgbyte(&in);
	relid = pq_getmsgint(&in, 4);
	committed = pq_getmsgint64(&in);
	end_lsn = pq_getmsgint64(&in);
	if (end_lsn > drain_last_end)
		drain_last_end = end_lsn;
	/* read already by this session's earlier call, in this transaction (sync_now) */
	if (end_lsn <= skip_upto)
		return 0;
	if (action == 'X')
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("a DELETE of table %s logged no key in the WAL",
						get_rel_name(relid) ? get_rel_name(relid) : "(dropped)"),
				 errdetail("Its replica identity was changed or dropped while tenants are captured from the WAL."),
				 errhint("Give it back a replica identity that holds its key, then roll back the tenants "
						 "captured from the WAL and migrate them again.")));
	if (action != 'I' && action != 'U' && action != 'D')
		elog(ERROR, "clinic_migrate: unknown change '%c' from the replication slot", action);
	/* a table dropped since: its copies and log went with it */
	rel = try_table_open(relid, AccessShareLock);
	if (rel == NULL)
		return 0;
	needed = capture_wal_needed(rel, tenant_column);
	/* whatever a column's type runs, it runs as the table's owner, restricted */
	cm_table_owner_begin(relid, &save);
	if (pq_getmsgbyte(&in))
		oldtup = decode_read_tuple(&in, rel, needed);
	if (pq_getmsgbyte(&in))
		newtup = decode_read_tuple(&in, rel, needed);
	capture_row_from_wal(rel, oldtup, newtup, committed, tenant_column);
	cm_role_end(&save);
	table_close(rel, NoLock);
	return 1;
}

static void
drop_slot(void)
{
	CmRoleSave	save;
	Oid			types[1] = {TEXTOID};
	Datum		values[1];

	values[0] = CStringGetTextDatum(capture_wal_slot_name());
	cm_owner_begin(&save);
	if (SPI_execute_with_args("SELECT pg_catalog.pg_drop_replication_slot(slot_name) "
							  "FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
							  1, types, values, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "clinic_migrate: could not drop the replication slot");
	cm_role_end(&save);
}

bool
capture_wal_drop_if_unused(void)
{
	LOCKTAG		tag;

	if (!capture_wal_slot_exists(NULL))
		return true;
	if (!capture_wal_supported())
		return false;
	/* not while an installer may be about to use it, nor while a drain reads it */
	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, 0, 1, CM_LOCK_FIELD4);
	if (LockAcquire(&tag, ExclusiveLock, false, true) == LOCKACQUIRE_NOT_AVAIL)
		return false;
	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, 0, 4, CM_LOCK_FIELD4);
	if (LockAcquire(&tag, ExclusiveLock, false, true) == LOCKACQUIRE_NOT_AVAIL)
		return false;
	AcceptInvalidationMessages();
	if (wal_tenants_exist())
		return false;
	drop_slot();
	return true;
}

/* ---- the slot dropped with the extension, at commit ---- */

static bool drop_at_commit = false;
static bool xact_callback_set = false;

static void
drop_at_commit_callback(XactEvent event, void *arg)
{
	char	   *name;
	bool		exists;
	LOCKTAG		tag;

	if (event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT)
	{
		drop_at_commit = false;
		return;
	}
	if (event != XACT_EVENT_PRE_COMMIT || !drop_at_commit)
		return;
	drop_at_commit = false;
	/* the command went through: is the extension gone? */
	if (OidIsValid(get_extension_oid("clinic_migrate", true)))
		return;
	name = psprintf("clinic_migrate_%u", MyDatabaseId);
	LWLockAcquire(ReplicationSlotControlLock, LW_SHARED);
	exists = false;
	for (int i = 0; i < max_replication_slots; i++)
	{
		ReplicationSlot *s = &ReplicationSlotCtl->replication_slots[i];

		if (s->in_use && strcmp(NameStr(s->data.name), name) == 0 &&
			s->data.database == MyDatabaseId && strcmp(NameStr(s->data.plugin), "clinic_migrate") == 0)
			exists = true;
	}
	LWLockRelease(ReplicationSlotControlLock);
	if (!exists || MyReplicationSlot != NULL)
		return;
	/* after any drain reading it (a drain holds this lock while it reads) */
	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, 0, 4, CM_LOCK_FIELD4);
	(void) LockAcquire(&tag, ExclusiveLock, false, false);
	ReplicationSlotDrop(name, false);
}

void
capture_wal_drop_at_commit(void)
{
	if (!xact_callback_set)
	{
		RegisterXactCallback(drop_at_commit_callback, NULL);
		xact_callback_set = true;
	}
	drop_at_commit = true;
}

void
capture_wal_drop(void)
{
	LOCKTAG		tag;

	if (!capture_wal_slot_exists(NULL))
		return;
	/* a drain reading it holds it active: after it (it holds no table of ours yet) */
	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, 0, 4, CM_LOCK_FIELD4);
	(void) LockAcquire(&tag, ExclusiveLock, false, false);
	drop_slot();
}
