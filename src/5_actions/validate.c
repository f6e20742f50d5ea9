/*-------------------------------------------------------------------------
 * validate.c
 *	  Proof that a tenant's schema holds exactly its rows: what
 *	  validate_migration and validate_differences return, the validate
 *	  action of the queue, and the checks of cutover's pause.
 *	  Floor 5 (the actions).  May call: floors 1 to 4.
 *
 * For each table, both sides are read in one snapshot (read-only SPI uses
 * the statement's snapshot) and streamed through a DestReceiver that
 * hashes each row from the binary form of its columns (detoasted), so the
 * checksum depends on no session setting (DateStyle, TimeZone,
 * extra_float_digits, bytea_output), tells numeric 1.0 from 1.00, and needs
 * no hash function of the column types.  Row hashes are added modulo 2^64:
 * the sum does not depend on row order, and unlike XOR a duplicated row
 * does not cancel out.  Only when the sums or counts differ is a second,
 * key-ordered pass made that names the missing, extra and different keys.
 *
 * The target is also checked for foreign-key orphans (using the shared
 * table's foreign keys, re-pointed as the clone does) and for sequences
 * that would hand out keys already used.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/detoast.h"
#include "access/htup_details.h"
#include "access/tupmacs.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "nodes/params.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

#include "settings.h"
#include "util.h"
#include "locks.h"
#include "runstate.h"
#include "apply.h"
#include "capture.h"
#include "clone.h"
#include "catalog/namespace.h"
#include "plan.h"
#include "state.h"
#include "validate.h"
#include "ddl.h"
#include "pgstat.h"

typedef struct KeyEntry
{
	uint64		keyhash;		/* hash key */
	int64		count[2];		/* rows with this key: source, target */
	uint64		sum[2];			/* their row hashes, summed */
	int64		ordinal[2];		/* first position in each key-ordered scan */
	char	   *keytext;
} KeyEntry;

typedef struct RowHasher
{
	DestReceiver pub;
	int			nkey;			/* the first nkey columns are the key */
	uint64		count;
	uint64		sum;
	/* diff pass */
	HTAB	   *map;
	int			side;			/* 0 source, 1 target */
	int64		ordinal;
	MemoryContext rowcxt;
	MemoryContext keepcxt;
} RowHasher;

typedef struct TableCheck
{
	char	   *table;
	int64		src_rows;
	int64		tgt_rows;
	uint64		src_sum;
	uint64		tgt_sum;
	List	   *missing;		/* char * key texts, key order */
	List	   *extra;
	List	   *different;
	int64		ndiff;			/* keys that differ, all of them */
	int64		orphans;
	bool		seq_ok;
	List	   *keyhashes;		/* check_table_keys: KeyEntry of every differing key */
} TableCheck;

/* hash of columns [from, to) of a slot, position-sensitive */
static uint64
hash_columns(TupleTableSlot *slot, int from, int to)
{
	TupleDesc	td = slot->tts_tupleDescriptor;
	uint64		h = UINT64CONST(0x9e3779b97f4a7c15) ^ (uint64) (to - from);

	for (int i = from; i < to; i++)
	{
		Form_pg_attribute att = TupleDescAttr(td, i);
		Datum		v = slot->tts_values[i];
		uint64		ch;

		if (slot->tts_isnull[i])
			ch = UINT64CONST(0x5bd1e9955bd1e995) + i;
		else if (att->attlen == -1)
		{
			struct varlena *vl = PG_DETOAST_DATUM_PACKED(v);

			ch = hash_bytes_extended((unsigned char *) VARDATA_ANY(vl),
									 VARSIZE_ANY_EXHDR(vl), i + 1);
		}
		else if (att->attlen == -2)
		{
			char	   *s = DatumGetCString(v);

			ch = hash_bytes_extended((unsigned char *) s, strlen(s), i + 1);
		}
		else if (att->attbyval)
		{
			int64		tmp = 0;

			store_att_byval(&tmp, v, att->attlen);
			ch = hash_bytes_extended((unsigned char *) &tmp, att->attlen, i + 1);
		}
		else
			ch = hash_bytes_extended((unsigned char *) DatumGetPointer(v), att->attlen, i + 1);
		h = hash_combine64(h, ch);
	}
	return h;
}

