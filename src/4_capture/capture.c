/*-------------------------------------------------------------------------
 * capture.c
 *	  The capture trigger: while a tenant moves, every INSERT, UPDATE and
 *	  DELETE of its shared rows logs the row's key, so that the copy can be
 *	  brought up to date by re-reading those rows (apply.c).
 *	  Floor 4 (capture and replay).  May call: floors 1 to 3.
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
#include "utils/syscache.h"
#include "catalog/objectaddress.h"
#include "catalog/partition.h"
#include "catalog/pg_inherits.h"
#include "utils/snapmgr.h"
#include "catalog/pg_trigger.h"
#include "catalog/dependency.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/indexing.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "parser/parse_func.h"
#include "parser/parse_relation.h"
#include "pgstat.h"
#include "storage/lmgr.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "storage/sinvaladt.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/fmgroids.h"
#include "mb/pg_wchar.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "capture.h"
#include "clone.h"
#include "settings.h"
#include "util.h"
#include "locks.h"
#include "runstate.h"
#include "plan.h"
#include "state.h"

bool		cm_applying = false;

/* ---- the set of moving tenants, cached per backend ---- */

typedef struct MovingTenant
{
	char		tenant[CM_MAX_TENANT_LEN + 1];	/* hash key */
	char		state;			/* CM_STATE_* */
	char		schema[NAMEDATALEN];
	Oid			schema_oid;		/* the tag of its write lock */
	char		source_schema[NAMEDATALEN];
	bool		wal;			/* captured from the WAL (tenants.capture_method) */
} MovingTenant;

static HTAB *moving = NULL;
static bool moving_valid = false;
static long moving_count = 0;	/* tenants whose shared child rows need a lookup */
static bool moving_need_triggers = false;	/* some tenant needs the full capture triggers */
static Oid	tenants_relid = InvalidOid;
static bool callbacks_registered = false;

/* a child table whose rows find their tenant through a row of this table */
typedef struct CaptureDescendant
{
	Oid			child;			/* the child table */
	Oid			log_relid;		/* its log */
	char	   *sql;			/* its keys of the rows under one row of ours */
	int			nparams;
	AttrNumber	param_att[INDEX_MAX_KEYS];	/* our columns they reference */
	Oid			param_type[INDEX_MAX_KEYS];
} CaptureDescendant;

/* per shared table: where its log is and how to read its key */
typedef struct CaptureTable
{
	Oid			relid;			/* hash key */
	bool		valid;			/* false: rebuild before use */
	Oid			base;			/* the partitioned table at the top, or relid */
	MemoryContext cxt;			/* what the entry allocated; reset on rebuild */
	Oid			log_relid;
	int			log_natts;
	int			log_tenant;		/* positions in the log's tuples (0-based) */
	int			log_at;
	int			log_key[INDEX_MAX_KEYS];
	int			nkey;
	AttrNumber	key_att[INDEX_MAX_KEYS];
	AttrNumber	tenant_att;		/* InvalidAttrNumber for child tables */
	bool		tenant_bpchar;	/* char(n): compare without the padding, as ::text does */
	FmgrInfo	tenant_out;		/* its output function, looked up once */
	SPIPlanPtr	tenant_lookup;	/* child tables: tenant of a row by its parent */
	int			nfk;
	AttrNumber	fk_att[INDEX_MAX_KEYS];
	Oid			fk_type[INDEX_MAX_KEYS];
	bool		descendants_built;
	List	   *descendants;	/* of CaptureDescendant, in cxt */
	bool	   *wal_needed;		/* by attnum: the columns a change from the WAL must carry */
} CaptureTable;

static HTAB *capture_tables = NULL;

/* the time a change logged from the WAL was committed; 0 from a trigger */
static TimestampTz wal_change_at = 0;

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
				att_schema,
				att_source,
				att_schema_oid,
				att_method;

	register_callbacks();
	/* valid from here: an invalidation during the scan makes us read again */
	moving_valid = true;
	moving_count = 0;
	moving_need_triggers = false;
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
	att_source = attnameAttNum(rel, "source_schema", false);
	att_schema_oid = attnameAttNum(rel, "schema_oid", false);
	/* 0.8 on */
	att_method = attnameAttNum(rel, "capture_method", true);
	snap = RegisterSnapshot(GetLatestSnapshot());
	scan = table_beginscan(rel, snap, 0, NULL);
	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		bool		isnull;
		char	   *tenant = TextDatumGetCString(heap_getattr(tup, att_tenant, RelationGetDescr(rel), &isnull));
		char	   *state = TextDatumGetCString(heap_getattr(tup, att_state, RelationGetDescr(rel), &isnull));
		Name		schema = DatumGetName(heap_getattr(tup, att_schema, RelationGetDescr(rel), &isnull));
		Name		source = DatumGetName(heap_getattr(tup, att_source, RelationGetDescr(rel), &isnull));
		Oid			schema_oid = DatumGetObjectId(heap_getattr(tup, att_schema_oid, RelationGetDescr(rel), &isnull));
		char		code = cm_state_code(state);
		MovingTenant *m;

		if (code == CM_STATE_NONE || strlen(tenant) > CM_MAX_TENANT_LEN)
			continue;
		m = hash_search(moving, tenant, HASH_ENTER, NULL);
		m->state = code;
		strlcpy(m->schema, NameStr(*schema), NAMEDATALEN);
		strlcpy(m->source_schema, NameStr(*source), NAMEDATALEN);
		m->schema_oid = schema_oid;
		m->wal = false;
		if (att_method != InvalidAttrNumber)
		{
			Datum		d = heap_getattr(tup, att_method, RelationGetDescr(rel), &isnull);

			m->wal = !isnull && strcmp(TextDatumGetCString(d), "wal") == 0;
		}
		if (code == CM_STATE_CAPTURE || code == CM_STATE_CUT_OVER || code == CM_STATE_FINALIZING)
			moving_count++;
		if ((code == CM_STATE_CAPTURE && !m->wal) || code == CM_STATE_CUT_OVER ||
			code == CM_STATE_FINALIZING)
			moving_need_triggers = true;
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
	if (hash_get_num_entries(moving) == 0 || len > CM_MAX_TENANT_LEN)
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

/* clinic_migrate.tenants_changed(): statement trigger on clinic_migrate.tenants */
PG_FUNCTION_INFO_V1(cm_tenants_changed);
Datum
cm_tenants_changed(PG_FUNCTION_ARGS)
{
	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("clinic_migrate.tenants_changed() must be a trigger")));
	capture_tenants_changed();
	return PointerGetDatum(NULL);
}

char
cm_state_code(const char *state)
{
	if (strcmp(state, "copying") == 0 || strcmp(state, "copied") == 0 ||
		strcmp(state, "failed") == 0)
		return CM_STATE_CAPTURE;
	if (strcmp(state, "cut_over") == 0)
		return CM_STATE_CUT_OVER;
	if (strcmp(state, "finalizing") == 0)
		return CM_STATE_FINALIZING;
	if (strcmp(state, "finalized") == 0)
		return CM_STATE_FINALIZED;
	if (strcmp(state, "rolling_back") == 0)
		return CM_STATE_ROLLING_BACK;
	return CM_STATE_NONE;
}

bool
cm_state_after_cutover(const char *state)
{
	char		c = cm_state_code(state);

	return c == CM_STATE_CUT_OVER || c == CM_STATE_FINALIZING || c == CM_STATE_FINALIZED;
}

/* do the shared tables' triggers act for a tenant in this state? */
static inline bool
shared_trigger_acts(char state)
{
	return state == CM_STATE_CAPTURE || state == CM_STATE_CUT_OVER ||
		state == CM_STATE_FINALIZING;
}

/*
 * clinic_migrate.capturing(tenant text): do the shared tables' triggers act
 * for this tenant (capture or guard)?  Used in the triggers' WHEN clauses,
 * so it must be cheap for tenants that are not moving.
 */
PG_FUNCTION_INFO_V1(cm_capturing);
Datum
cm_capturing(PG_FUNCTION_ARGS)
{
	text	   *t = PG_GETARG_TEXT_PP(0);
	MovingTenant *m = moving_find(VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));

	PG_RETURN_BOOL(m != NULL && shared_trigger_acts(m->state));
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

/*
 * One of our state tables' rows, by an OID-valued column (oid or reg*),
 * read directly: the trigger that asks runs as the writer, who may not read
 * them.  Returns the value of another OID-valued column, or InvalidOid.
 * *present says whether the table exists (a database still at 0.2 has no
 * capture_logs).
 */
static Oid
state_oid_lookup(const char *table, const char *keycol, Oid key, const char *outcol,
				 bool *present)
{
	Oid			nsp = get_namespace_oid(CM_SCHEMA, true);
	Oid			relid = OidIsValid(nsp) ? get_relname_relid(table, nsp) : InvalidOid;
	Relation	rel;
	ScanKeyData skey;
	TableScanDesc scan;
	Snapshot	snap;
	HeapTuple	tup;
	Oid			result = InvalidOid;
	AttrNumber	outatt;

	*present = OidIsValid(relid);
	if (!*present)
		return InvalidOid;
	rel = table_open(relid, AccessShareLock);
	outatt = attnameAttNum(rel, outcol, false);
	ScanKeyInit(&skey, attnameAttNum(rel, keycol, false), BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(key));
	snap = RegisterSnapshot(GetLatestSnapshot());
	scan = table_beginscan(rel, snap, 1, &skey);
	if ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		bool		isnull;
		Datum		d = heap_getattr(tup, outatt, RelationGetDescr(rel), &isnull);

		if (!isnull)
			result = DatumGetObjectId(d);
	}
	table_endscan(scan);
	UnregisterSnapshot(snap);
	table_close(rel, AccessShareLock);
	return result;
}

/*
 * The log of a shared table, or InvalidOid when it has none.  Logs are
 * found through clinic_migrate.capture_logs, whose regclass columns follow
 * the tables through pg_dump and pg_restore (their OIDs change, their names
 * do not); before 0.3 a log was named after the table's OID.
 */
Oid
capture_log_relid(Oid source)
{
	bool		present;
	Oid			log = state_oid_lookup("capture_logs", "source_table", source, "log_table", &present);

	if (!present)
		return get_relname_relid(psprintf("log_%u", source), get_namespace_oid(CM_SCHEMA, false));
	return log;
}

/* the shared table a tenant's table was copied from, or InvalidOid */
static Oid
tenant_table_source(Oid target)
{
	bool		present;

	return state_oid_lookup("tenant_tables", "target_table", target, "source_table", &present);
}

/*
 * The table a row trigger's rows belong to: the partitioned table at the
 * top for a partition (PostgreSQL clones the triggers of a partitioned
 * table onto its partitions, where they fire with the partition's rows;
 * the plan, the logs and the records name the partitioned table), else
 * the table itself.
 */
static Oid
base_relid(Relation rel)
{
	if (rel->rd_rel->relispartition)
	{
		List	   *up = get_partition_ancestors(RelationGetRelid(rel));

		if (up != NIL)
			return llast_oid(up);
	}
	return RelationGetRelid(rel);
}

static List *partitions_of(Oid relid);

