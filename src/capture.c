/*-------------------------------------------------------------------------
 * capture.c
 *	  The capture trigger: while a tenant moves, every INSERT, UPDATE and
 *	  DELETE of its shared rows logs the row's key, so that the copy can be
 *	  brought up to date by re-reading those rows (apply.c).
 *
 * Each planned shared table gets three AFTER ROW triggers whose WHEN
 * clause asks clinic_migrate.capturing(OLD/NEW.tenant_id::text): for a
 * tenant that is not moving, no trigger event is even queued, and the cost
 * is one C function call and a hash probe.  Child tables (no tenant
 * column) ask clinic_migrate.capturing_any() and find the row's tenant
 * through its foreign keys, only while some tenant is moving.
 *
 * The set of moving tenants is cached per backend and read with the latest
 * snapshot; whoever changes it sends a relcache invalidation for
 * clinic_migrate.tenants, which every backend processes at its next
 * transaction start.  capture_wait_for_writers closes the gap
 * for transactions that were already running.
 *
 * The log of a shared table holds the tenant and the key columns with
 * their own types (no text rendering, so no DateStyle to depend on).  The
 * trigger writes it with simple_heap_insert: no SQL is run with the row's
 * values, and application roles need no privilege on clinic_migrate.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "parser/parse_relation.h"
#include "pgstat.h"
#include "storage/lmgr.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "storage/sinvaladt.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "capture.h"
#include "clinic_migrate.h"
#include "plan.h"
#include "state.h"

bool		cm_applying = false;

/* ---- the set of moving tenants, cached per backend ---- */

typedef struct MovingTenant
{
	char		tenant[CM_MAX_TENANT_LEN + 1];	/* hash key */
	char		mode;
	char		schema[NAMEDATALEN];
} MovingTenant;

static HTAB *moving = NULL;
static bool moving_valid = false;
static long moving_count = 0;
static Oid	tenants_relid = InvalidOid;
static bool callbacks_registered = false;

/* per shared table: where its log is and how to read its key */
typedef struct CaptureTable
{
	Oid			relid;			/* hash key */
	bool		valid;			/* false: rebuild before use */
	Oid			log_relid;
	int			nkey;
	AttrNumber	key_att[INDEX_MAX_KEYS];
	AttrNumber	tenant_att;		/* InvalidAttrNumber for child tables */
	SPIPlanPtr	tenant_lookup;	/* child tables: tenant of a row by its parent */
	int			nfk;
	AttrNumber	fk_att[INDEX_MAX_KEYS];
	Oid			fk_type[INDEX_MAX_KEYS];
} CaptureTable;

static HTAB *capture_tables = NULL;

/*
 * Relcache invalidation: the set of moving tenants, or a shared table's
 * entry, must be read again.  Only flags are flipped here: an invalidation
 * can arrive in the middle of a trigger call that is using the entry (any
 * lock it takes processes invalidations), so nothing is freed until the
 * entry is next looked up.
 */
static void
moving_invalidate(Datum arg, Oid relid)
{
	HASH_SEQ_STATUS seq;
	CaptureTable *ct;

	if (relid == InvalidOid || relid == tenants_relid)
		moving_valid = false;
	if (capture_tables == NULL)
		return;
	if (relid != InvalidOid)
	{
		ct = hash_search(capture_tables, &relid, HASH_FIND, NULL);
		if (ct)
			ct->valid = false;
		return;
	}
	hash_seq_init(&seq, capture_tables);
	while ((ct = hash_seq_search(&seq)) != NULL)
		ct->valid = false;
}

static void
register_callbacks(void)
{
	if (!callbacks_registered)
	{
		CacheRegisterRelcacheCallback(moving_invalidate, (Datum) 0);
		callbacks_registered = true;
	}
}

/*
 * Read clinic_migrate.tenants with the latest snapshot: a tenant whose
 * migration committed a moment ago is seen even by an old snapshot.
 */