/* the key columns as text, with the pinned output settings */
static char *
key_text(TupleTableSlot *slot, int nkey)
{
	TupleDesc	td = slot->tts_tupleDescriptor;
	StringInfoData buf;

	initStringInfo(&buf);
	if (nkey > 1)
		appendStringInfoChar(&buf, '(');
	for (int i = 0; i < nkey; i++)
	{
		if (i > 0)
			appendStringInfoChar(&buf, ',');
		if (slot->tts_isnull[i])
			appendStringInfoString(&buf, "NULL");
		else
		{
			Oid			typout;
			bool		varlena;

			char	   *v;
			bool		quote;

			getTypeOutputInfo(TupleDescAttr(td, i)->atttypid, &typout, &varlena);
			v = OidOutputFunctionCall(typout, slot->tts_values[i]);
			/* as record_out quotes: a composite key must read back unambiguously */
			quote = nkey > 1 && (v[0] == '\0' || strpbrk(v, "\"\\(),\t\n\r ") != NULL);
			if (!quote)
				appendStringInfoString(&buf, v);
			else
			{
				appendStringInfoChar(&buf, '"');
				for (char *c = v; *c; c++)
				{
					if (*c == '"' || *c == '\\')
						appendStringInfoChar(&buf, *c);
					appendStringInfoChar(&buf, *c);
				}
				appendStringInfoChar(&buf, '"');
			}
		}
	}
	if (nkey > 1)
		appendStringInfoChar(&buf, ')');
	return buf.data;
}

static bool
hasher_receive(TupleTableSlot *slot, DestReceiver *self)
{
	RowHasher  *r = (RowHasher *) self;
	MemoryContext old = MemoryContextSwitchTo(r->rowcxt);
	uint64		rowhash;

	slot_getallattrs(slot);
	rowhash = hash_columns(slot, r->nkey, slot->tts_tupleDescriptor->natts);
	r->count++;
	r->sum += rowhash;
	if (r->map)
	{
		uint64		keyhash = hash_columns(slot, 0, r->nkey);
		bool		found;
		KeyEntry   *e = hash_search(r->map, &keyhash, HASH_ENTER, &found);

		if (!found)
		{
			memset(e->count, 0, sizeof(e->count));
			memset(e->sum, 0, sizeof(e->sum));
			e->ordinal[0] = e->ordinal[1] = -1;
			e->keytext = MemoryContextStrdup(r->keepcxt, key_text(slot, r->nkey));
		}
		if (e->count[r->side] == 0)
			e->ordinal[r->side] = r->ordinal;
		e->count[r->side]++;
		e->sum[r->side] += rowhash;
		r->ordinal++;
	}
	MemoryContextSwitchTo(old);
	MemoryContextReset(r->rowcxt);
	return true;
}

static void
hasher_startup(DestReceiver *self, int operation, TupleDesc typeinfo)
{
}

static void
hasher_shutdown(DestReceiver *self)
{
}

static void
hasher_destroy(DestReceiver *self)
{
}

static void
hasher_init(RowHasher *r, int nkey)
{
	memset(r, 0, sizeof(*r));
	r->pub.receiveSlot = hasher_receive;
	r->pub.rStartup = hasher_startup;
	r->pub.rShutdown = hasher_shutdown;
	r->pub.rDestroy = hasher_destroy;
	r->pub.mydest = DestNone;
	r->nkey = nkey;
	r->rowcxt = AllocSetContextCreate(CurrentMemoryContext, "clinic_migrate row hash",
									  ALLOCSET_DEFAULT_SIZES);
	r->keepcxt = CurrentMemoryContext;
}