/* attnum of base's column att in rel (a partition may number them otherwise) */
static AttrNumber
att_in(Relation rel, Oid base, AttrNumber att)
{
	if (base == RelationGetRelid(rel))
		return att;
	return attnameAttNum(rel, get_attname(base, att, false), false);
}

/*
 * A name for a new log: log_<table>, made unique in our schema (two source
 * schemas may have tables of one name; a restored database has the logs of
 * its tables under their old names).
 */
static char *
new_log_name(Oid source)
{
	Oid			nsp = get_namespace_oid(CM_SCHEMA, false);
	const char *relname = get_rel_name(source);
	int			len = pg_mbcliplen(relname, strlen(relname), NAMEDATALEN - 16);
	char	   *base = psprintf("log_%.*s", len, relname);
	char	   *name = base;

	for (int k = 2; OidIsValid(get_relname_relid(name, nsp)); k++)
		name = psprintf("%s_%d", base, k);
	return name;
}

/* build the cache entry of a shared table from its trigger's argument */
static CaptureTable *
capture_table_get(Relation rel, Trigger *trigger)
{
	Oid			relid = RelationGetRelid(rel);
	Oid			base;
	bool		found;
	CaptureTable *ct;
	Relation	logrel;
	TupleDesc	logdesc;
	TupleDesc	desc = RelationGetDescr(rel);

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
	if (found && ct->cxt)
		MemoryContextDelete(ct->cxt);

	memset(((char *) ct) + sizeof(Oid), 0, sizeof(CaptureTable) - sizeof(Oid));
	/* looked up once per entry: a pg_inherits scan per level */
	base = ct->base = base_relid(rel);
	if (trigger->tgnargs < 1)
		elog(ERROR, "clinic_migrate: capture trigger on %s has no log table argument",
			 RelationGetRelationName(rel));
	ct->cxt = AllocSetContextCreate(CacheMemoryContext, "clinic_migrate capture table",
									ALLOCSET_SMALL_SIZES);
	{
		/*
		 * The log is found from the table, not from the trigger's argument
		 * (a name for people; an OID before 0.3, wrong once restored): a
		 * shared table's own, or, for a tenant's table (reverse capture),
		 * that of the shared table it was copied from.
		 */
		bool		present;
		Oid			source = trigger->tgnargs >= 3 ? tenant_table_source(base) : base;

		ct->log_relid = state_oid_lookup("capture_logs", "source_table", source, "log_table", &present);

		/*
		 * A trigger of a table clinic_migrate does not capture (a role that
		 * may execute our functions made it) finds no log: an error below.
		 * Before 0.3 there was no map: the argument was the log's OID, and
		 * the log was log_<table OID> in our schema; nothing else is taken.
		 */
		if (!present)
		{
			ct->log_relid = DatumGetObjectId(DirectFunctionCall1(oidin, CStringGetDatum(trigger->tgargs[0])));
			if (ct->log_relid != get_relname_relid(psprintf("log_%u", source), get_namespace_oid(CM_SCHEMA, false)))
				ereport(ERROR,
						(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						 errmsg("table %s is not captured by clinic_migrate",
								RelationGetRelationName(rel))));
		}
		else if (!OidIsValid(ct->log_relid))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("table %s has a clinic_migrate capture trigger but no capture log",
							RelationGetRelationName(rel)),
					 errhint("clinic_migrate.capture_logs has no row for it: was the database restored without it?")));
	}
	ct->tenant_att = (trigger->tgnargs >= 2 && trigger->tgargs[1][0] != '\0') ?
		attnameAttNum(rel, trigger->tgargs[1], false) : InvalidAttrNumber;
	if (ct->tenant_att != InvalidAttrNumber)
	{
		Oid			typout;
		bool		varlena;
		Oid			typid = TupleDescAttr(desc, ct->tenant_att - 1)->atttypid;

		getTypeOutputInfo(typid, &typout, &varlena);
		fmgr_info_cxt(typout, &ct->tenant_out, CacheMemoryContext);
		ct->tenant_bpchar = getBaseType(typid) == BPCHAROID;
	}

	/*
	 * The log's columns: _cm_tenant, _cm_at, then the key columns, by name,
	 * each of the same type and collation as the table's column now.  A
	 * key column whose type changed since the log was made would have its
	 * values written as another type: refuse the write instead.
	 */
	logrel = table_open(ct->log_relid, AccessShareLock);
	logdesc = RelationGetDescr(logrel);
	ct->nkey = 0;
	ct->log_natts = logdesc->natts;
	ct->log_tenant = ct->log_at = -1;
	for (int i = 0; i < logdesc->natts; i++)
	{
		Form_pg_attribute la = TupleDescAttr(logdesc, i);
		const char *name = NameStr(la->attname);
		AttrNumber	att;
		Form_pg_attribute ra;

		if (la->attisdropped)
			continue;
		if (strcmp(name, "_cm_tenant") == 0)
		{
			ct->log_tenant = i;
			continue;
		}
		if (strcmp(name, "_cm_at") == 0)
		{
			ct->log_at = i;
			continue;
		}
		att = attnameAttNum(rel, name, true);
		ra = att > 0 ? TupleDescAttr(desc, att - 1) : NULL;
		if (ra == NULL || ra->atttypid != la->atttypid || ra->atttypmod != la->atttypmod ||
			ra->attcollation != la->attcollation || ct->nkey >= INDEX_MAX_KEYS)
		{
			char	   *qrel = quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
														  RelationGetRelationName(rel));

			table_close(logrel, AccessShareLock);
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("key column %s of %s changed while clinic_migrate captures its changes",
							quote_identifier(name), qrel),
					 ra == NULL ?
					 errdetail("The column is gone; the capture log of %s still has it.", qrel) :
					 errdetail("It is %s now; its capture log holds %s.",
							   format_type_with_typemod(ra->atttypid, ra->atttypmod),
							   format_type_with_typemod(la->atttypid, la->atttypmod)),
					 errhint("Change the key column back, or roll back every tenant whose migration is under way "
							 "(clinic_migrate.status) before changing it.")));
		}
		ct->log_key[ct->nkey] = i;
		ct->key_att[ct->nkey++] = att;
	}
	table_close(logrel, AccessShareLock);
	if (ct->log_tenant < 0 || ct->log_at < 0 || ct->nkey == 0)
		elog(ERROR, "clinic_migrate: log table %u of %s is not one of ours",
			 ct->log_relid, RelationGetRelationName(rel));
	ct->valid = true;
	return ct;
}

/* the plan of the schema a shared table is in, as the settings now say */
static TenantPlan *
plan_of(Relation rel)
{
	CmSettings	s;

	cm_current_settings(&s);
	/* a partition's plan is that of its partitioned table's schema */
	strlcpy(s.source_schema, get_namespace_name(get_rel_namespace(base_relid(rel))), NAMEDATALEN);
	return plan_build(&s, CurrentMemoryContext);
}

/*
 * " FROM ONLY <table> a0 JOIN <parent> a1 ON (a0.x = a1.y) ..." for the
 * first nhops foreign key steps of a child table, with qualified operators.
 */
static void
append_hop_joins(StringInfo sql, PlanTable *pt, int nhops)
{
	Oid			child = pt->relid;

	appendStringInfo(sql, " FROM %s%s a0", cm_only(pt->relid), cm_qualified_relname(pt->relid));
	for (int h = 0; h < nhops; h++)
	{
		PlanHop    *hop = &pt->hops[h];

		appendStringInfo(sql, " JOIN %s%s a%d ON (", cm_only(hop->parent),
						 cm_qualified_relname(hop->parent), h + 1);
		for (int k = 0; k < hop->nkeys; k++)
		{
			char	   *l = psprintf("a%d.%s", h, quote_identifier(get_attname(child, hop->child_att[k], false)));
			char	   *r = psprintf("a%d.%s", h + 1,
									 quote_identifier(get_attname(hop->parent, hop->parent_att[k], false)));

			if (k)
				appendStringInfoString(sql, " AND ");
			cm_append_eq(sql, r, get_atttype(hop->parent, hop->parent_att[k]),
						 l, get_atttype(child, hop->child_att[k]));
		}
		appendStringInfoChar(sql, ')');
		child = hop->parent;
	}
}

/*
 * The tenant of a child row: the root's tenant column, found through the
 * row's foreign key chain with a saved plan.  It runs as the child table's
 * owner in a security-restricted operation (the writer needs no rights on
 * the parents, and the owner's own code runs with no more than the owner's
 * rights), with search_path pinned, and reads with a fresh snapshot, as
 * the foreign key check does: a REPEATABLE READ writer's own snapshot may
 * not see a parent that committed after it started.  NULL when the row has
 * no parent (a NULL key, or a parent deleted in this transaction).
 */
static char *
child_tenant(Relation rel, CaptureTable *ct, HeapTuple tuple)
{
	Datum		values[INDEX_MAX_KEYS];
	char		nulls[INDEX_MAX_KEYS];
	CmRoleSave	save;
	char	   *result = NULL;

	SPI_connect();
	if (ct->tenant_lookup == NULL)
	{
		TenantPlan *plan;
		PlanTable  *pt;
		PlanTable  *root;
		StringInfoData sql;

		/* the plan reads the catalogs and clinic_migrate's own tables */
		cm_owner_begin(&save);
		plan = plan_of(rel);
		pt = plan_find(plan, base_relid(rel));
		if (pt == NULL || pt->nhops == 0)
		{
			cm_role_end(&save);
			SPI_finish();
			return NULL;
		}
		root = plan_root(plan, pt);
		initStringInfo(&sql);
		appendStringInfo(&sql, "SELECT a%d.%s::pg_catalog.text", pt->nhops,
						 quote_identifier(get_attname(root->relid, root->tenant_att, false)));
		/* the row's own foreign key columns are parameters: no a0, start at its parent */
		appendStringInfo(&sql, " FROM %s%s a1", cm_only(pt->hops[0].parent),
						 cm_qualified_relname(pt->hops[0].parent));
		{
			Oid			child = pt->hops[0].parent;

			for (int h = 1; h < pt->nhops; h++)
			{
				PlanHop    *hop = &pt->hops[h];

				appendStringInfo(&sql, " JOIN %s%s a%d ON (", cm_only(hop->parent),
								 cm_qualified_relname(hop->parent), h + 1);
				for (int k = 0; k < hop->nkeys; k++)
				{
					if (k)
						appendStringInfoString(&sql, " AND ");
					cm_append_eq(&sql,
								 psprintf("a%d.%s", h + 1, quote_identifier(get_attname(hop->parent, hop->parent_att[k], false))),
								 get_atttype(hop->parent, hop->parent_att[k]),
								 psprintf("a%d.%s", h, quote_identifier(get_attname(child, hop->child_att[k], false))),
								 get_atttype(child, hop->child_att[k]));
				}
				appendStringInfoChar(&sql, ')');
				child = hop->parent;
			}
		}
		appendStringInfoString(&sql, " WHERE ");
		ct->nfk = pt->hops[0].nkeys;
		for (int k = 0; k < ct->nfk; k++)
		{
			ct->fk_att[k] = att_in(rel, pt->relid, pt->hops[0].child_att[k]);
			ct->fk_type[k] = get_atttype(pt->relid, pt->hops[0].child_att[k]);
			if (k)
				appendStringInfoString(&sql, " AND ");
			cm_append_eq(&sql,
						 psprintf("a1.%s", quote_identifier(get_attname(pt->hops[0].parent, pt->hops[0].parent_att[k], false))),
						 get_atttype(pt->hops[0].parent, pt->hops[0].parent_att[k]),
						 psprintf("$%d", k + 1), ct->fk_type[k]);
		}
		ct->tenant_lookup = SPI_prepare(sql.data, ct->nfk, ct->fk_type);
		if (ct->tenant_lookup == NULL)
			elog(ERROR, "clinic_migrate: could not prepare the tenant lookup of %s",
				 RelationGetRelationName(rel));
		SPI_keepplan(ct->tenant_lookup);
		cm_role_end(&save);
	}
	for (int k = 0; k < ct->nfk; k++)
	{
		bool		isnull;

		values[k] = heap_getattr(tuple, ct->fk_att[k], RelationGetDescr(rel), &isnull);
		nulls[k] = isnull ? 'n' : ' ';
		if (isnull)
		{
			SPI_finish();
			return NULL;
		}
	}
	/* the lookup itself reads the application's tables: as the table's owner */
	cm_table_owner_begin(ct->base, &save);
	if (SPI_execute_snapshot(ct->tenant_lookup, values, nulls, GetLatestSnapshot(),
							 InvalidSnapshot, false, false, 1) == SPI_OK_SELECT &&
		SPI_processed > 0)
	{
		char	   *t = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

		if (t)
			result = MemoryContextStrdup(TopTransactionContext, t);
	}
	cm_role_end(&save);
	SPI_finish();
	return result;
}