static void
moving_load(void)
{
	Oid			nsp = get_namespace_oid(CM_SCHEMA, true);
	HASHCTL		ctl;
	Relation	rel;
	TableScanDesc scan;
	Snapshot	snap;
	HeapTuple	tup;
	AttrNumber	att_tenant,
				att_state,
				att_schema;

	register_callbacks();
	/* valid from here: an invalidation during the scan makes us read again */
	moving_valid = true;
	moving_count = 0;
	if (moving)
		hash_destroy(moving);
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = CM_MAX_TENANT_LEN + 1;
	ctl.entrysize = sizeof(MovingTenant);
	ctl.hcxt = CacheMemoryContext;
	moving = hash_create("clinic_migrate moving tenants", 16, &ctl,
						 HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);

	tenants_relid = OidIsValid(nsp) ? get_relname_relid("tenants", nsp) : InvalidOid;
	if (!OidIsValid(tenants_relid))
		return;
	rel = table_open(tenants_relid, AccessShareLock);
	att_tenant = attnameAttNum(rel, "tenant_id", false);
	att_state = attnameAttNum(rel, "state", false);
	att_schema = attnameAttNum(rel, "schema_name", false);
	snap = RegisterSnapshot(GetLatestSnapshot());
	scan = table_beginscan(rel, snap, 0, NULL);
	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		bool		isnull;
		char	   *tenant = TextDatumGetCString(heap_getattr(tup, att_tenant, RelationGetDescr(rel), &isnull));
		char	   *state = TextDatumGetCString(heap_getattr(tup, att_state, RelationGetDescr(rel), &isnull));
		Name		schema = DatumGetName(heap_getattr(tup, att_schema, RelationGetDescr(rel), &isnull));
		char		mode = CM_MODE_NONE;
		MovingTenant *m;

		if (strcmp(state, "copying") == 0 || strcmp(state, "copied") == 0 ||
			strcmp(state, "failed") == 0)
			mode = CM_MODE_CAPTURE;
		if (mode == CM_MODE_NONE || strlen(tenant) > CM_MAX_TENANT_LEN)
			continue;
		m = hash_search(moving, tenant, HASH_ENTER, NULL);
		m->mode = mode;
		strlcpy(m->schema, NameStr(*schema), NAMEDATALEN);
		moving_count++;
	}
	table_endscan(scan);
	UnregisterSnapshot(snap);
	table_close(rel, AccessShareLock);
}

static MovingTenant *
moving_find(const char *tenant, int len)
{
	char		key[CM_MAX_TENANT_LEN + 1];

	if (!moving_valid)
		moving_load();
	if (moving_count == 0 || len > CM_MAX_TENANT_LEN)
		return NULL;
	memcpy(key, tenant, len);
	key[len] = '\0';
	return hash_search(moving, key, HASH_FIND, NULL);
}

void
capture_tenants_changed(void)
{
	Oid			nsp = get_namespace_oid(CM_SCHEMA, false);

	CacheInvalidateRelcacheByRelid(get_relname_relid("tenants", nsp));
	moving_valid = false;
}

/*
 * clinic_migrate.capturing(tenant text): is the tenant moving?  Used in the
 * triggers' WHEN clauses, so it must be cheap for tenants that are not.
 */
PG_FUNCTION_INFO_V1(cm_capturing);
Datum
cm_capturing(PG_FUNCTION_ARGS)
{
	text	   *t = PG_GETARG_TEXT_PP(0);

	PG_RETURN_BOOL(moving_find(VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t)) != NULL);
}

/* clinic_migrate.capturing_any(): is any tenant moving? (child tables) */
PG_FUNCTION_INFO_V1(cm_capturing_any);
Datum
cm_capturing_any(PG_FUNCTION_ARGS)
{
	if (!moving_valid)
		moving_load();
	PG_RETURN_BOOL(moving_count > 0);
}

/* ---- the trigger ---- */

char *
capture_log_name(Oid source)
{
	return psprintf("log_%u", source);
}