/* run a query (one optional parameter) into the hasher, in the current snapshot */
static void
run_hashed(const char *sql, Oid ptype, Datum pvalue, bool has_param, RowHasher *r)
{
	SPIExecuteOptions opts;
	ParamListInfo params = NULL;

	if (has_param)
		params = cm_param_list(1, &ptype, &pvalue);
	memset(&opts, 0, sizeof(opts));
	opts.params = params;
	opts.read_only = true;		/* no new snapshot: both sides see the same data */
	opts.dest = (DestReceiver *) r;
	/* rows go to our receiver, so SPI does not report SPI_OK_SELECT */
	if (SPI_execute_extended(sql, &opts) < 0)
		elog(ERROR, "clinic_migrate: validation query failed: %s", sql);
}

/* all columns of the shared table (generated ones too), key columns first */
static void
append_select_list(StringInfo buf, PlanTable *pt)
{
	List	   *keys = plan_key_columns(pt);
	Relation	rel;
	TupleDesc	td;

	appendStringInfoString(buf, "SELECT ");
	cm_append_quoted_list(buf, keys, "s");
	rel = RelationIdGetRelation(pt->relid);
	td = RelationGetDescr(rel);
	for (int i = 0; i < td->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(td, i);

		if (!att->attisdropped)
			appendStringInfo(buf, ", s.%s", quote_identifier(NameStr(att->attname)));
	}
	RelationClose(rel);
}

static void
append_order_by_key(StringInfo buf, PlanTable *pt)
{
	appendStringInfoString(buf, " ORDER BY ");
	cm_append_quoted_list(buf, plan_key_columns(pt), "s");
}

static int
cmp_source_ordinal(const ListCell *a, const ListCell *b)
{
	KeyEntry   *x = lfirst(a);
	KeyEntry   *y = lfirst(b);

	return (x->ordinal[0] > y->ordinal[0]) - (x->ordinal[0] < y->ordinal[0]);
}

static int
cmp_target_ordinal(const ListCell *a, const ListCell *b)
{
	KeyEntry   *x = lfirst(a);
	KeyEntry   *y = lfirst(b);

	return (x->ordinal[1] > y->ordinal[1]) - (x->ordinal[1] < y->ordinal[1]);
}

/* key texts of the first max_keys entries (all if max_keys < 0) */
static List *
key_texts(List *entries, int max_keys)
{
	List	   *result = NIL;
	ListCell   *lc;

	foreach(lc, entries)
	{
		if (max_keys >= 0 && list_length(result) >= max_keys)
			break;
		result = lappend(result, ((KeyEntry *) lfirst(lc))->keytext);
	}
	return result;
}