/*
 * A deleted child row whose parent is already gone (ON DELETE CASCADE):
 * it belongs to whichever moving tenant's copy has its key.  Each copy is
 * read as its owner, in a security-restricted operation.
 */
static char *
child_tenant_by_copy(Relation rel, CaptureTable *ct, HeapTuple tuple)
{
	HASH_SEQ_STATUS seq;
	MovingTenant *m;
	char	   *result = NULL;

	if (!moving_valid)
		moving_load();
	if (moving_count == 0)
		return NULL;
	SPI_connect();
	hash_seq_init(&seq, moving);
	while ((m = hash_seq_search(&seq)) != NULL)
	{
		Oid			nsp = get_namespace_oid(m->schema, true);
		Oid			target = OidIsValid(nsp) ? get_relname_relid(get_rel_name(ct->base), nsp) : InvalidOid;
		StringInfoData sql;
		Datum		values[INDEX_MAX_KEYS];
		char		nulls[INDEX_MAX_KEYS];
		Oid			types[INDEX_MAX_KEYS];
		CmRoleSave	save;
		int			ret;

		if (!OidIsValid(target) || result || !shared_trigger_acts(m->state))
			continue;
		initStringInfo(&sql);
		appendStringInfo(&sql, "SELECT 1 FROM %s%s t WHERE ", cm_only(target), cm_qualified_relname(target));
		for (int k = 0; k < ct->nkey; k++)
		{
			bool		isnull;
			Form_pg_attribute att = TupleDescAttr(RelationGetDescr(rel), ct->key_att[k] - 1);

			values[k] = heap_getattr(tuple, ct->key_att[k], RelationGetDescr(rel), &isnull);
			nulls[k] = isnull ? 'n' : ' ';
			types[k] = att->atttypid;
			if (k)
				appendStringInfoString(&sql, " AND ");
			cm_append_eq(&sql, psprintf("t.%s", quote_identifier(NameStr(att->attname))), types[k],
						 psprintf("$%d", k + 1), types[k]);
		}
		cm_table_owner_begin(target, &save);
		ret = SPI_execute_with_args(sql.data, ct->nkey, types, values, nulls, true, 1);
		cm_role_end(&save);
		if (ret == SPI_OK_SELECT && SPI_processed > 0)
		{
			hash_seq_term(&seq);
			result = MemoryContextStrdup(TopTransactionContext, m->tenant);
			break;
		}
	}
	SPI_finish();
	return result;
}

/* the text of a tenant value, as the WHEN clause's ::text has it */
static char *
tenant_text(CaptureTable *ct, Datum d)
{
	char	   *t = OutputFunctionCall(&ct->tenant_out, d);

	if (ct->tenant_bpchar)
	{
		int			len = strlen(t);

		while (len > 0 && t[len - 1] == ' ')
			t[--len] = '\0';
	}
	return t;
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
	return tenant_text(ct, d);
}

/* one entry of a log: the tenant, the time, the key values in the log's order */
static void
log_insert(Relation logrel, int tenant_pos, int at_pos, const char *tenant,
		   int nkey, const int *key_pos, const Datum *keys, const bool *keynulls)
{
	Datum		values[INDEX_MAX_KEYS + 2];
	bool		nulls[INDEX_MAX_KEYS + 2];
	TupleDesc	desc = RelationGetDescr(logrel);
	HeapTuple	logtup;

	for (int i = 0; i < desc->natts && i < INDEX_MAX_KEYS + 2; i++)
	{
		values[i] = (Datum) 0;
		nulls[i] = true;
	}
	values[tenant_pos] = CStringGetTextDatum(tenant);
	nulls[tenant_pos] = false;
	/*
	 * When the change was made (its transaction's start; its commit, read
	 * from the WAL): capture lag in seconds.
	 */
	values[at_pos] = TimestampTzGetDatum(wal_change_at != 0 ? wal_change_at :
										 GetCurrentTransactionStartTimestamp());
	nulls[at_pos] = false;
	for (int k = 0; k < nkey; k++)
	{
		values[key_pos[k]] = keys[k];
		nulls[key_pos[k]] = keynulls[k];
	}
	logtup = heap_form_tuple(desc, values, nulls);
	simple_heap_insert(logrel, logtup);
	heap_freetuple(logtup);
}

static void
log_key(Relation rel, CaptureTable *ct, HeapTuple tuple, const char *tenant)
{
	Relation	logrel = table_open(ct->log_relid, RowExclusiveLock);
	Datum		keys[INDEX_MAX_KEYS];
	bool		keynulls[INDEX_MAX_KEYS];

	if (RelationGetDescr(logrel)->natts > INDEX_MAX_KEYS + 2)
		elog(ERROR, "clinic_migrate: log table %s is not one of ours", RelationGetRelationName(logrel));
	for (int k = 0; k < ct->nkey; k++)
		keys[k] = heap_getattr(tuple, ct->key_att[k], RelationGetDescr(rel), &keynulls[k]);
	log_insert(logrel, ct->log_tenant, ct->log_at, tenant, ct->nkey, ct->log_key, keys, keynulls);
	table_close(logrel, RowExclusiveLock);
}

/*
 * The child tables whose rows find their tenant through a row of this
 * table (their foreign key path passes through it), with the query that
 * lists the keys of those rows under one row of ours: built the first time
 * a row of this table changes tenant.
 */
static void
build_descendants(Relation rel, CaptureTable *ct)
{
	TenantPlan *plan;
	Oid			relid = base_relid(rel);
	MemoryContext old;
	CmRoleSave	save;
	List	   *found = NIL;

	if (ct->descendants_built)
		return;
	/* the plan reads the catalogs and clinic_migrate's own tables */
	cm_owner_begin(&save);
	plan = plan_of(rel);
	cm_role_end(&save);
	for (int i = 0; i < plan->ncopied; i++)
	{
		PlanTable  *pt = &plan->tables[i];

		if (pt->kind != PLAN_CHILD)
			continue;
		for (int h = 0; h < pt->nhops; h++)
		{
			PlanHop    *hop = &pt->hops[h];
			Oid			below = h == 0 ? pt->relid : pt->hops[h - 1].parent;
			StringInfoData sql;
			CaptureDescendant *d;
			Oid			logrel;

			if (hop->parent != relid)
				continue;
			logrel = capture_log_relid(pt->relid);
			if (!OidIsValid(logrel))
				break;
			old = MemoryContextSwitchTo(ct->cxt);
			d = palloc0(sizeof(CaptureDescendant));
			d->child = pt->relid;
			d->log_relid = logrel;
			initStringInfo(&sql);
			appendStringInfoString(&sql, "SELECT ");
			cm_append_quoted_list(&sql, plan_key_columns(pt), "a0");
			append_hop_joins(&sql, pt, h);
			appendStringInfoString(&sql, " WHERE ");
			d->nparams = hop->nkeys;
			for (int k = 0; k < hop->nkeys; k++)
			{
				d->param_att[k] = att_in(rel, relid, hop->parent_att[k]);
				d->param_type[k] = get_atttype(relid, hop->parent_att[k]);
				if (k)
					appendStringInfoString(&sql, " AND ");
				cm_append_eq(&sql, psprintf("$%d", k + 1), d->param_type[k],
							 psprintf("a%d.%s", h, quote_identifier(get_attname(below, hop->child_att[k], false))),
							 get_atttype(below, hop->child_att[k]));
			}
			d->sql = sql.data;
			found = lappend(found, d);
			MemoryContextSwitchTo(old);
			break;
		}
	}
	/* only whole: an error above leaves the entry to be built again, not half-built */
	ct->descendants = found;
	ct->descendants_built = true;
}

/*
 * A row that changed tenant takes the child rows under it along (they find
 * their tenant through it), and no trigger fires for them: log their keys
 * for the tenant too, so that replay, and the checks of the cutover pause,
 * see them.
 */
static void
log_descendants(Relation rel, CaptureTable *ct, HeapTuple tuple, const char *tenant)
{
	ListCell   *lc;

	SPI_connect();
	build_descendants(rel, ct);
	foreach(lc, ct->descendants)
	{
		CaptureDescendant *d = lfirst(lc);
		Datum		params[INDEX_MAX_KEYS];
		char		pnulls[INDEX_MAX_KEYS];
		bool		isnull = false;
		CmRoleSave	save;
		int			ret;
		Relation	logrel;
		TupleDesc	logdesc;
		int			tenant_pos = -1,
					at_pos = -1,
					nkey = 0;
		int			key_pos[INDEX_MAX_KEYS];

		for (int k = 0; k < d->nparams; k++)
		{
			params[k] = heap_getattr(tuple, d->param_att[k], RelationGetDescr(rel), &isnull);
			pnulls[k] = isnull ? 'n' : ' ';
			if (isnull)
				break;
		}
		if (isnull)
			continue;
		cm_table_owner_begin(d->child, &save);
		{
			/* a fresh snapshot: a REPEATABLE READ writer's own may miss child rows added since */
			SPIPlanPtr	qp = SPI_prepare(d->sql, d->nparams, d->param_type);

			if (qp == NULL)
				elog(ERROR, "clinic_migrate: could not prepare the lookup of the rows under a row of %s",
					 RelationGetRelationName(rel));
			ret = SPI_execute_snapshot(qp, params, pnulls, GetLatestSnapshot(), InvalidSnapshot,
									   false, false, 0);
		}
		cm_role_end(&save);
		if (ret != SPI_OK_SELECT)
			elog(ERROR, "clinic_migrate: could not list the rows under a row of %s",
				 RelationGetRelationName(rel));
		if (SPI_processed == 0)
			continue;

		logrel = table_open(d->log_relid, RowExclusiveLock);
		logdesc = RelationGetDescr(logrel);
		for (int i = 0; i < logdesc->natts; i++)
		{
			Form_pg_attribute la = TupleDescAttr(logdesc, i);

			if (la->attisdropped)
				continue;
			if (strcmp(NameStr(la->attname), "_cm_tenant") == 0)
				tenant_pos = i;
			else if (strcmp(NameStr(la->attname), "_cm_at") == 0)
				at_pos = i;
			else if (nkey < SPI_tuptable->tupdesc->natts &&
					 TupleDescAttr(SPI_tuptable->tupdesc, nkey)->atttypid == la->atttypid)
				key_pos[nkey++] = i;
			else
				nkey = -1;
			if (nkey < 0)
				break;
		}
		if (tenant_pos < 0 || at_pos < 0 || nkey != SPI_tuptable->tupdesc->natts)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("the key of %s changed while clinic_migrate captures its changes",
							cm_qualified_relname(d->child)),
					 errhint("Change the key column back, or roll back every tenant whose migration is under way "
							 "(clinic_migrate.status) before changing it.")));
		for (uint64 r = 0; r < SPI_processed; r++)
		{
			Datum		keys[INDEX_MAX_KEYS];
			bool		keynulls[INDEX_MAX_KEYS];

			for (int k = 0; k < nkey; k++)
				keys[k] = SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, k + 1, &keynulls[k]);
			log_insert(logrel, tenant_pos, at_pos, tenant, nkey, key_pos, keys, keynulls);
		}
		table_close(logrel, RowExclusiveLock);
	}
	SPI_finish();
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