/* build the cache entry of a shared table from its trigger's argument */
static CaptureTable *
capture_table_get(Relation rel, Trigger *trigger)
{
	Oid			relid = RelationGetRelid(rel);
	bool		found;
	CaptureTable *ct;
	Relation	logrel;
	TupleDesc	logdesc;

	register_callbacks();
	if (capture_tables == NULL)
	{
		HASHCTL		ctl;

		memset(&ctl, 0, sizeof(ctl));
		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(CaptureTable);
		ctl.hcxt = CacheMemoryContext;
		capture_tables = hash_create("clinic_migrate capture tables", 32, &ctl,
									 HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	ct = hash_search(capture_tables, &relid, HASH_ENTER, &found);
	if (found && ct->valid)
		return ct;
	if (found && ct->tenant_lookup)
		SPI_freeplan(ct->tenant_lookup);

	memset(((char *) ct) + sizeof(Oid), 0, sizeof(CaptureTable) - sizeof(Oid));
	ct->valid = true;
	if (trigger->tgnargs < 1)
		elog(ERROR, "clinic_migrate: capture trigger on %s has no log table argument",
			 RelationGetRelationName(rel));
	ct->log_relid = DatumGetObjectId(DirectFunctionCall1(oidin, CStringGetDatum(trigger->tgargs[0])));
	ct->tenant_att = trigger->tgnargs >= 2 ?
		attnameAttNum(rel, trigger->tgargs[1], false) : InvalidAttrNumber;

	/* the log's columns after the tenant are the key columns, by name */
	logrel = table_open(ct->log_relid, AccessShareLock);
	logdesc = RelationGetDescr(logrel);
	ct->nkey = 0;
	for (int i = 1; i < logdesc->natts && ct->nkey < INDEX_MAX_KEYS; i++)
		ct->key_att[ct->nkey++] = attnameAttNum(rel, NameStr(TupleDescAttr(logdesc, i)->attname), false);
	table_close(logrel, AccessShareLock);
	return ct;
}

/*
 * The tenant of a child row: the root's tenant column, found through the
 * row's foreign key chain with a saved plan, run as the extension owner.
 * NULL when the row has no parent (a NULL key, or a parent deleted in this
 * transaction).
 */
static char *
child_tenant(Relation rel, CaptureTable *ct, HeapTuple tuple)
{
	Datum		values[INDEX_MAX_KEYS];
	char		nulls[INDEX_MAX_KEYS];
	Oid			save_userid;
	int			save_sec;
	char	   *result = NULL;

	SPI_connect();
	/* as the extension owner: the writer needs no rights on the parents */
	cm_owner_begin(&save_userid, &save_sec);
	if (ct->tenant_lookup == NULL)
	{
		CmSettings	s;
		TenantPlan *plan;
		PlanTable  *pt;
		PlanTable  *root;
		StringInfoData sql;
		Oid			child;

		cm_current_settings(&s);
		strlcpy(s.source_schema, get_namespace_name(RelationGetNamespace(rel)), NAMEDATALEN);
		plan = plan_build(&s, CurrentMemoryContext);
		pt = plan_find(plan, RelationGetRelid(rel));
		if (pt == NULL || pt->nhops == 0)
		{
			SetUserIdAndSecContext(save_userid, save_sec);
			SPI_finish();
			return NULL;
		}
		root = plan_root(plan, pt);
		initStringInfo(&sql);
		appendStringInfo(&sql, "SELECT a%d.%s::text FROM ", pt->nhops,
						 quote_identifier(get_attname(root->relid, root->tenant_att, false)));
		child = pt->relid;
		for (int h = 0; h < pt->nhops; h++)
		{
			PlanHop    *hop = &pt->hops[h];

			if (h == 0)
				appendStringInfo(&sql, "%s a1", cm_qualified_relname(hop->parent));
			else
			{
				appendStringInfo(&sql, " JOIN %s a%d ON (", cm_qualified_relname(hop->parent), h + 1);
				for (int k = 0; k < hop->nkeys; k++)
					appendStringInfo(&sql, "%sa%d.%s = a%d.%s", k ? " AND " : "",
									 h, quote_identifier(get_attname(child, hop->child_att[k], false)),
									 h + 1, quote_identifier(get_attname(hop->parent, hop->parent_att[k], false)));
				appendStringInfoChar(&sql, ')');
			}
			child = hop->parent;
		}
		appendStringInfoString(&sql, " WHERE ");
		ct->nfk = pt->hops[0].nkeys;
		for (int k = 0; k < ct->nfk; k++)
		{
			ct->fk_att[k] = pt->hops[0].child_att[k];
			ct->fk_type[k] = get_atttype(pt->relid, ct->fk_att[k]);
			appendStringInfo(&sql, "%sa1.%s = $%d", k ? " AND " : "",
							 quote_identifier(get_attname(pt->hops[0].parent, pt->hops[0].parent_att[k], false)),
							 k + 1);
		}
		ct->tenant_lookup = SPI_prepare(sql.data, ct->nfk, ct->fk_type);
		if (ct->tenant_lookup == NULL)
			elog(ERROR, "clinic_migrate: could not prepare \"%s\"", sql.data);
		SPI_keepplan(ct->tenant_lookup);
	}
	for (int k = 0; k < ct->nfk; k++)
	{
		bool		isnull;

		values[k] = heap_getattr(tuple, ct->fk_att[k], RelationGetDescr(rel), &isnull);
		nulls[k] = isnull ? 'n' : ' ';
		if (isnull)
		{
			SetUserIdAndSecContext(save_userid, save_sec);
			SPI_finish();
			return NULL;
		}
	}
	if (SPI_execute_plan(ct->tenant_lookup, values, nulls, true, 1) == SPI_OK_SELECT &&
		SPI_processed > 0)
	{
		char	   *t = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

		if (t)
			result = MemoryContextStrdup(TopTransactionContext, t);
	}
	SetUserIdAndSecContext(save_userid, save_sec);
	SPI_finish();
	return result;
}

/*
 * A deleted child row whose parent is already gone (ON DELETE CASCADE):
 * it belongs to whichever moving tenant's copy has its key.
 */
static char *
child_tenant_by_copy(Relation rel, CaptureTable *ct, HeapTuple tuple)
{
	HASH_SEQ_STATUS seq;
	MovingTenant *m;
	char	   *result = NULL;
	Oid			save_userid;
	int			save_sec;

	if (moving_count == 0)
		return NULL;
	SPI_connect();
	/* as the extension owner: the writer needs no rights on the parents */
	cm_owner_begin(&save_userid, &save_sec);
	hash_seq_init(&seq, moving);
	while ((m = hash_seq_search(&seq)) != NULL)
	{
		Oid			nsp = get_namespace_oid(m->schema, true);
		Oid			target = OidIsValid(nsp) ? get_relname_relid(RelationGetRelationName(rel), nsp) : InvalidOid;
		StringInfoData sql;
		Datum		values[INDEX_MAX_KEYS];
		Oid			types[INDEX_MAX_KEYS];

		if (!OidIsValid(target) || result)
			continue;
		initStringInfo(&sql);
		appendStringInfo(&sql, "SELECT 1 FROM %s WHERE ", cm_qualified_relname(target));
		for (int k = 0; k < ct->nkey; k++)
		{
			bool		isnull;

			values[k] = heap_getattr(tuple, ct->key_att[k], RelationGetDescr(rel), &isnull);
			types[k] = TupleDescAttr(RelationGetDescr(rel), ct->key_att[k] - 1)->atttypid;
			appendStringInfo(&sql, "%s%s = $%d", k ? " AND " : "",
							 quote_identifier(NameStr(TupleDescAttr(RelationGetDescr(rel), ct->key_att[k] - 1)->attname)),
							 k + 1);
		}
		if (SPI_execute_with_args(sql.data, ct->nkey, types, values, NULL, true, 1) == SPI_OK_SELECT &&
			SPI_processed > 0)
		{
			hash_seq_term(&seq);
			result = MemoryContextStrdup(TopTransactionContext, m->tenant);
			break;
		}
	}
	SetUserIdAndSecContext(save_userid, save_sec);
	SPI_finish();
	return result;
}

static char *
tuple_tenant(Relation rel, CaptureTable *ct, HeapTuple tuple, bool deleted)
{
	bool		isnull;
	Datum		d;

	if (ct->tenant_att == InvalidAttrNumber)
	{
		char	   *t = child_tenant(rel, ct, tuple);

		if (t == NULL && deleted)
			t = child_tenant_by_copy(rel, ct, tuple);
		return t;
	}
	d = heap_getattr(tuple, ct->tenant_att, RelationGetDescr(rel), &isnull);
	if (isnull)
		return NULL;
	{
		Oid			typout;
		bool		varlena;

		getTypeOutputInfo(TupleDescAttr(RelationGetDescr(rel), ct->tenant_att - 1)->atttypid,
						  &typout, &varlena);
		return OidOutputFunctionCall(typout, d);
	}
}

static void
log_key(Relation rel, CaptureTable *ct, HeapTuple tuple, const char *tenant)
{
	Relation	logrel = table_open(ct->log_relid, RowExclusiveLock);
	Datum		values[INDEX_MAX_KEYS + 1];
	bool		nulls[INDEX_MAX_KEYS + 1];
	HeapTuple	logtup;

	values[0] = CStringGetTextDatum(tenant);
	nulls[0] = false;
	for (int k = 0; k < ct->nkey; k++)
		values[k + 1] = heap_getattr(tuple, ct->key_att[k], RelationGetDescr(rel), &nulls[k + 1]);
	logtup = heap_form_tuple(RelationGetDescr(logrel), values, nulls);
	simple_heap_insert(logrel, logtup);
	heap_freetuple(logtup);
	table_close(logrel, RowExclusiveLock);
}

static bool
same_key(Relation rel, CaptureTable *ct, HeapTuple a, HeapTuple b)
{
	for (int k = 0; k < ct->nkey; k++)
	{
		Form_pg_attribute att = TupleDescAttr(RelationGetDescr(rel), ct->key_att[k] - 1);
		bool		an,
					bn;
		Datum		av = heap_getattr(a, ct->key_att[k], RelationGetDescr(rel), &an);
		Datum		bv = heap_getattr(b, ct->key_att[k], RelationGetDescr(rel), &bn);

		if (an != bn || (!an && !datumIsEqual(av, bv, att->attbyval, att->attlen)))
			return false;
	}
	return true;
}

/* clinic_migrate.capture(): AFTER ROW trigger on planned shared tables */
PG_FUNCTION_INFO_V1(cm_capture);
Datum
cm_capture(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	Relation	rel;
	CaptureTable *ct;
	HeapTuple	oldtup = NULL;
	HeapTuple	newtup = NULL;
	char	   *oldtenant = NULL;
	char	   *newtenant = NULL;
	bool		old_moving,
				new_moving;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_FOR_ROW(td->tg_event) ||
		!TRIGGER_FIRED_AFTER(td->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("clinic_migrate.capture() must be an AFTER ROW trigger")));
	if (cm_applying)
		return PointerGetDatum(NULL);
	rel = td->tg_relation;
	ct = capture_table_get(rel, td->tg_trigger);

	if (TRIGGER_FIRED_BY_INSERT(td->tg_event))
		newtup = td->tg_trigtuple;
	else if (TRIGGER_FIRED_BY_UPDATE(td->tg_event))
	{
		oldtup = td->tg_trigtuple;
		newtup = td->tg_newtuple;
	}
	else if (TRIGGER_FIRED_BY_DELETE(td->tg_event))
		oldtup = td->tg_trigtuple;
	else
		return PointerGetDatum(NULL);

	if (oldtup)
		oldtenant = tuple_tenant(rel, ct, oldtup, newtup == NULL);
	if (newtup)
		newtenant = tuple_tenant(rel, ct, newtup, false);
	old_moving = oldtenant && moving_find(oldtenant, strlen(oldtenant)) != NULL;
	new_moving = newtenant && moving_find(newtenant, strlen(newtenant)) != NULL;

	/*
	 * Log the key the row had and the key it has now; an UPDATE that keeps
	 * both tenant and key logs once.  Replay re-reads the row by key, so
	 * what changed does not matter, only which keys.
	 */
	if (old_moving)
		log_key(rel, ct, oldtup, oldtenant);
	if (new_moving &&
		!(old_moving && strcmp(oldtenant, newtenant) == 0 && same_key(rel, ct, oldtup, newtup)))
		log_key(rel, ct, newtup, newtenant);
	return PointerGetDatum(NULL);
}

/* ---- installation ---- */

void
capture_install(TenantPlan *plan)
{
	Oid			nsp = get_namespace_oid(CM_SCHEMA, false);

	for (int i = 0; i < plan->ncopied; i++)
	{
		PlanTable  *pt = &plan->tables[i];
		char	   *logname = capture_log_name(pt->relid);
		Oid			logrel = get_relname_relid(logname, nsp);
		StringInfoData sql;
		List	   *keys = plan_key_columns(pt);
		const char *ops[3] = {"INSERT", "UPDATE", "DELETE"};
		const char *names[3] = {"clinic_migrate_capture_insert", "clinic_migrate_capture_update",
		"clinic_migrate_capture_delete"};

		initStringInfo(&sql);
		if (!OidIsValid(logrel))
		{
			/* the log: the tenant, then the key columns with their own types */
			appendStringInfo(&sql, "CREATE TABLE %s.%s AS SELECT NULL::text AS _cm_tenant, ",
							 CM_SCHEMA, quote_identifier(logname));
			cm_append_quoted_list(&sql, keys, "s");
			appendStringInfo(&sql, " FROM %s s WITH NO DATA", cm_qualified_relname(pt->relid));
			cm_state_exec(sql.data, 0, NULL, NULL, NULL, 0);
			CommandCounterIncrement();
			logrel = get_relname_relid(logname, nsp);
		}
		for (int op = 0; op < 3; op++)
		{
			const char *when;
			const char *tcol = quote_identifier(plan->tenant_column);

			if (OidIsValid(get_trigger_oid(pt->relid, names[op], true)))
				continue;
			if (pt->kind == PLAN_CHILD)
				when = "clinic_migrate.capturing_any()";
			else if (op == 0)
				when = psprintf("clinic_migrate.capturing(NEW.%s::text)", tcol);
			else if (op == 1)
				when = psprintf("clinic_migrate.capturing(OLD.%s::text) OR clinic_migrate.capturing(NEW.%s::text)",
								tcol, tcol);
			else
				when = psprintf("clinic_migrate.capturing(OLD.%s::text)", tcol);
			resetStringInfo(&sql);
			appendStringInfo(&sql, "CREATE TRIGGER %s AFTER %s ON %s FOR EACH ROW WHEN (%s) "
							 "EXECUTE FUNCTION clinic_migrate.capture(%s%s%s)",
							 names[op], ops[op], cm_qualified_relname(pt->relid), when,
							 quote_literal_cstr(psprintf("%u", logrel)),
							 pt->kind == PLAN_CHILD ? "" : ", ",
							 pt->kind == PLAN_CHILD ? "" : quote_literal_cstr(plan->tenant_column));
			cm_ddl_with_retry(sql.data);
		}
	}
}

void
capture_wait_for_writers(TenantPlan *plan)
{
	/*
	 * Every transaction that holds a lock conflicting with SHARE on a planned
	 * table may have written it: ROW EXCLUSIVE is what INSERT, UPDATE and
	 * DELETE take, and they keep it until they end.  Collect them first, then
	 * wait for each, as CREATE INDEX CONCURRENTLY does.  (A transaction's xmin
	 * says nothing here: an idle READ COMMITTED transaction that wrote a row
	 * has none.)  Our own transaction is never among them; autovacuum's SHARE
	 * UPDATE EXCLUSIVE conflicts too, but it writes no rows, so it is skipped.
	 */
	List	   *wait = NIL;
	ListCell   *lc;

	for (int i = 0; i < plan->ncopied; i++)
	{
		LOCKTAG		tag;
		VirtualTransactionId *vxids;

		SET_LOCKTAG_RELATION(tag, MyDatabaseId, plan->tables[i].relid);
		vxids = GetLockConflicts(&tag, ShareLock, NULL);
		for (; VirtualTransactionIdIsValid(*vxids); vxids++)
		{
			PGPROC	   *proc = BackendIdGetProc(vxids->backendId);
			VirtualTransactionId *v;

			if (proc && (proc->statusFlags & PROC_IS_AUTOVACUUM))
				continue;
			v = palloc(sizeof(VirtualTransactionId));
			*v = *vxids;
			wait = lappend(wait, v);
		}
	}
	foreach(lc, wait)
	{
		pgstat_report_activity(STATE_RUNNING,
							   "clinic_migrate: waiting for transactions older than the capture");
		(void) VirtualXactLock(*(VirtualTransactionId *) lfirst(lc), true);
		CHECK_FOR_INTERRUPTS();
	}
}