/* foreign-key orphans in the target, using the shared table's foreign keys */
static int64
count_orphans(TenantPlan *plan, PlanTable *pt, const char *schema, Oid target)
{
	Oid			types[1] = {OIDOID};
	Datum		values[1] = {ObjectIdGetDatum(pt->relid)};
	SPITupleTable *tt;
	int			n;
	int64		orphans = 0;

	if (SPI_execute_with_args("SELECT c.confrelid, c.conkey, c.confkey FROM pg_constraint c "
							  "WHERE c.conrelid = $1 AND c.contype = 'f' AND c.conparentid = 0 ORDER BY c.conname",
							  1, types, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "clinic_migrate: foreign key lookup failed");
	tt = SPI_tuptable;
	n = SPI_processed;
	for (int f = 0; f < n; f++)
	{
		bool		isnull;
		Oid			ref = DatumGetObjectId(SPI_getbinval(tt->vals[f], tt->tupdesc, 1, &isnull));
		Oid			newref = clone_fk_target(plan, schema, ref);
		Datum	   *ck,
				   *rk;
		int			nk;
		StringInfoData sql;

		deconstruct_array(DatumGetArrayTypeP(SPI_getbinval(tt->vals[f], tt->tupdesc, 2, &isnull)),
						  INT2OID, 2, true, TYPALIGN_SHORT, &ck, NULL, &nk);
		deconstruct_array(DatumGetArrayTypeP(SPI_getbinval(tt->vals[f], tt->tupdesc, 3, &isnull)),
						  INT2OID, 2, true, TYPALIGN_SHORT, &rk, NULL, &nk);
		if (!OidIsValid(newref))
			continue;
		initStringInfo(&sql);
		appendStringInfo(&sql, "SELECT count(*) FROM %s c WHERE ", cm_qualified_relname(target));
		for (int k = 0; k < nk; k++)
			appendStringInfo(&sql, "c.%s IS NOT NULL AND ",
							 quote_identifier(get_attname(pt->relid, DatumGetInt16(ck[k]), false)));
		appendStringInfo(&sql, "NOT EXISTS (SELECT 1 FROM %s r WHERE ", cm_qualified_relname(newref));
		for (int k = 0; k < nk; k++)
			appendStringInfo(&sql, "%sr.%s = c.%s", k ? " AND " : "",
							 quote_identifier(get_attname(ref, DatumGetInt16(rk[k]), false)),
							 quote_identifier(get_attname(pt->relid, DatumGetInt16(ck[k]), false)));
		appendStringInfoChar(&sql, ')');
		if (SPI_execute(sql.data, true, 0) != SPI_OK_SELECT)
			elog(ERROR, "clinic_migrate: orphan count failed");
		orphans += DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	}
	return orphans;
}

/* would any serial or identity sequence of the target hand out a used key? */
static bool
sequences_ok(Oid target)
{
	ListCell   *lc;

	foreach(lc, clone_column_sequences(target))
	{
		OwnedSequence *os = lfirst(lc);
		char	   *inc = psprintf(INT64_FORMAT, os->increment);
		StringInfoData sql;
		bool		isnull;
		Datum		d;

		/* the next value nextval() would return must be past every key */
		initStringInfo(&sql);
		appendStringInfo(&sql,
						 "SELECT x.m IS NULL OR (CASE WHEN q.is_called THEN q.last_value::numeric + %s "
						 "ELSE q.last_value END) %s x.m "
						 "FROM (SELECT %s(%s)::numeric AS m FROM %s) x, %s q",
						 inc, os->increment > 0 ? ">" : "<",
						 os->increment > 0 ? "max" : "min", os->column,
						 cm_qualified_relname(target), cm_qualified_relname(os->seq));
		if (SPI_execute(sql.data, true, 0) != SPI_OK_SELECT)
			elog(ERROR, "clinic_migrate: sequence check failed");
		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		if (isnull || !DatumGetBool(d))
			return false;
	}
	return true;
}

/*
 * Both sides of a table, hashed: counts and checksums into out.  Where they
 * differ, a second pass maps every key to its count and hash sum per side;
 * the map is returned (NULL when the sides agree).  ordered: the second
 * pass reads in key order, so that the entries carry their ordinals.
 */
static HTAB *
hash_both_sides(TenantPlan *plan, PlanTable *pt, Oid target, const char *tenant, bool ordered,
				TableCheck *out)
{
	PlanTable  *root = plan_root(plan, pt);
	Datum		tenantv = plan_tenant_datum(root, tenant);
	StringInfoData src,
				tgt;
	RowHasher	rs,
				rt;
	HASHCTL		ctl;

	memset(out, 0, sizeof(*out));
	out->table = pt->relname;
	initStringInfo(&src);
	append_select_list(&src, pt);
	plan_append_tenant_rows(&src, plan, pt, 0, 0);
	initStringInfo(&tgt);
	append_select_list(&tgt, pt);
	appendStringInfo(&tgt, " FROM %s s", cm_qualified_relname(target));

	hasher_init(&rs, pt->nkey);
	hasher_init(&rt, pt->nkey);
	run_hashed(src.data, root->tenant_type, tenantv, true, &rs);
	run_hashed(tgt.data, InvalidOid, (Datum) 0, false, &rt);
	out->src_rows = rs.count;
	out->tgt_rows = rt.count;
	out->src_sum = rs.sum;
	out->tgt_sum = rt.sum;
	if (rs.count == rt.count && rs.sum == rt.sum)
		return NULL;

	/*
	 * Second pass: per key, how many rows each side has and the sum of their
	 * hashes.  A duplicated row shows as a different key, a key on one side
	 * only as missing or extra.
	 */
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(uint64);
	ctl.entrysize = sizeof(KeyEntry);
	ctl.hcxt = CurrentMemoryContext;
	hasher_init(&rs, pt->nkey);
	hasher_init(&rt, pt->nkey);
	rs.map = rt.map = hash_create("clinic_migrate keys", 1024, &ctl,
								  HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	rt.side = 1;
	if (ordered)
	{
		append_order_by_key(&src, pt);
		append_order_by_key(&tgt, pt);
	}
	run_hashed(src.data, root->tenant_type, tenantv, true, &rs);
	run_hashed(tgt.data, InvalidOid, (Datum) 0, false, &rt);
	return rs.map;
}

/* compare one table; max_keys < 0 keeps every differing key */
static void
check_table(TenantPlan *plan, PlanTable *pt, Oid target, const char *schema,
			const char *tenant, int max_keys, TableCheck *out)
{
	HTAB	   *map = hash_both_sides(plan, pt, target, tenant, true, out);

	if (map != NULL)
	{
		HASH_SEQ_STATUS seq;
		KeyEntry   *e;
		List	   *missing = NIL,
				   *extra = NIL,
				   *different = NIL;

		hash_seq_init(&seq, map);
		while ((e = hash_seq_search(&seq)) != NULL)
		{
			if (e->count[1] == 0)
				missing = lappend(missing, e);
			else if (e->count[0] == 0)
				extra = lappend(extra, e);
			else if (e->count[0] != e->count[1] || e->sum[0] != e->sum[1])
				different = lappend(different, e);
		}
		list_sort(missing, cmp_source_ordinal);
		list_sort(different, cmp_source_ordinal);
		list_sort(extra, cmp_target_ordinal);
		out->missing = key_texts(missing, max_keys);
		out->extra = key_texts(extra, max_keys);
		out->different = key_texts(different, max_keys);
		out->ndiff = list_length(missing) + list_length(extra) + list_length(different);
	}
	out->orphans = count_orphans(plan, pt, schema, target);
	out->seq_ok = sequences_ok(target);
}

/*
 * Counts and checksums of both sides; where they differ, every differing
 * key (KeyEntry, with its hash) in tc->keyhashes.  No orphan or sequence
 * check: this is the proof cutover needs, nothing else.
 */
static void
check_table_keys(TenantPlan *plan, PlanTable *pt, Oid target, const char *tenant, TableCheck *out)
{
	HTAB	   *map = hash_both_sides(plan, pt, target, tenant, false, out);

	if (map != NULL)
	{
		HASH_SEQ_STATUS seq;
		KeyEntry   *e;

		hash_seq_init(&seq, map);
		while ((e = hash_seq_search(&seq)) != NULL)
			if (e->count[0] != e->count[1] || e->sum[0] != e->sum[1])
				out->keyhashes = lappend(out->keyhashes, e);
	}
}

/* the keys of a tenant pending in a table's log, as key hashes */
static HTAB *
logged_key_hashes(PlanTable *pt, const char *tenant)
{
	RowHasher	r;
	HASHCTL		ctl;
	StringInfoData sql;
	Oid			log = capture_log_relid(pt->relid);

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(uint64);
	ctl.entrysize = sizeof(KeyEntry);
	ctl.hcxt = CurrentMemoryContext;
	hasher_init(&r, pt->nkey);
	r.map = hash_create("clinic_migrate logged keys", 256, &ctl,
						HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	if (!OidIsValid(log))
		return r.map;
	initStringInfo(&sql);
	appendStringInfoString(&sql, "SELECT ");
	cm_append_quoted_list(&sql, plan_key_columns(pt), "l");
	appendStringInfo(&sql, " FROM %s l WHERE l._cm_tenant = $1",
					 cm_qualified_relname(log));
	{
		CmRoleSave	save;

		/* the logs are clinic_migrate's own */
		cm_owner_begin(&save);
		run_hashed(sql.data, TEXTOID, CStringGetTextDatum(tenant), true, &r);
		cm_role_end(&save);
	}
	return r.map;
}

void
validate_before_pause(TenantPlan *plan, const char *schema, const char *tenant,
					  int64 *rows, int64 *in_flight)
{
	int			nest = cm_stable_output_settings();
	StringInfoData unexplained;
	int			nunexplained = 0;

	*rows = 0;
	*in_flight = 0;
	initStringInfo(&unexplained);
	for (int i = 0; i < plan->ncopied; i++)
	{
		PlanTable  *pt = &plan->tables[i];
		Oid			target = clone_target_relid(schema, pt->relname);
		TableCheck	tc;

		if (!OidIsValid(target))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("table %s.%s of tenant \"%s\" is missing", quote_identifier(schema),
							quote_identifier(pt->relname), tenant),
					 errhint("Roll the tenant back with clinic_migrate.rollback_tenant('%s') and migrate again.",
							 tenant)));
		check_table_keys(plan, pt, target, tenant, &tc);
		*rows += tc.src_rows + tc.tgt_rows;
		if (tc.keyhashes != NIL)
		{
			HTAB	   *logged = logged_key_hashes(pt, tenant);
			ListCell   *lc;

			foreach(lc, tc.keyhashes)
			{
				KeyEntry   *e = lfirst(lc);
				bool		found;

				(void) hash_search(logged, &e->keyhash, HASH_FIND, &found);
				if (found)
					(*in_flight)++;
				else if (nunexplained++ < 10)
					appendStringInfo(&unexplained, "%s%s %s", unexplained.len ? ", " : "",
									 pt->relname, e->keytext);
			}
		}
	}
	cm_restore_output_settings(nest);
	if (nunexplained > 0)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("the schema of tenant \"%s\" differs from its source in %d keys that no captured change explains",
						tenant, nunexplained),
				 errdetail("First keys: %s.", unexplained.data),
				 errhint("Nothing was switched. See SELECT * FROM clinic_migrate.validate_differences('%s'); "
						 "a change made outside the capture (a write with the capture triggers disabled, "
						 "or by hand in the copy) explains it; roll the tenant back and migrate it again.",
						 tenant)));
}