/*
 * Take the tenant's write lock before a write of its rows is let through,
 * then read the set of moving tenants again: cutover and rollback hold the
 * lock exclusively while they drain and flip, so a writer that waited here
 * finds the tenant where the flip put it.  Returns the tenant's entry as it
 * is now, or NULL.
 */
static MovingTenant *
lock_tenant_for_write(MovingTenant *m)
{
	char		tenant[CM_MAX_TENANT_LEN + 1];

	/*
	 * Held already in this transaction: the tenant cannot have been
	 * switched since (the switch waits for us), the entry is current.
	 */
	if (!cm_tenant_write_lock(m->schema_oid, false))
		return m;
	strlcpy(tenant, m->tenant, sizeof(tenant));
	AcceptInvalidationMessages();
	return moving_find(tenant, strlen(tenant));
}

static void
guard_error(Relation rel, MovingTenant *m)
{
	ereport(ERROR,
			(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
			 errmsg("tenant \"%s\" has moved to schema \"%s\"", m->tenant, m->schema),
			 errdetail("Its rows in %s.%s no longer take writes.",
					   quote_identifier(get_namespace_name(RelationGetNamespace(rel))),
					   quote_identifier(RelationGetRelationName(rel))),
			 errhint("Retry the transaction against schema \"%s\", for example after SELECT clinic_migrate.set_tenant(%s).",
					 m->schema, quote_literal_cstr(m->tenant))));
}

/*
 * What the shared tables' trigger does for one tenant a row belonged or
 * belongs to: nothing, log the key (capture), or refuse (the tenant has
 * been cut over).  Returns true if the key is to be logged.
 */
static bool
shared_write_allowed(Relation rel, const char *tenant)
{
	MovingTenant *m;

	if (tenant == NULL)
		return false;
	m = moving_find(tenant, strlen(tenant));
	if (m == NULL || !shared_trigger_acts(m->state))
		return false;
	m = lock_tenant_for_write(m);
	if (m == NULL || !shared_trigger_acts(m->state))
		return false;
	if (m->state != CM_STATE_CAPTURE)
		guard_error(rel, m);
	return true;
}

/*
 * The row before (DELETE, UPDATE) and after (INSERT, UPDATE) the change a
 * row trigger fired for; false for any other event.
 */
static bool
row_images(TriggerData *td, HeapTuple *oldtup, HeapTuple *newtup)
{
	*oldtup = NULL;
	*newtup = NULL;
	if (TRIGGER_FIRED_BY_INSERT(td->tg_event))
		*newtup = td->tg_trigtuple;
	else if (TRIGGER_FIRED_BY_UPDATE(td->tg_event))
	{
		*oldtup = td->tg_trigtuple;
		*newtup = td->tg_newtuple;
	}
	else if (TRIGGER_FIRED_BY_DELETE(td->tg_event))
		*oldtup = td->tg_trigtuple;
	else
		return false;
	return true;
}

/*
 * The owner of a captured partitioned table may execute our trigger
 * functions (its partitions get our triggers): a trigger of its own calling
 * them, with arguments of its choosing, would make the capture cache read
 * the tenant from another column.  Only ours act.
 */
static void
not_ours_refused(Trigger *trigger, const char *prefix)
{
	bool		ours;

	if (strcmp(prefix, "clinic_migrate_capture_") == 0)
		ours = strcmp(trigger->tgname, "clinic_migrate_capture_insert") == 0 ||
			strcmp(trigger->tgname, "clinic_migrate_capture_tenant") == 0 ||
			strcmp(trigger->tgname, "clinic_migrate_capture_update") == 0 ||
			strcmp(trigger->tgname, "clinic_migrate_capture_delete") == 0;
	else
		ours = strcmp(trigger->tgname, prefix) == 0;
	if (!ours)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("trigger \"%s\" is not clinic_migrate's", trigger->tgname),
				 errhint("clinic_migrate's trigger functions are for the triggers it makes itself.")));
}

/*
 * What capture from the WAL does for one tenant a row belonged or belongs
 * to: log the key while the tenant's changes are captured; nothing for the
 * others (a cut-over tenant's writes were refused by the triggers, which
 * cutover put on before its pause).  No lock: nobody waits for this.
 */
static bool
wal_logs(const char *tenant)
{
	MovingTenant *m;

	if (tenant == NULL)
		return false;
	m = moving_find(tenant, strlen(tenant));
	return m != NULL && m->state == CM_STATE_CAPTURE;
}

/*
 * A row's change, old and new images (either NULL), seen by the trigger
 * (wal false) or in the WAL (wal true).  From the WAL, the old image holds
 * the replica identity's columns only, and a child row's parent is looked
 * up later than the trigger would: a row whose tenant cannot be told from
 * them belongs to whichever moving tenant's copy has its key.
 */
static void
capture_change(Relation rel, CaptureTable *ct, HeapTuple oldtup, HeapTuple newtup, bool wal)
{
	char	   *oldtenant = NULL;
	char	   *newtenant = NULL;
	bool		old_log,
				new_log;

	if (oldtup)
		/*
		 * Deleted, or its parent may be (ON DELETE SET NULL): the copies
		 * are asked too (from the WAL, every tenant gets it instead).
		 */
		oldtenant = tuple_tenant(rel, ct, oldtup, !wal);
	if (newtup)
		newtenant = tuple_tenant(rel, ct, newtup, false);
	if (wal)
	{
		/*
		 * A row the WAL does not say the tenant of: every captured tenant
		 * gets its key.  Asking the copies which has it would race with a
		 * copy batch or replay round inserting it under an older snapshot;
		 * replay deletes a key that is not, or no longer, the tenant's.
		 */
		if ((oldtup && oldtenant == NULL) || (newtup && newtenant == NULL))
		{
			HASH_SEQ_STATUS seq;
			MovingTenant *m;
			char	   *base_schema = get_namespace_name(get_rel_namespace(ct->base));
			char	   *base_name = get_rel_name(ct->base);

			hash_seq_init(&seq, moving);
			while ((m = hash_seq_search(&seq)) != NULL)
			{
				Oid			nsp;

				/* only the tenants whose copy has this table: no entry that no replay reads */
				if (m->state != CM_STATE_CAPTURE || base_schema == NULL || base_name == NULL ||
					strcmp(m->source_schema, base_schema) != 0)
					continue;
				nsp = get_namespace_oid(m->schema, true);
				if (!OidIsValid(nsp) || !OidIsValid(get_relname_relid(base_name, nsp)))
					continue;
				if (oldtup && oldtenant == NULL)
					log_key(rel, ct, oldtup, m->tenant);
				if (newtup && newtenant == NULL)
					log_key(rel, ct, newtup, m->tenant);
			}
		}
		old_log = wal_logs(oldtenant);
		new_log = wal_logs(newtenant);
	}
	else
	{
		old_log = shared_write_allowed(rel, oldtenant);
		/* the same tenant (most UPDATEs): the same answer, asked once */
		if (oldtenant && newtenant && strcmp(oldtenant, newtenant) == 0)
			new_log = old_log;
		else
			new_log = shared_write_allowed(rel, newtenant);
	}

	/*
	 * Log the key the row had and the key it has now; an UPDATE that keeps
	 * both tenant and key logs once.  Replay re-reads the row by key, so
	 * what changed does not matter, only which keys.
	 */
	if (old_log)
		log_key(rel, ct, oldtup, oldtenant);
	if (new_log &&
		!(old_log && strcmp(oldtenant, newtenant) == 0 && same_key(rel, ct, oldtup, newtup)))
		log_key(rel, ct, newtup, newtenant);

	/* a row that changed tenant takes the child rows under it along */
	if (!wal && oldtup && newtup && (old_log || new_log) &&
		(oldtenant == NULL || newtenant == NULL || strcmp(oldtenant, newtenant) != 0))
	{
		if (old_log)
			log_descendants(rel, ct, newtup, oldtenant);
		if (new_log)
			log_descendants(rel, ct, newtup, newtenant);
	}
}

/*
 * clinic_migrate.capture(): AFTER ROW trigger on the planned shared tables
 * (arguments: the log table's OID, the tenant column or nothing for a child
 * table).
 */
PG_FUNCTION_INFO_V1(cm_capture);
Datum
cm_capture(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	Relation	rel;
	CaptureTable *ct;
	HeapTuple	oldtup = NULL;
	HeapTuple	newtup = NULL;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_FOR_ROW(td->tg_event) ||
		!TRIGGER_FIRED_AFTER(td->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("clinic_migrate.capture() must be an AFTER ROW trigger")));
	not_ours_refused(td->tg_trigger, "clinic_migrate_capture_");
	if (cm_applying)
		return PointerGetDatum(NULL);
	rel = td->tg_relation;
	ct = capture_table_get(rel, td->tg_trigger);

	if (!row_images(td, &oldtup, &newtup))
		return PointerGetDatum(NULL);
	capture_change(rel, ct, oldtup, newtup, false);
	return PointerGetDatum(NULL);
}

/* the cache entry of a table whose changes come from the WAL */
static CaptureTable *
wal_capture_table(Relation rel, const char *tenant_column)
{
	Trigger		trig;
	char	   *args[2];
	AttrNumber	tatt = (tenant_column && tenant_column[0]) ?
		attnameAttNum(rel, tenant_column, true) : InvalidAttrNumber;

	/* what the trigger's arguments would say: the log (found by table), the tenant column */
	memset(&trig, 0, sizeof(trig));
	trig.tgname = "clinic_migrate_capture_wal";
	args[0] = "";
	args[1] = tatt > 0 ? (char *) tenant_column : "";
	trig.tgnargs = 2;
	trig.tgargs = args;
	return capture_table_get(rel, &trig);
}