int64
validate_applied_keys(TenantPlan *plan, const char *schema, const char *tenant)
{
	int64		rows = 0;
	int			nest = cm_replay_plan_settings();

	for (int i = 0; i < plan->ncopied; i++)
	{
		PlanTable  *pt = &plan->tables[i];
		PlanTable  *root = plan_root(plan, pt);
		char	   *keys = apply_keys_table(pt);
		Oid			target = clone_target_relid(schema, pt->relname);
		StringInfoData src,
					tgt,
					in;
		RowHasher	rs,
					rt;

		if (keys == NULL || pt->applied == 0)
			continue;
		initStringInfo(&in);
		appendStringInfoString(&in, " AND (");
		cm_append_quoted_list(&in, plan_key_columns(pt), "s");
		appendStringInfo(&in, ") IN (SELECT * FROM %s)", keys);
		initStringInfo(&src);
		append_select_list(&src, pt);
		plan_append_tenant_rows(&src, plan, pt, 0, 0);
		appendStringInfoString(&src, in.data);
		initStringInfo(&tgt);
		append_select_list(&tgt, pt);
		appendStringInfo(&tgt, " FROM %s s WHERE true%s", cm_qualified_relname(target), in.data);
		hasher_init(&rs, pt->nkey);
		hasher_init(&rt, pt->nkey);
		run_hashed(src.data, root->tenant_type, plan_tenant_datum(root, tenant), true, &rs);
		run_hashed(tgt.data, InvalidOid, (Datum) 0, false, &rt);
		rows += rs.count + rt.count;
		if (rs.count != rt.count || rs.sum != rt.sum)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("table %s.%s of tenant \"%s\" differs from its source after the final replay",
							quote_identifier(schema), quote_identifier(pt->relname), tenant),
					 errdetail("The replayed keys have " UINT64_FORMAT " rows with checksum %016" INT64_MODIFIER "x in the source, "
							   UINT64_FORMAT " rows with checksum %016" INT64_MODIFIER "x in the copy.",
							   rs.count, rs.sum, rt.count, rt.sum),
					 errhint("Nothing was switched. See SELECT * FROM clinic_migrate.validate_differences('%s').",
							 tenant)));
	}
	AtEOXact_GUC(true, nest);
	return rows;
}