/* the columns a change of rel read from the WAL must carry (see capture.h) */
bool *
capture_wal_needed(Relation rel, const char *tenant_column)
{
	CaptureTable *ct = wal_capture_table(rel, tenant_column);
	bool	   *needed;

	if (ct->wal_needed)
		return ct->wal_needed;
	needed = MemoryContextAllocZero(ct->cxt, sizeof(bool) * (RelationGetDescr(rel)->natts + 1));
	for (int k = 0; k < ct->nkey; k++)
		needed[ct->key_att[k]] = true;
	if (ct->tenant_att != InvalidAttrNumber)
		needed[ct->tenant_att] = true;
	else
	{
		/* a child row: the foreign key its tenant is found through */
		CmRoleSave	save;
		TenantPlan *plan;
		PlanTable  *pt;

		SPI_connect();
		cm_owner_begin(&save);
		plan = plan_of(rel);
		pt = plan_find(plan, ct->base);
		for (int k = 0; pt && pt->nhops > 0 && k < pt->hops[0].nkeys; k++)
		{
			AttrNumber	att = att_in(rel, pt->relid, pt->hops[0].child_att[k]);

			if (att > 0 && att <= RelationGetDescr(rel)->natts)
				needed[att] = true;
		}
		cm_role_end(&save);
		SPI_finish();
	}
	ct->wal_needed = needed;
	return needed;
}

/* a change read from the WAL (see capture.h) */
void
capture_row_from_wal(Relation rel, HeapTuple oldtup, HeapTuple newtup, TimestampTz committed,
					 const char *tenant_column)
{
	CaptureTable *ct = wal_capture_table(rel, tenant_column);

	if (!moving_valid)
		moving_load();
	wal_change_at = committed;
	PG_TRY();
	{
		capture_change(rel, ct, oldtup, newtup, true);
	}
	PG_FINALLY();
	{
		wal_change_at = 0;
	}
	PG_END_TRY();
}

/* does some tenant need the full capture triggers (see capture.h)? */
bool
capture_full_triggers_needed(void)
{
	if (!moving_valid)
		moving_load();
	return moving_need_triggers;
}

/* is some tenant captured from the WAL (see capture.h)? */
bool
capture_wal_tenants_exist(void)
{
	HASH_SEQ_STATUS seq;
	MovingTenant *m;
	bool		found = false;

	if (!moving_valid)
		moving_load();
	hash_seq_init(&seq, moving);
	while ((m = hash_seq_search(&seq)) != NULL)
		if (m->wal && m->state == CM_STATE_CAPTURE)
		{
			found = true;
			hash_seq_term(&seq);
			break;
		}
	return found;
}

/*
 * clinic_migrate.capture_reverse(): AFTER ROW trigger on a cut-over
 * tenant's tables (arguments: the log table's OID, the tenant column or
 * '', the tenant).  After cutover it logs the key of every change, which
 * the sync worker applies to the shared rows so that a rollback loses
 * nothing.  Before cutover, or once the tenant is rolled back, the schema
 * is not where the tenant lives: writes are refused.  After finalize it
 * does nothing.
 */
PG_FUNCTION_INFO_V1(cm_capture_reverse);
Datum
cm_capture_reverse(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	Relation	rel;
	CaptureTable *ct;
	const char *tenant;
	MovingTenant *m;
	HeapTuple	oldtup = NULL;
	HeapTuple	newtup = NULL;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_FOR_ROW(td->tg_event) ||
		!TRIGGER_FIRED_AFTER(td->tg_event) || td->tg_trigger->tgnargs < 3)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("clinic_migrate.capture_reverse() must be an AFTER ROW trigger with three arguments")));
	not_ours_refused(td->tg_trigger, "clinic_migrate_capture_reverse");
	if (cm_applying)
		return PointerGetDatum(NULL);
	rel = td->tg_relation;
	tenant = td->tg_trigger->tgargs[2];
	m = moving_find(tenant, strlen(tenant));
	if (m == NULL || m->state == CM_STATE_FINALIZING || m->state == CM_STATE_FINALIZED)
		return PointerGetDatum(NULL);
	m = lock_tenant_for_write(m);
	if (m == NULL || m->state == CM_STATE_FINALIZING || m->state == CM_STATE_FINALIZED)
		return PointerGetDatum(NULL);
	if (m->state != CM_STATE_CUT_OVER)
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("tenant \"%s\" lives in schema \"%s\", not in \"%s\"", m->tenant,
						m->source_schema, m->schema),
				 errdetail("Schema \"%s\" is %s.", m->schema,
						   m->state == CM_STATE_ROLLING_BACK ? "being rolled back"
						   : "a copy kept in sync until the tenant's cutover"),
				 errhint("Retry the transaction against schema \"%s\", for example after SELECT clinic_migrate.set_tenant(%s).",
						 m->source_schema, quote_literal_cstr(m->tenant))));

	ct = capture_table_get(rel, td->tg_trigger);
	if (!row_images(td, &oldtup, &newtup))
		return PointerGetDatum(NULL);

	/* a row in the tenant's schema is the tenant's: it must say so */
	if (newtup && ct->tenant_att != InvalidAttrNumber)
	{
		char	   *t = tuple_tenant(rel, ct, newtup, false);

		if (t == NULL || strcmp(t, tenant) != 0)
			ereport(ERROR,
					(errcode(ERRCODE_CHECK_VIOLATION),
					 errmsg("a row of %s.%s must belong to tenant \"%s\"",
							quote_identifier(m->schema), quote_identifier(RelationGetRelationName(rel)),
							tenant),
					 errdetail("Its %s is %s.", quote_identifier(td->tg_trigger->tgargs[1]),
							   t ? quote_literal_cstr(t) : "NULL"),
					 errhint("To move a row to another tenant, delete it here and insert it where that tenant lives.")));
	}
	if (oldtup)
		log_key(rel, ct, oldtup, tenant);
	if (newtup && !(oldtup && same_key(rel, ct, oldtup, newtup)))
		log_key(rel, ct, newtup, tenant);
	return PointerGetDatum(NULL);
}

/*
 * clinic_migrate.guard_truncate(): BEFORE TRUNCATE trigger on the planned
 * shared tables (no argument) and on a cut-over tenant's tables (argument:
 * the tenant).  TRUNCATE fires no row trigger, so neither capture nor
 * replay could see it: refuse while it would be lost.
 */
PG_FUNCTION_INFO_V1(cm_guard_truncate);
Datum
cm_guard_truncate(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	Relation	rel;
	MovingTenant *busy = NULL;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_BY_TRUNCATE(td->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("clinic_migrate.guard_truncate() must be a TRUNCATE trigger")));
	if (cm_applying)
		return PointerGetDatum(NULL);
	rel = td->tg_relation;
	AcceptInvalidationMessages();
	if (td->tg_trigger->tgnargs >= 1)
	{
		MovingTenant *m = moving_find(td->tg_trigger->tgargs[0], strlen(td->tg_trigger->tgargs[0]));

		if (m && m->state != CM_STATE_FINALIZING && m->state != CM_STATE_FINALIZED)
			busy = m;
	}
	else
	{
		HASH_SEQ_STATUS seq;
		MovingTenant *m;

		if (!moving_valid)
			moving_load();
		hash_seq_init(&seq, moving);
		while ((m = hash_seq_search(&seq)) != NULL)
		{
			if (busy == NULL && (m->state == CM_STATE_CAPTURE || m->state == CM_STATE_CUT_OVER ||
								 m->state == CM_STATE_FINALIZING))
				busy = m;
		}
	}
	if (busy)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_IN_USE),
				 errmsg("cannot truncate %s.%s while tenant \"%s\" is being migrated",
						quote_identifier(get_namespace_name(RelationGetNamespace(rel))),
						quote_identifier(RelationGetRelationName(rel)), busy->tenant),
				 errdetail("TRUNCATE fires no row trigger: the change could not reach the other copy of the tenant's rows."),
				 errhint("Delete the rows instead, or finish the migration (finalize_tenant) or roll it back first.")));
	return PointerGetDatum(NULL);
}

/* ---- installation ---- */

/* the function a trigger of ours calls, by its name in our schema */
static Oid
trigger_func_oid(const char *trigname)
{
	const char *func;

	if (strcmp(trigname, "clinic_migrate_guard_truncate") == 0)
		func = "guard_truncate";
	else if (strcmp(trigname, "clinic_migrate_capture_reverse") == 0)
		func = "capture_reverse";
	else
		func = "capture";
	return LookupFuncName(list_make2(makeString(CM_SCHEMA), makeString(pstrdup(func))),
						  0, NULL, false);
}

/*
 * The trigger named name on relid, when it is ours: it calls our function.
 * Anyone with TRIGGER on a table may create a trigger with our name (our
 * functions they may not call): a decoy would stand in for the capture,
 * and cleanup would drop someone else's trigger.  foreign says what to do
 * with a trigger of our name that is not ours: raise an error (install),
 * or pass it by (drop).
 */
static Oid
our_trigger_oid(Oid relid, const char *name, bool error_if_foreign)
{
	Relation	tgrel;
	ScanKeyData key[2];
	SysScanDesc scan;
	HeapTuple	tup;
	Oid			trig = InvalidOid;
	Oid			func = InvalidOid;

	tgrel = table_open(TriggerRelationId, AccessShareLock);
	ScanKeyInit(&key[0], Anum_pg_trigger_tgrelid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(relid));
	ScanKeyInit(&key[1], Anum_pg_trigger_tgname, BTEqualStrategyNumber, F_NAMEEQ,
				CStringGetDatum(name));
	scan = systable_beginscan(tgrel, TriggerRelidNameIndexId, true, NULL, 2, key);
	if (HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		Form_pg_trigger tg = (Form_pg_trigger) GETSTRUCT(tup);

		trig = tg->oid;
		func = tg->tgfoid;
	}
	systable_endscan(scan);
	table_close(tgrel, AccessShareLock);
	if (!OidIsValid(trig) || func == trigger_func_oid(name))
		return trig;
	if (error_if_foreign)
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("table %s has a trigger named \"%s\" that is not clinic_migrate's",
						cm_qualified_relname(relid), name),
				 errdetail("Names beginning with clinic_migrate_ are kept for the triggers that capture a moving tenant's changes."),
				 errhint("Drop or rename that trigger, then run the migration again: it resumes.")));
	return InvalidOid;
}

/* CREATE TRIGGER, then ENABLE ALWAYS (replicas and restores are captured too) */
static void
create_trigger(Oid relid, const char *name, const char *def)
{
	Relation	rel;

	if (OidIsValid(our_trigger_oid(relid, name, true)))
		return;
	cm_ddl_with_retry(psprintf("CREATE TRIGGER %s %s", quote_identifier(name), def));
	CommandCounterIncrement();

	/*
	 * ENABLE ALWAYS from C: ALTER TABLE would want the table's owner, where
	 * CREATE TRIGGER, run as the caller above, wanted only the TRIGGER
	 * right (README, Privileges).  The trigger is ours; the lock is held.
	 */
	rel = table_open(relid, ShareRowExclusiveLock);
	EnableDisableTrigger(rel, name, TRIGGER_FIRES_ALWAYS, false, ShareRowExclusiveLock);
	table_close(rel, NoLock);
	CommandCounterIncrement();
	capture_fix_partitions(relid);
}