static Datum
text_list_array(List *l)
{
	Datum	   *elems = palloc(sizeof(Datum) * Max(list_length(l), 1));
	int			i = 0;
	ListCell   *lc;

	foreach(lc, l)
		elems[i++] = CStringGetTextDatum((char *) lfirst(lc));
	return PointerGetDatum(construct_array(elems, i, TEXTOID, -1, false, TYPALIGN_INT));
}

/*
 * Checks every table of a migrated tenant; calls emit for each.  Runs in
 * the caller's snapshot, with stable output settings for key texts.
 */
typedef void (*check_emit) (TableCheck *tc, void *arg);

static void
validate_tenant(const char *tenant, int max_keys, check_emit emit, void *arg)
{
	CmSettings	s;
	TenantInfo	info;
	TenantPlan *plan;
	int			nest;
	SPITupleTable *tt;
	int			n;

	cm_current_settings(&s);
	SPI_connect();
	plan = clone_plan_for_tenant((char **) &tenant, &s, CurrentMemoryContext);
	clone_tenant_info(tenant, &info);
	if (!info.exists)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("tenant \"%s\" has not been migrated", tenant),
				 errhint("Run SELECT clinic_migrate.migrate_tenant('%s') first.", tenant)));
	if (strcmp(info.state, "finalizing") == 0 || strcmp(info.state, "finalized") == 0 ||
		strcmp(info.state, "rolling_back") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("tenant \"%s\" is %s: there is no second copy to compare", tenant, info.state),
				 errdetail("Validation compares the shared rows with the tenant's schema; %s",
						   strcmp(info.state, "rolling_back") == 0 ? "the schema is being dropped."
						   : "finalize moves the shared rows out.")));
	nest = cm_stable_output_settings();
	cm_state_exec_tenant("SELECT source_table, target_table FROM clinic_migrate.tenant_tables "
						 "WHERE tenant_id = $1 ORDER BY position", tenant);
	tt = SPI_tuptable;
	n = SPI_processed;
	for (int i = 0; i < n; i++)
	{
		bool		isnull;
		Oid			src = DatumGetObjectId(SPI_getbinval(tt->vals[i], tt->tupdesc, 1, &isnull));
		Oid			tgt = DatumGetObjectId(SPI_getbinval(tt->vals[i], tt->tupdesc, 2, &isnull));
		PlanTable  *pt = plan_find(plan, src);
		TableCheck	tc;

		if (pt == NULL || pt->nkey == 0 || get_rel_name(tgt) == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("table with OID %u of tenant \"%s\" can no longer be compared", src, tenant),
					 errdetail("The shared table or its copy was dropped, or lost its key."),
					 errhint("Roll the tenant back with clinic_migrate.rollback_tenant('%s') and migrate again.",
							 tenant)));
		check_table(plan, pt, tgt, info.schema_name, tenant, max_keys, &tc);
		emit(&tc, arg);
	}
	cm_restore_output_settings(nest);
	SPI_finish();
}