/* the partitions of relid, at every level (not relid itself) */
static List *
partitions_of(Oid relid)
{
	return cm_partitions_of(relid);
}

/* a copy of pg_trigger's row of trigger trig, or NULL */
static HeapTuple
trigger_row(Oid trig)
{
	Relation	tgrel = table_open(TriggerRelationId, AccessShareLock);
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;

	ScanKeyInit(&key, Anum_pg_trigger_oid, BTEqualStrategyNumber, F_OIDEQ, ObjectIdGetDatum(trig));
	scan = systable_beginscan(tgrel, TriggerOidIndexId, true, NULL, 1, &key);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
		tup = heap_copytuple(tup);
	systable_endscan(scan);
	table_close(tgrel, AccessShareLock);
	return tup;
}

/*
 * A partitioned table's row triggers are cloned onto its partitions (now,
 * and onto each partition made or attached later), but as plain ENABLE
 * triggers, and its statement triggers are not: TRUNCATE of one partition
 * would pass the guard by.  For each partition of relid: our row triggers
 * fire ALWAYS as relid's do, and relid's truncate guard is there too, with
 * its argument.  The caller holds a lock on relid that keeps DDL out.
 */
void
capture_fix_partitions(Oid relid)
{
	List	   *parts = partitions_of(relid);
	ListCell   *lc;
	Oid			guard;
	char	   *guard_args = NULL;
	const char *rows[5] = {"clinic_migrate_capture_insert", "clinic_migrate_capture_update",
	"clinic_migrate_capture_delete", "clinic_migrate_capture_reverse", "clinic_migrate_capture_tenant"};
	List	   *todo = NIL;

	if (parts == NIL)
		return;
	guard = our_trigger_oid(relid, "clinic_migrate_guard_truncate", false);
	if (OidIsValid(guard))
	{
		HeapTuple	tup = trigger_row(guard);
		Relation	tgrel = table_open(TriggerRelationId, AccessShareLock);

		guard_args = "";
		if (HeapTupleIsValid(tup) && ((Form_pg_trigger) GETSTRUCT(tup))->tgnargs > 0)
		{
			bool		isnull;
			bytea	   *val = DatumGetByteaPP(heap_getattr(tup, Anum_pg_trigger_tgargs,
														   RelationGetDescr(tgrel), &isnull));

			guard_args = quote_literal_cstr((char *) VARDATA_ANY(val));
		}
		table_close(tgrel, AccessShareLock);
	}

	/* what needs a change, looked at first: nothing locked when nothing does */
	foreach(lc, parts)
	{
		Oid			part = lfirst_oid(lc);
		bool		needed = false;

		/* a foreign table partition takes no TRUNCATE trigger, and has no rows here */
		if (get_rel_relkind(part) == RELKIND_FOREIGN_TABLE)
			continue;
		for (int k = 0; k < 5 && !needed; k++)
		{
			Oid			theirs = OidIsValid(our_trigger_oid(relid, rows[k], false)) ?
				our_trigger_oid(part, rows[k], false) : InvalidOid;
			HeapTuple	tup = OidIsValid(theirs) ? trigger_row(theirs) : NULL;

			if (HeapTupleIsValid(tup))
			{
				needed = ((Form_pg_trigger) GETSTRUCT(tup))->tgenabled != TRIGGER_FIRES_ALWAYS;
				heap_freetuple(tup);
			}
		}
		if (!needed && guard_args && !OidIsValid(our_trigger_oid(part, "clinic_migrate_guard_truncate", true)))
			needed = true;
		if (needed)
			todo = lappend_oid(todo, part);
	}
	if (todo == NIL)
		return;
	/* all at once, as the application's tables always are */
	cm_lock_relations(todo, ShareRowExclusiveLock, false);
	foreach(lc, todo)
	{
		Oid			part = lfirst_oid(lc);
		Relation	rel = table_open(part, NoLock);

		for (int k = 0; k < 5; k++)
		{
			Oid			theirs = OidIsValid(our_trigger_oid(relid, rows[k], false)) ?
				our_trigger_oid(part, rows[k], false) : InvalidOid;
			HeapTuple	tup = OidIsValid(theirs) ? trigger_row(theirs) : NULL;

			if (HeapTupleIsValid(tup))
			{
				bool		always = ((Form_pg_trigger) GETSTRUCT(tup))->tgenabled == TRIGGER_FIRES_ALWAYS;

				heap_freetuple(tup);
				if (!always)
				{
					EnableDisableTrigger(rel, rows[k], TRIGGER_FIRES_ALWAYS, false, ShareRowExclusiveLock);
					CommandCounterIncrement();
				}
			}
		}
		table_close(rel, NoLock);
		if (guard_args && !OidIsValid(our_trigger_oid(part, "clinic_migrate_guard_truncate", true)))
		{
			cm_ddl_with_retry(psprintf("CREATE TRIGGER clinic_migrate_guard_truncate BEFORE TRUNCATE ON %s "
									   "FOR EACH STATEMENT EXECUTE FUNCTION clinic_migrate.guard_truncate(%s)",
									   cm_qualified_relname(part), guard_args));
			CommandCounterIncrement();
			rel = table_open(part, NoLock);
			EnableDisableTrigger(rel, "clinic_migrate_guard_truncate", TRIGGER_FIRES_ALWAYS, false,
								 ShareRowExclusiveLock);
			table_close(rel, NoLock);
			CommandCounterIncrement();
		}
	}
}

/* our trigger name on relid goes, if it is there (dropped as the object we made) */
static void
drop_our_trigger(Oid relid, const char *name)
{
	Oid			trig = our_trigger_oid(relid, name, false);
	ObjectAddress obj;

	if (!OidIsValid(trig))
		return;
	ObjectAddressSet(obj, TriggerRelationId, trig);
	performDeletion(&obj, DROP_RESTRICT, PERFORM_DELETION_INTERNAL);
}

/* our truncate guards on relid's partitions go (their row triggers go with relid's) */
static void
drop_partition_guards(Oid relid)
{
	ListCell   *lc;

	foreach(lc, partitions_of(relid))
	{
		drop_our_trigger(lfirst_oid(lc), "clinic_migrate_guard_truncate");
		CommandCounterIncrement();
	}
}

/*
 * A partition made or attached under a table with our row triggers gets
 * them as its maker, which PostgreSQL allows only to a role that may
 * execute their functions.  Only the table's owner (or a member) may make
 * its partitions: that role is let execute funcs (the grant is made as
 * the extension's owner).  It could already drop or disable our triggers
 * on its own tables; nothing is open to PUBLIC.
 */
static void
grant_trigger_functions(Oid relid, const char *funcs)
{
	Oid			owner;

	if (get_rel_relkind(relid) != RELKIND_PARTITIONED_TABLE)
		return;
	owner = cm_rel_owner(relid);
	if (superuser_arg(owner))
		return;
	cm_state_exec(psprintf("GRANT EXECUTE ON FUNCTION %s TO %s", funcs,
						   quote_identifier(GetUserNameFromId(owner, false))),
				  0, NULL, NULL, NULL, 0);
	CommandCounterIncrement();
}

/* has the table (or a partition of it) a BEFORE UPDATE row trigger not ours? */
static bool
app_before_update_triggers(Oid relid)
{
	List	   *rels = lcons_oid(relid, partitions_of(relid));
	ListCell   *lc;
	bool		found = false;

	foreach(lc, rels)
	{
		Relation	tgrel = table_open(TriggerRelationId, AccessShareLock);
		ScanKeyData key;
		SysScanDesc scan;
		HeapTuple	tup;

		ScanKeyInit(&key, Anum_pg_trigger_tgrelid, BTEqualStrategyNumber, F_OIDEQ,
					ObjectIdGetDatum(lfirst_oid(lc)));
		scan = systable_beginscan(tgrel, TriggerRelidNameIndexId, true, NULL, 1, &key);
		while (!found && HeapTupleIsValid(tup = systable_getnext(scan)))
		{
			Form_pg_trigger tg = (Form_pg_trigger) GETSTRUCT(tup);

			found = TRIGGER_FOR_ROW(tg->tgtype) && TRIGGER_FOR_BEFORE(tg->tgtype) &&
				TRIGGER_FOR_UPDATE(tg->tgtype) && strncmp(NameStr(tg->tgname), "clinic_migrate_", 15) != 0;
		}
		systable_endscan(scan);
		table_close(tgrel, AccessShareLock);
		if (found)
			break;
	}
	return found;
}

/* the lock that keeps two installers, or an installer and the cleanup, apart */
static void
installer_locktag(LOCKTAG *tag)
{
	SET_LOCKTAG_ADVISORY(*tag, MyDatabaseId, 0, 1, CM_LOCK_FIELD4);
}

void
capture_installer_lock(bool acquire)
{
	LOCKTAG		tag;

	installer_locktag(&tag);
	if (acquire)
		(void) LockAcquire(&tag, ExclusiveLock, true, false);
	else
		(void) LockRelease(&tag, ExclusiveLock, true);
}

/*
 * The triggers of the planned tables at position first to last - 1: those
 * that miss one are locked all at once, then get the missing ones.
 */
static void
install_range(TenantPlan *plan, int first, int last, bool full)
{
	Oid			nsp;
	LOCKTAG		tag;
	bool		has_map;

	/*
	 * One installer at a time in the database: two first migrations would
	 * both find a log table or trigger missing and both create it.  Then
	 * look again at the catalogs, which the other may have just changed.
	 */
	installer_locktag(&tag);
	(void) LockAcquire(&tag, ExclusiveLock, false, false);
	AcceptInvalidationMessages();
	nsp = get_namespace_oid(CM_SCHEMA, false);
	has_map = OidIsValid(get_relname_relid("capture_logs", nsp));

	/*
	 * The tables that still miss a trigger, locked all at once before the
	 * first CREATE TRIGGER: never one held while waiting for the next, in
	 * whatever order the application takes them.
	 */
	{
		List	   *lock = NIL;
		const char *all[4] = {"clinic_migrate_capture_insert", "clinic_migrate_capture_update",
		"clinic_migrate_capture_delete", "clinic_migrate_guard_truncate"};
		const char *wal[2] = {"clinic_migrate_capture_tenant", "clinic_migrate_guard_truncate"};

		for (int i = first; i < last; i++)
			for (int k = 0; k < (full ? 4 : 2); k++)
				if (!OidIsValid(our_trigger_oid(plan->tables[i].relid, full ? all[k] : wal[k], true)))
				{
					lock = lappend_oid(lock, plan->tables[i].relid);
					/* the triggers go onto its partitions too */
					lock = list_concat(lock, partitions_of(plan->tables[i].relid));
					break;
				}
		cm_lock_relations(lock, ShareRowExclusiveLock, false);
	}

	for (int i = first; i < last; i++)
	{
		PlanTable  *pt = &plan->tables[i];
		Oid			logrel = capture_log_relid(pt->relid);
		char	   *logname = OidIsValid(logrel) ? get_rel_name(logrel) :
			(has_map ? new_log_name(pt->relid) : psprintf("log_%u", pt->relid));
		StringInfoData sql;
		List	   *keys = plan_key_columns(pt);
		const char *ops[3] = {"INSERT", "UPDATE", "DELETE"};
		const char *names[3] = {"clinic_migrate_capture_insert", "clinic_migrate_capture_update",
		"clinic_migrate_capture_delete"};
		char	   *qrel = cm_qualified_relname(pt->relid);

		initStringInfo(&sql);
		if (!OidIsValid(logrel))
		{
			/* the log: the tenant, then the key columns with their own types */
			appendStringInfo(&sql, "CREATE TABLE %s.%s AS SELECT NULL::pg_catalog.text AS _cm_tenant, "
							 "NULL::pg_catalog.timestamptz AS _cm_at, ",
							 CM_SCHEMA, quote_identifier(logname));
			cm_append_quoted_list(&sql, keys, "s");
			appendStringInfo(&sql, " FROM %s s WITH NO DATA", qrel);
			cm_state_exec(sql.data, 0, NULL, NULL, NULL, 0);
			CommandCounterIncrement();
			logrel = get_relname_relid(logname, nsp);
			if (has_map)
			{
				Oid			types[2] = {OIDOID, OIDOID};
				Datum		values[2] = {ObjectIdGetDatum(pt->relid), ObjectIdGetDatum(logrel)};

				cm_state_exec("INSERT INTO clinic_migrate.capture_logs (source_table, log_table) "
							  "VALUES ($1, $2)", 2, types, values, NULL, 0);
				/* the decoding plugin's list of captured tables is read again */
				CacheInvalidateRelcacheByRelid(get_relname_relid("capture_logs", nsp));
				CommandCounterIncrement();
			}
		}
		if (!full)
		{
			/*
			 * From the WAL, an UPDATE's old row has the replica identity's
			 * columns only: one that moves a row to another tenant (or a
			 * child row to another parent) is told by this trigger, which
			 * the executor skips unless the statement sets those columns.
			 */
			const char *tcol = quote_identifier(plan->tenant_column);
			StringInfoData cols;

			StringInfoData changed;

			initStringInfo(&cols);
			initStringInfo(&changed);
			if (pt->kind == PLAN_CHILD)
			{
				for (int k = 0; pt->nhops > 0 && k < pt->hops[0].nkeys; k++)
				{
					const char *c = quote_identifier(get_attname(pt->relid, pt->hops[0].child_att[k], false));

					appendStringInfo(&cols, "%s%s", k ? ", " : "", c);
					appendStringInfo(&changed, "%sOLD.%s IS DISTINCT FROM NEW.%s", k ? " OR " : "", c, c);
				}
			}
			else
			{
				appendStringInfoString(&cols, tcol);
				appendStringInfo(&changed, "OLD.%s IS DISTINCT FROM NEW.%s", tcol, tcol);
			}

			/*
			 * A BEFORE UPDATE row trigger of the application's may change
			 * those columns in a statement that does not set them, where
			 * UPDATE OF does not fire: on such a table the WHEN alone
			 * decides, at the price of its evaluation for every UPDATE.
			 */
			if (cols.len > 0 && app_before_update_triggers(pt->relid))
				resetStringInfo(&cols);
			if (changed.len > 0)
				create_trigger(pt->relid, "clinic_migrate_capture_tenant",
							   psprintf("AFTER UPDATE%s%s ON %s FOR EACH ROW WHEN ((%s) AND %s) "
										"EXECUTE FUNCTION clinic_migrate.capture(%s%s%s)",
										cols.len ? " OF " : "", cols.data, qrel, changed.data,
										pt->kind == PLAN_CHILD ? "clinic_migrate.capturing_any()" :
										psprintf("(clinic_migrate.capturing(OLD.%s::pg_catalog.text) OR "
												 "clinic_migrate.capturing(NEW.%s::pg_catalog.text))",
												 tcol, tcol),
										quote_literal_cstr(has_map ? logname : psprintf("%u", logrel)),
										pt->kind == PLAN_CHILD ? "" : ", ",
										pt->kind == PLAN_CHILD ? "" : quote_literal_cstr(plan->tenant_column)));
		}
		for (int op = 0; full && op < 3; op++)
		{
			const char *when;
			const char *tcol = quote_identifier(plan->tenant_column);

			if (pt->kind == PLAN_CHILD)
				when = "clinic_migrate.capturing_any()";
			else if (op == 0)
				when = psprintf("clinic_migrate.capturing(NEW.%s::pg_catalog.text)", tcol);
			else if (op == 1)
				when = psprintf("clinic_migrate.capturing(OLD.%s::pg_catalog.text) OR clinic_migrate.capturing(NEW.%s::pg_catalog.text)",
								tcol, tcol);
			else
				when = psprintf("clinic_migrate.capturing(OLD.%s::pg_catalog.text)", tcol);
			create_trigger(pt->relid, names[op],
						   psprintf("AFTER %s ON %s FOR EACH ROW WHEN (%s) "
									"EXECUTE FUNCTION clinic_migrate.capture(%s%s%s)",
									ops[op], qrel, when,
									quote_literal_cstr(has_map ? logname : psprintf("%u", logrel)),
									pt->kind == PLAN_CHILD ? "" : ", ",
									pt->kind == PLAN_CHILD ? "" : quote_literal_cstr(plan->tenant_column)));
		}
		grant_trigger_functions(pt->relid, "clinic_migrate.capture(), clinic_migrate.guard_truncate()");
		create_trigger(pt->relid, "clinic_migrate_guard_truncate",
					   psprintf("BEFORE TRUNCATE ON %s FOR EACH STATEMENT "
								"EXECUTE FUNCTION clinic_migrate.guard_truncate()", qrel));
	}
}

void
capture_install(TenantPlan *plan, bool full)
{
	install_range(plan, 0, plan->ncopied, full);
}

void
capture_install_table(TenantPlan *plan, int i, bool full)
{
	Assert(i >= 0 && i < plan->ncopied);
	install_range(plan, i, i + 1, full);
}

/* (see capture.h) */
void
capture_recheck_tenant_trigger(Oid relid)
{
	Relation	rel;
	Oid			base;
	Oid			trig;
	bool		has_of;

	rel = try_table_open(relid, AccessShareLock);
	if (rel == NULL)
		return;
	base = base_relid(rel);
	table_close(rel, AccessShareLock);
	trig = our_trigger_oid(base, "clinic_migrate_capture_tenant", false);
	if (!OidIsValid(trig))
		return;
	{
		HeapTuple	tup = trigger_row(trig);

		has_of = ((Form_pg_trigger) GETSTRUCT(tup))->tgattr.dim1 > 0;
		heap_freetuple(tup);
	}
	if (!has_of || !app_before_update_triggers(base))
		return;
	/* made again, without UPDATE OF, as install_range makes it now */
	{
		CmRoleSave	save;
		TenantPlan *plan;

		LockRelationOid(base, AccessExclusiveLock);
		drop_our_trigger(base, "clinic_migrate_capture_tenant");
		CommandCounterIncrement();
		SPI_connect();
		cm_owner_begin(&save);
		rel = table_open(base, AccessShareLock);
		plan = plan_of(rel);
		table_close(rel, AccessShareLock);
		cm_role_end(&save);
		for (int i = 0; i < plan->ncopied; i++)
			if (plan->tables[i].relid == base)
				install_range(plan, i, i + 1, false);
		SPI_finish();
	}
}

void
capture_install_reverse(TenantPlan *plan, const char *schema, const char *tenant)
{
	Oid			nsp = get_namespace_oid(CM_SCHEMA, false);
	bool		has_map = OidIsValid(get_relname_relid("capture_logs", nsp));
	List	   *lock = NIL;

	/* all the tenant's tables at once, before the first trigger */
	for (int i = 0; i < plan->ncopied; i++)
	{
		Oid			target = clone_target_relid(schema, plan->tables[i].relname);

		if (OidIsValid(target) &&
			(!OidIsValid(our_trigger_oid(target, "clinic_migrate_capture_reverse", true)) ||
			 !OidIsValid(our_trigger_oid(target, "clinic_migrate_guard_truncate", true))))
		{
			lock = lappend_oid(lock, target);
			lock = list_concat(lock, partitions_of(target));
		}
	}
	cm_lock_relations(lock, ShareRowExclusiveLock, true);

	for (int i = 0; i < plan->ncopied; i++)
	{
		PlanTable  *pt = &plan->tables[i];
		Oid			target = clone_target_relid(schema, pt->relname);
		Oid			logrel = capture_log_relid(pt->relid);
		char	   *qrel;
		const char *tcol = pt->tenant_att != InvalidAttrNumber ? plan->tenant_column : "";

		if (!OidIsValid(target) || !OidIsValid(logrel))
			elog(ERROR, "clinic_migrate: table %s.%s or its log is missing", schema, pt->relname);
		qrel = cm_qualified_relname(target);

		/*
		 * Reverse replay writes the shared table as its owner, reading this
		 * table: when the tenant's table has another owner (a migration role
		 * that could not give it to the shared table's owner), that owner
		 * must be able to read it.
		 */
		{
			Oid			shared_owner = cm_rel_owner(pt->relid);

			if (cm_rel_owner(target) != shared_owner &&
				SPI_execute(psprintf("GRANT SELECT ON %s TO %s", qrel,
									 quote_identifier(GetUserNameFromId(shared_owner, false))),
							false, 0) != SPI_OK_UTILITY)
				elog(ERROR, "clinic_migrate: could not grant SELECT on %s", qrel);
		}
		grant_trigger_functions(target, "clinic_migrate.capture_reverse(), clinic_migrate.guard_truncate()");
		create_trigger(target, "clinic_migrate_capture_reverse",
					   psprintf("AFTER INSERT OR UPDATE OR DELETE ON %s FOR EACH ROW "
								"EXECUTE FUNCTION clinic_migrate.capture_reverse(%s, %s, %s)",
								qrel,
								quote_literal_cstr(has_map ? get_rel_name(logrel) : psprintf("%u", logrel)),
								quote_literal_cstr(tcol), quote_literal_cstr(tenant)));
		create_trigger(target, "clinic_migrate_guard_truncate",
					   psprintf("BEFORE TRUNCATE ON %s FOR EACH STATEMENT "
								"EXECUTE FUNCTION clinic_migrate.guard_truncate(%s)",
								qrel, quote_literal_cstr(tenant)));
	}
}