typedef struct EmitState
{
	ReturnSetInfo *rsinfo;
} EmitState;

static void
emit_summary(TableCheck *tc, void *arg)
{
	ReturnSetInfo *rsinfo = ((EmitState *) arg)->rsinfo;
	Datum		values[11];
	bool		nulls[11] = {0};
	bool		match;

	match = tc->src_rows == tc->tgt_rows && tc->src_sum == tc->tgt_sum &&
		tc->ndiff == 0 && tc->orphans == 0 && tc->seq_ok;
	values[0] = DirectFunctionCall1(namein, CStringGetDatum(tc->table));
	values[1] = Int64GetDatum(tc->src_rows);
	values[2] = Int64GetDatum(tc->tgt_rows);
	values[3] = CStringGetTextDatum(psprintf("%016" INT64_MODIFIER "x", tc->src_sum));
	values[4] = CStringGetTextDatum(psprintf("%016" INT64_MODIFIER "x", tc->tgt_sum));
	values[5] = text_list_array(tc->missing);
	values[6] = text_list_array(tc->extra);
	values[7] = text_list_array(tc->different);
	values[8] = Int64GetDatum(tc->orphans);
	values[9] = BoolGetDatum(tc->seq_ok);
	values[10] = BoolGetDatum(match);
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
}