void
capture_drop_reverse(TenantPlan *plan, const char *schema)
{
	const char *names[2] = {"clinic_migrate_capture_reverse", "clinic_migrate_guard_truncate"};
	List	   *lock = NIL;

	/* DROP TRIGGER locks its table exclusively: all of them at once, first */
	for (int i = 0; i < plan->ncopied; i++)
	{
		Oid			target = clone_target_relid(schema, plan->tables[i].relname);

		if (OidIsValid(target) &&
			(OidIsValid(our_trigger_oid(target, names[0], false)) ||
			 OidIsValid(our_trigger_oid(target, names[1], false))))
			lock = lappend_oid(lock, target);
	}
	{
		ListCell   *lc;

		foreach(lc, list_copy(lock))
			lock = list_concat(lock, partitions_of(lfirst_oid(lc)));
	}
	cm_lock_relations(lock, AccessExclusiveLock, true);

	for (int i = 0; i < plan->ncopied; i++)
	{
		Oid			target = clone_target_relid(schema, plan->tables[i].relname);

		if (!OidIsValid(target))
			continue;
		for (int k = 0; k < 2; k++)
			if (OidIsValid(our_trigger_oid(target, names[k], false)))
				cm_ddl_with_retry(psprintf("DROP TRIGGER %s ON %s", quote_identifier(names[k]),
										   cm_qualified_relname(target)));
		CommandCounterIncrement();
		drop_partition_guards(target);
	}
}

/*
 * The shared tables' capture triggers cost every write of every tenant
 * their WHEN clause, moving or not: when no tenant needs them (none is
 * copying, copied, failed with its capture on, cut over, rolling back or
 * finalizing), they go.  Only while no other session installs them (the
 * installer's lock, taken without waiting: an installer goes first), and
 * with every table locked at once, as the installer does.  They are
 * dropped as the objects clinic_migrate made (performDeletion), whoever
 * the acting role: DROP TRIGGER would want the tables' owner.  A finalized
 * tenant's shared rows are gone; writes that name it in the shared tables
 * are no longer refused once the triggers are.  Returns the number of
 * tables, or -1 when they were busy (try again later).  SPI connected, in
 * a transaction of its own.
 */
int
capture_uninstall_if_unused(void)
{
	const char *names[5] = {"clinic_migrate_capture_insert", "clinic_migrate_capture_update",
	"clinic_migrate_capture_delete", "clinic_migrate_guard_truncate", "clinic_migrate_capture_tenant"};
	LOCKTAG		tag;
	Oid			nsp;
	List	   *tables = NIL;
	ListCell   *lc;

	nsp = get_namespace_oid(CM_SCHEMA, true);
	if (!OidIsValid(nsp) || !OidIsValid(get_relname_relid("capture_logs", nsp)))
		return 0;
	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, 0, 1, CM_LOCK_FIELD4);
	if (LockAcquire(&tag, ExclusiveLock, false, true) == LOCKACQUIRE_NOT_AVAIL)
		return 0;
	AcceptInvalidationMessages();

	/*
	 * Each statement below takes a fresh snapshot (read committed, SPI not
	 * read-only), after the lock: the state an installer committed before
	 * releasing it is seen.
	 */
	Assert(!IsolationUsesXactSnapshot());
	CommandCounterIncrement();
	cm_state_exec("SELECT 1 FROM clinic_migrate.tenants WHERE state IN "
				  "('copying', 'copied', 'failed', 'cut_over', 'rolling_back', 'finalizing') LIMIT 1",
				  0, NULL, NULL, NULL, 0);
	if (SPI_processed > 0)
		return 0;
	cm_state_exec("SELECT l.source_table::pg_catalog.oid FROM clinic_migrate.capture_logs l",
				  0, NULL, NULL, NULL, 0);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		Oid			relid = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[i],
														   SPI_tuptable->tupdesc, 1, &isnull));

		if (!SearchSysCacheExists1(RELOID, ObjectIdGetDatum(relid)))
			continue;
		for (int k = 0; k < 5; k++)
			if (OidIsValid(our_trigger_oid(relid, names[k], false)))
			{
				tables = lappend_oid(tables, relid);
				break;
			}
	}
	if (tables == NIL)
		return 0;

	/*
	 * DROP TRIGGER locks its table exclusively: all of them at once, first,
	 * in a few short attempts only.  This can wait for a quieter moment;
	 * an installer waiting for the lock we hold cannot.
	 */
	{
		List	   *all = list_copy(tables);

		/* a partitioned table's triggers are on its partitions too */
		foreach(lc, tables)
			all = list_concat(all, partitions_of(lfirst_oid(lc)));
		if (!cm_try_lock_relations(all, AccessExclusiveLock, 3))
			return -1;
	}
	foreach(lc, tables)
	{
		Oid			relid = lfirst_oid(lc);

		for (int k = 0; k < 5; k++)
			drop_our_trigger(relid, names[k]);
		CommandCounterIncrement();
		drop_partition_guards(relid);
	}
	CommandCounterIncrement();
	ereport(LOG,
			(errmsg("clinic_migrate: no tenant is moving: capture triggers dropped from %d shared tables",
					list_length(tables))));
	return list_length(tables);
}

/* where a tenant's rows live now, and its source schema (see capture.h) */
const char *
capture_tenant_location(const char *tenant, const char **source_schema)
{
	MovingTenant *m;

	/* a cutover committed a moment ago must be seen now */
	AcceptInvalidationMessages();
	m = moving_find(tenant, strlen(tenant));
	if (source_schema)
		*source_schema = m ? m->source_schema : cm_source_schema;
	if (m == NULL)
		return cm_source_schema;
	if (cm_state_after_cutover_code(m->state))
		return m->schema;
	return m->source_schema;
}

/*
 * capture_wait_for_writers gives up on the transaction v: 55P03, naming its
 * session by pid only (the error is kept in job_queue and runs, which roles
 * that may not see another role's statements can read).
 */
static void
older_writer_error(VirtualTransactionId v)
{
	PGPROC	   *proc = BackendIdGetProc(v.backendId);

	ereport(ERROR,
			(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
			 errmsg("a transaction that began before the capture is still open after clinic_migrate.lock_retry_time (%d s)",
					cm_lock_retry_time),
			 errdetail("The copy must wait for every transaction that may have written the tenant's rows before their capture began: pid %d has been open since before it.",
					   proc ? proc->pid : 0),
			 errhint("End that transaction, or wait for it, then run migrate_tenant again: it resumes.  "
					 "clinic_migrate.lock_retry_time sets how long the copy waits.")));
}

/*
 * relid's partitions at every level, committed or not (SnapshotAny): a
 * transaction that made or attached one and wrote into it before the
 * capture holds ROW EXCLUSIVE on that partition only, which the catalog
 * does not show anyone else yet.  A row of a partition since dropped only
 * names a relation nobody holds a lock on.
 */
static List *
inheritors_any(Oid relid)
{
	List	   *all = list_make1_oid(relid);
	ListCell   *lc;
	Relation	inh = table_open(InheritsRelationId, AccessShareLock);

	foreach(lc, all)
	{
		ScanKeyData key;
		SysScanDesc scan;
		HeapTuple	tup;

		ScanKeyInit(&key, Anum_pg_inherits_inhparent, BTEqualStrategyNumber, F_OIDEQ,
					ObjectIdGetDatum(lfirst_oid(lc)));
		scan = systable_beginscan(inh, InheritsParentIndexId, true, SnapshotAny, 1, &key);
		while (HeapTupleIsValid(tup = systable_getnext(scan)))
			all = list_append_unique_oid(all, ((Form_pg_inherits) GETSTRUCT(tup))->inhrelid);
		systable_endscan(scan);
	}
	table_close(inh, AccessShareLock);
	return all;
}

void
capture_wait_for_writers(TenantPlan *plan)
{
	/*
	 * Every transaction that holds ROW EXCLUSIVE on a planned table (or one
	 * of its partitions) may have written it: that is what INSERT, UPDATE
	 * and DELETE take, and they keep it until they end.  Collect them first,
	 * then wait for each, as CREATE INDEX CONCURRENTLY does.  (A
	 * transaction's xmin says nothing here: an idle READ COMMITTED
	 * transaction that wrote a row has none.)  Our own transaction is never
	 * among them.
	 */
	List	   *wait = NIL;
	ListCell   *lc;
	TimestampTz give_up = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													   (int64) cm_lock_retry_time * 1000);
	List	   *rels = NIL;
	LockData   *locks;

	/* a partitioned table's writers may lock only the partition they write */
	for (int i = 0; i < plan->ncopied; i++)
		rels = list_concat_unique_oid(rels, inheritors_any(plan->tables[i].relid));

	/*
	 * Only the holders of ROW EXCLUSIVE: SHARE UPDATE EXCLUSIVE (CREATE
	 * INDEX CONCURRENTLY, VACUUM, ANALYZE) and SHARE ROW EXCLUSIVE (CREATE
	 * TRIGGER) write no rows, and a CREATE INDEX CONCURRENTLY waits for
	 * this very migration's transaction: waiting for it back, each would
	 * wait for the other until one gave up.  Fast-path locks included.
	 */
	locks = GetLockStatusData();
	for (int i = 0; i < locks->nelements; i++)
	{
		LockInstanceData *inst = &locks->locks[i];
		VirtualTransactionId *v;

		if (inst->locktag.locktag_type != LOCKTAG_RELATION ||
			inst->locktag.locktag_field1 != MyDatabaseId ||
			!(inst->holdMask & LOCKBIT_ON(RowExclusiveLock)) ||
			!list_member_oid(rels, (Oid) inst->locktag.locktag_field2) ||
			(inst->backend == MyBackendId && inst->lxid == MyProc->lxid))
			continue;
		/* autovacuum never holds ROW EXCLUSIVE; a prepared transaction does */
		if (!LocalTransactionIdIsValid(inst->lxid))
			continue;
		v = palloc(sizeof(VirtualTransactionId));
		v->backendId = inst->backend;
		v->localTransactionId = inst->lxid;
		wait = lappend(wait, v);
	}
	foreach(lc, wait)
	{
		VirtualTransactionId *v = lfirst(lc);
		CmWorkerShared *sh = cm_worker_shared;

		pgstat_report_activity(STATE_RUNNING,
							   "clinic_migrate: waiting for transactions older than the capture");
		/* the session waiting for us waits for it too: pg_blocking_pids names it */
		if (sh)
		{
			PGPROC	   *caller;

			SpinLockAcquire(&sh->mutex);
			sh->wait_backend = v->backendId;
			sh->wait_lxid = v->localTransactionId;
			SpinLockRelease(&sh->mutex);
			caller = BackendPidGetProc(sh->caller_pid);
			if (caller)
				SetLatch(&caller->procLatch);
		}
		/*
		 * Not for ever: an idle transaction would hold us as long as it
		 * lives.  Past lock_retry_time the step fails with 55P03 naming the
		 * session; nothing is lost (the capture stays, the next run waits
		 * again for whatever is still open, and resumes).
		 */
		for (;;)
		{
			long		left = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), give_up);

			/* a second at a time: a stop request (cm_got_sigterm) is seen */
			if (cm_wait_for_vxact(*v, (int) Min(left, 1000)))
				break;
			if (cm_got_sigterm)
				ereport(ERROR,
						(errcode(ERRCODE_ADMIN_SHUTDOWN),
						 errmsg("migration stopped by request while it waited for transactions older than its capture"),
						 errhint("Run clinic_migrate.migrate_tenant() again to resume.")));
			if (left <= 0)
				older_writer_error(*v);
		}
		if (sh)
		{
			SpinLockAcquire(&sh->mutex);
			sh->wait_backend = InvalidBackendId;
			sh->wait_lxid = InvalidLocalTransactionId;
			SpinLockRelease(&sh->mutex);
		}
		CHECK_FOR_INTERRUPTS();
	}
}