static void
emit_keys(TableCheck *tc, void *arg)
{
	ReturnSetInfo *rsinfo = ((EmitState *) arg)->rsinfo;
	List	   *lists[3] = {tc->missing, tc->extra, tc->different};
	const char *kinds[3] = {"missing", "extra", "different"};

	for (int k = 0; k < 3; k++)
	{
		ListCell   *lc;

		foreach(lc, lists[k])
		{
			Datum		values[3];
			bool		nulls[3] = {0};

			values[0] = DirectFunctionCall1(namein, CStringGetDatum(tc->table));
			values[1] = CStringGetTextDatum((char *) lfirst(lc));
			values[2] = CStringGetTextDatum(kinds[k]);
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		}
	}
}

/* validate_migration's rows: one per table (see validate.h) */
void
cm_validate_summary(const char *tenant, int max_keys, ReturnSetInfo *rsinfo)
{
	EmitState	st;
	char	   *pending;

	SPI_connect();
	pending = ddl_pending_indexes(tenant);
	if (pending)
		ereport(WARNING,
				(errmsg("tenant \"%s\" has indexes still to build on its copies: %s", tenant, pending),
				 errdetail("They were made CONCURRENTLY on the shared tables; the copies' rows are validated without them."),
				 errhint("Its index job builds them, and it cannot cut over before; clinic_migrate.pending_indexes lists them.")));
	SPI_finish();
	st.rsinfo = rsinfo;
	validate_tenant(tenant, max_keys, emit_summary, &st);
}

/* validate_differences' rows: one per differing key (see validate.h) */
void
cm_validate_keys(const char *tenant, ReturnSetInfo *rsinfo)
{
	EmitState	st;

	st.rsinfo = rsinfo;
	validate_tenant(tenant, -1, emit_keys, &st);
}

void
cm_validate_tenant(CmWorkerShared *sh, int64 *run_id)
{
	Oid			t = TEXTOID;
	Datum		v = CStringGetTextDatum(sh->tenant);
	StringInfoData bad;
	uint64		n;

	cm_begin_txn();
	*run_id = cm_run_start(sh->tenant, NULL, "validate", sh->started_by, MyProcPid);
	cm_end_txn();
	pgstat_report_activity(STATE_RUNNING, "clinic_migrate: validating");
	cm_begin_txn();				/* one snapshot for every table */
	if (SPI_execute_with_args("SELECT table_name::text, match FROM clinic_migrate.validate_migration($1) "
							  "ORDER BY 1", 1, &t, &v, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "clinic_migrate: validation failed");
	n = SPI_processed;
	initStringInfo(&bad);
	for (uint64 i = 0; i < n; i++)
	{
		bool		isnull;

		if (!DatumGetBool(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull)))
			appendStringInfo(&bad, "%s%s", bad.len ? ", " : "",
							 SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1));
	}
	sh->tables_total = (int) n;
	if (bad.len > 0)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("tenant \"%s\" does not validate: %s", sh->tenant, bad.data),
				 errhint("SELECT * FROM clinic_migrate.validate_migration('%s') tells what differs.",
						 sh->tenant)));
	cm_run_finish(*run_id, "completed", 0, NULL, NULL);
	cm_end_txn();
}
