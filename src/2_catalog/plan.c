/*-------------------------------------------------------------------------
 * plan.c
 *	  Works out from the catalogs which tables hold tenant rows.
 *	  Floor 2 (the catalog).  May call: floor 1.
 *
 * A table with the tenant column is a tenant table.  A table without it is
 * a child table when a chain of foreign keys leads from it to a table that
 * has the column (a note on an appointment); the shortest chain is used,
 * ties broken by constraint name.  Every other table is shared reference
 * data and stays where it is.  The registry and the tables the user
 * excluded are never copied, but chains may pass through them.
 *
 * Rows are copied in keyset batches of the root table's key, so each table
 * also gets its row identity (primary key or unique not-null key) and the
 * index that keeps the batches linear: (tenant column, key columns...).
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/indexing.h"
#include "catalog/pg_am.h"
#include "catalog/pg_class.h"
#include "catalog/pg_index.h"
#include "utils/fmgroids.h"
#include "utils/rel.h"
#include "catalog/namespace.h"
#include "catalog/pg_attribute.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"

#include "settings.h"
#include "util.h"
#include "locks.h"
#include "runstate.h"
#include "plan.h"
#include "state.h"

typedef struct FkInfo
{
	Oid			conoid;
	Oid			child;
	Oid			parent;
	int			nkeys;
	AttrNumber	child_att[INDEX_MAX_KEYS];
	AttrNumber	parent_att[INDEX_MAX_KEYS];
} FkInfo;

const char *
plan_kind_name(PlanKind kind)
{
	switch (kind)
	{
		case PLAN_TENANT:
			return "tenant";
		case PLAN_CHILD:
			return "child";
		case PLAN_REFERENCE:
			return "reference";
		case PLAN_EXCLUDED:
			return "excluded";
		case PLAN_REGISTRY:
			return "registry";
		case PLAN_UNSUPPORTED:
			return "unsupported";
	}
	return "?";
}

static void
add_note(PlanTable *pt, const char *fmt,...) pg_attribute_printf(2, 3);

static void
add_note(PlanTable *pt, const char *fmt,...)
{
	StringInfoData buf;
	va_list		args;

	initStringInfo(&buf);
	if (pt->note)
		appendStringInfo(&buf, "%s; ", pt->note);
	for (;;)
	{
		int			needed;

		va_start(args, fmt);
		needed = appendStringInfoVA(&buf, fmt, args);
		va_end(args);
		if (needed == 0)
			break;
		enlargeStringInfo(&buf, needed);
	}
	pt->note = buf.data;
}

/* int2vector / int2[] datum to attnums */
static int
int2array_to_atts(Datum d, AttrNumber *out)
{
	ArrayType  *arr = DatumGetArrayTypeP(d);
	Datum	   *elems;
	int			n;

	deconstruct_array(arr, INT2OID, 2, true, TYPALIGN_SHORT, &elems, NULL, &n);
	if (n > INDEX_MAX_KEYS)
		n = INDEX_MAX_KEYS;
	for (int i = 0; i < n; i++)
		out[i] = DatumGetInt16(elems[i]);
	return n;
}

PlanTable *
plan_find(TenantPlan *plan, Oid relid)
{
	for (int i = 0; i < plan->ntables; i++)
		if (plan->tables[i].relid == relid)
			return &plan->tables[i];
	return NULL;
}

PlanTable *
plan_root(TenantPlan *plan, PlanTable *pt)
{
	PlanTable  *r = plan_find(plan, pt->root);

	if (r == NULL)
		elog(ERROR, "clinic_migrate: root %u of table %u not in plan", pt->root, pt->relid);
	return r;
}

char *
plan_attname(Oid relid, AttrNumber att)
{
	return get_attname(relid, att, false);
}

/*
 * Row identity: the primary key, else the narrowest unique index whose
 * columns are all NOT NULL (no expressions, no predicate); the lowest OID
 * among equals.  Read from pg_index directly (planning the query that did
 * this cost more than the rest of the plan).
 */
static bool
att_not_null(Oid relid, AttrNumber att)
{
	HeapTuple	tup = SearchSysCache2(ATTNUM, ObjectIdGetDatum(relid), Int16GetDatum(att));
	bool		notnull = false;

	if (HeapTupleIsValid(tup))
	{
		notnull = ((Form_pg_attribute) GETSTRUCT(tup))->attnotnull;
		ReleaseSysCache(tup);
	}
	return notnull;
}

static void
find_key(PlanTable *pt)
{
	Relation	indrel = table_open(IndexRelationId, AccessShareLock);
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;
	Oid			best = InvalidOid;
	bool		best_primary = false;
	int			best_nkey = 0;

	pt->nkey = 0;
	ScanKeyInit(&key, Anum_pg_index_indrelid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(pt->relid));
	scan = systable_beginscan(indrel, IndexIndrelidIndexId, true, NULL, 1, &key);
	while (HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		Form_pg_index idx = (Form_pg_index) GETSTRUCT(tup);
		bool		ok = idx->indisunique && idx->indisvalid &&
			heap_attisnull(tup, Anum_pg_index_indpred, RelationGetDescr(indrel)) &&
			heap_attisnull(tup, Anum_pg_index_indexprs, RelationGetDescr(indrel));

		/* every column NOT NULL, INCLUDE columns too */
		for (int i = 0; ok && i < idx->indnatts; i++)
			ok = idx->indkey.values[i] != 0 && att_not_null(pt->relid, idx->indkey.values[i]);
		if (!ok)
			continue;
		if (OidIsValid(best) &&
			((best_primary && !idx->indisprimary) ||
			 (best_primary == idx->indisprimary &&
			  (best_nkey < idx->indnkeyatts ||
			   (best_nkey == idx->indnkeyatts && best < idx->indexrelid)))))
			continue;
		best = idx->indexrelid;
		best_primary = idx->indisprimary;
		best_nkey = idx->indnkeyatts;
		/* the index may have INCLUDE columns: only its key columns */
		for (int k = 0; k < idx->indnkeyatts && k < INDEX_MAX_KEYS; k++)
			pt->key_att[k] = idx->indkey.values[k];
	}
	systable_endscan(scan);
	table_close(indrel, AccessShareLock);
	if (OidIsValid(best))
	{
		pt->nkey = Min(best_nkey, INDEX_MAX_KEYS);
		pt->key_index = best;
	}
}

/*
 * does a valid, non-partial btree index start with exactly these columns?
 * The one with the fewest columns (then the lowest OID).  Read from the
 * catalog directly: as a query, planning it took 8 ms of a small tenant's
 * migration (the plan is built for each table, three times per call).
 */
static Oid
find_leading_index(Oid relid, AttrNumber *atts, int natts)
{
	Relation	indrel = table_open(IndexRelationId, AccessShareLock);
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;
	Oid			result = InvalidOid;
	int			result_natts = 0;

	ScanKeyInit(&key, Anum_pg_index_indrelid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(relid));
	scan = systable_beginscan(indrel, IndexIndrelidIndexId, true, NULL, 1, &key);
	while (HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		Form_pg_index idx = (Form_pg_index) GETSTRUCT(tup);
		HeapTuple	ctup;
		bool		btree;
		bool		match = idx->indisvalid && idx->indnatts >= natts &&
			heap_attisnull(tup, Anum_pg_index_indpred, RelationGetDescr(indrel));

		for (int i = 0; match && i < natts; i++)
			match = idx->indkey.values[i] == atts[i];
		if (!match)
			continue;
		ctup = SearchSysCache1(RELOID, ObjectIdGetDatum(idx->indexrelid));
		if (!HeapTupleIsValid(ctup))
			continue;
		btree = ((Form_pg_class) GETSTRUCT(ctup))->relam == BTREE_AM_OID;
		ReleaseSysCache(ctup);
		if (!btree)
			continue;
		if (!OidIsValid(result) || idx->indnatts < result_natts ||
			(idx->indnatts == result_natts && idx->indexrelid < result))
		{
			result = idx->indexrelid;
			result_natts = idx->indnatts;
		}
	}
	systable_endscan(scan);
	table_close(indrel, AccessShareLock);
	return result;
}

char *
plan_att_list_text(Oid relid, AttrNumber *atts, int n)
{
	StringInfoData buf;

	initStringInfo(&buf);
	for (int i = 0; i < n; i++)
		appendStringInfo(&buf, "%s%s", i ? ", " : "", quote_identifier(plan_attname(relid, atts[i])));
	return buf.data;
}

/* order copied tables parents first (Kahn; cycles broken by name) */
static void
order_tables(TenantPlan *plan, FkInfo *fks, int nfks)
{
	int			n = plan->ntables;
	bool	   *placed = palloc0(sizeof(bool) * n);
	int			pos = 0;
	int			ncopy = 0;

	for (int i = 0; i < n; i++)
		if (plan->tables[i].kind == PLAN_TENANT || plan->tables[i].kind == PLAN_CHILD)
			ncopy++;
		else
			placed[i] = true;

	while (pos < ncopy)
	{
		int			pick = -1;

		/* tables are sorted by name: the first ready one wins */
		for (int i = 0; i < n && pick < 0; i++)
		{
			bool		ready = true;

			if (placed[i])
				continue;
			for (int f = 0; f < nfks && ready; f++)
			{
				PlanTable  *parent;

				if (fks[f].child != plan->tables[i].relid || fks[f].parent == fks[f].child)
					continue;
				parent = plan_find(plan, fks[f].parent);
				if (parent && !placed[parent - plan->tables])
					ready = false;
			}
			if (ready)
				pick = i;
		}
		if (pick < 0)
		{
			/* a cycle: take the first unplaced table by name */
			for (int i = 0; i < n && pick < 0; i++)
				if (!placed[i])
					pick = i;
		}
		placed[pick] = true;
		plan->tables[pick].position = ++pos;
	}
	plan->ncopied = ncopy;
}

static int
cmp_position(const void *a, const void *b)
{
	const PlanTable *x = a;
	const PlanTable *y = b;
	int			px = x->position ? x->position : INT_MAX;
	int			py = y->position ? y->position : INT_MAX;

	if (px != py)
		return px < py ? -1 : 1;
	return strcmp(x->relname, y->relname);
}

/* deep copy of a plan into another memory context */
static TenantPlan *
plan_copy(TenantPlan *src, MemoryContext mcxt)
{
	MemoryContext old = MemoryContextSwitchTo(mcxt);
	TenantPlan *plan = palloc(sizeof(TenantPlan));

	memcpy(plan, src, sizeof(TenantPlan));
	plan->source_schema = pstrdup(src->source_schema);
	plan->tenant_column = pstrdup(src->tenant_column);
	plan->tables = palloc0(sizeof(PlanTable) * Max(src->ntables, 1));
	for (int i = 0; i < src->ntables; i++)
	{
		PlanTable  *t = &plan->tables[i];

		memcpy(t, &src->tables[i], sizeof(PlanTable));
		t->nspname = plan->source_schema;
		t->relname = pstrdup(t->relname);
		t->note = t->note ? pstrdup(t->note) : NULL;
		if (t->nhops > 0)
		{
			t->hops = palloc(sizeof(PlanHop) * t->nhops);
			memcpy(t->hops, src->tables[i].hops, sizeof(PlanHop) * t->nhops);
		}
	}
	MemoryContextSwitchTo(old);
	return plan;
}

/*
 * Every table of the source schema (partitions left to their parent), each
 * classified as far as its own columns tell.
 */
static void
plan_read_tables(TenantPlan *plan, const CmSettings *s)
{
	Oid			types[1] = {OIDOID};
	Datum		values[1];
	int			ret;

	values[0] = ObjectIdGetDatum(plan->source_nsp);
	/* as the extension owner: the caller need not read excluded_tables */
	ret = cm_state_exec(
								"SELECT c.oid, c.relname, c.relkind::text, "
								"  (SELECT e.extname FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid "
								"   WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid "
								"     AND d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e') AS ext, "
								"  EXISTS (SELECT 1 FROM clinic_migrate.excluded_tables x WHERE x.table_name = c.oid) "
								"FROM pg_class c "
								"WHERE c.oid IN " CM_RELS_OF_NAMESPACE("$1") " "
								"  AND c.relkind IN ('r', 'p') AND NOT c.relispartition "
								"ORDER BY c.relname COLLATE \"C\"",
								1, types, values, NULL, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "clinic_migrate: table lookup failed");
	plan->ntables = SPI_processed;
	plan->tables = palloc0(sizeof(PlanTable) * Max(plan->ntables, 1));
	for (int i = 0; i < plan->ntables; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		PlanTable  *pt = &plan->tables[i];
		bool		isnull;
		char	   *ext = SPI_getvalue(tup, desc, 4);
		bool		excluded = DatumGetBool(SPI_getbinval(tup, desc, 5, &isnull));

		pt->relid = DatumGetObjectId(SPI_getbinval(tup, desc, 1, &isnull));
		pt->relname = pstrdup(SPI_getvalue(tup, desc, 2));
		pt->nspname = plan->source_schema;
		pt->tenant_att = get_attnum(pt->relid, s->tenant_column);
		if (pt->tenant_att != InvalidAttrNumber)
			pt->tenant_type = get_atttype(pt->relid, pt->tenant_att);
		pt->root = pt->relid;

		if (ext)
		{
			pt->kind = PLAN_REFERENCE;
			add_note(pt, "belongs to extension %s", ext);
		}
		else if (pt->relid == plan->registry)
			pt->kind = PLAN_REGISTRY;
		else if (excluded)
			pt->kind = PLAN_EXCLUDED;
		else if (pt->tenant_att != InvalidAttrNumber)
			pt->kind = PLAN_TENANT;
		else
			pt->kind = PLAN_REFERENCE;	/* until a path is found */
	}

}

/* The foreign keys among the source schema's tables; *nfks of them. */
static FkInfo *
plan_read_fks(TenantPlan *plan, int *nfks_p)
{
	Oid			types[1] = {OIDOID};
	Datum		values[1];
	int			ret;
	FkInfo	   *fks;
	int			nfks;

	values[0] = ObjectIdGetDatum(plan->source_nsp);
	ret = SPI_execute_with_args(
								"SELECT con.oid, con.conrelid, con.confrelid, con.conkey, con.confkey "
								"FROM pg_constraint con "
								"WHERE con.contype = 'f' AND con.conparentid = 0 "
								"  AND con.conrelid IN " CM_RELS_OF_NAMESPACE("$1") " "
								"ORDER BY con.conrelid, con.conname COLLATE \"C\"",
								1, types, values, NULL, true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "clinic_migrate: foreign key lookup failed");
	nfks = SPI_processed;
	fks = palloc0(sizeof(FkInfo) * Max(nfks, 1));
	for (int i = 0; i < nfks; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;

		fks[i].conoid = DatumGetObjectId(SPI_getbinval(tup, desc, 1, &isnull));
		fks[i].child = DatumGetObjectId(SPI_getbinval(tup, desc, 2, &isnull));
		fks[i].parent = DatumGetObjectId(SPI_getbinval(tup, desc, 3, &isnull));
		fks[i].nkeys = int2array_to_atts(SPI_getbinval(tup, desc, 4, &isnull), fks[i].child_att);
		(void) int2array_to_atts(SPI_getbinval(tup, desc, 5, &isnull), fks[i].parent_att);
	}

	*nfks_p = nfks;
	return fks;
}

/*
 * The path of foreign keys from each child table to a table with the tenant
 * column: breadth-first from the tables that hold the tenant column, each
 * round giving a path to the tables one foreign key further away, so every
 * child gets a shortest path.
 */
static void
plan_find_paths(TenantPlan *plan, FkInfo *fks, int nfks)
{
	bool		changed;

	do
	{
		int		   *found = palloc0(sizeof(int) * Max(plan->ntables, 1));

		changed = false;
		for (int i = 0; i < plan->ntables; i++)
		{
			PlanTable  *pt = &plan->tables[i];

			found[i] = -1;
			if (pt->tenant_att != InvalidAttrNumber || pt->nhops > 0 ||
				pt->kind == PLAN_UNSUPPORTED || (pt->kind == PLAN_REFERENCE && pt->note))
				continue;
			for (int f = 0; f < nfks && found[i] < 0; f++)
			{
				PlanTable  *parent;

				if (fks[f].child != pt->relid || fks[f].parent == pt->relid)
					continue;
				parent = plan_find(plan, fks[f].parent);
				if (parent && (parent->tenant_att != InvalidAttrNumber || parent->nhops > 0) &&
					parent->kind != PLAN_UNSUPPORTED)
					found[i] = f;
			}
		}
		for (int i = 0; i < plan->ntables; i++)
		{
			PlanTable  *pt = &plan->tables[i];
			PlanTable  *parent;
			FkInfo	   *fk;

			if (found[i] < 0)
				continue;
			fk = &fks[found[i]];
			parent = plan_find(plan, fk->parent);
			if (parent->nhops + 1 > 16)
				continue;
			pt->nhops = parent->nhops + 1;
			pt->hops = palloc0(sizeof(PlanHop) * pt->nhops);
			pt->hops[0].conoid = fk->conoid;
			pt->hops[0].parent = fk->parent;
			pt->hops[0].nkeys = fk->nkeys;
			memcpy(pt->hops[0].child_att, fk->child_att, sizeof(fk->child_att));
			memcpy(pt->hops[0].parent_att, fk->parent_att, sizeof(fk->parent_att));
			if (parent->nhops > 0)
				memcpy(&pt->hops[1], parent->hops, sizeof(PlanHop) * parent->nhops);
			pt->root = parent->root;
			if (pt->kind == PLAN_REFERENCE)
				pt->kind = PLAN_CHILD;
			changed = true;
		}
		pfree(found);
	} while (changed);

}

/* Keys, batch indexes and warnings of the tables that will be copied. */
static void
plan_find_keys(TenantPlan *plan, const CmSettings *s)
{
	for (int i = 0; i < plan->ntables; i++)
	{
		PlanTable  *pt = &plan->tables[i];

		if (pt->kind != PLAN_TENANT && pt->kind != PLAN_CHILD && pt->tenant_att == InvalidAttrNumber)
			continue;
		find_key(pt);
		if (pt->nkey == 0)
		{
			if (pt->kind == PLAN_TENANT || pt->kind == PLAN_CHILD)
				add_note(pt, "no primary key or unique not-null key: cannot be copied safely");
			continue;
		}
		/* keyset columns: the key without the (constant) tenant column */
		pt->nbatch = 0;
		for (int k = 0; k < pt->nkey; k++)
			if (pt->key_att[k] != pt->tenant_att)
				pt->batch_att[pt->nbatch++] = pt->key_att[k];
		if (pt->tenant_att != InvalidAttrNumber)
		{
			AttrNumber	lead[INDEX_MAX_KEYS + 1];

			lead[0] = pt->tenant_att;
			memcpy(&lead[1], pt->batch_att, sizeof(AttrNumber) * pt->nbatch);
			pt->batch_index = find_leading_index(pt->relid, lead,
												 Min(pt->nbatch + 1, INDEX_MAX_KEYS));
			if (!OidIsValid(pt->batch_index) && pt->kind == PLAN_TENANT)
				add_note(pt, "no index on (%s%s%s): every batch scans all of the tenant's rows; "
						 "CREATE INDEX ON %s (%s%s%s)",
						 quote_identifier(s->tenant_column), pt->nbatch ? ", " : "",
						 plan_att_list_text(pt->relid, pt->batch_att, pt->nbatch),
						 quote_qualified_identifier(pt->nspname, pt->relname),
						 quote_identifier(s->tenant_column), pt->nbatch ? ", " : "",
						 plan_att_list_text(pt->relid, pt->batch_att, pt->nbatch));
		}
	}
}

/* Child tables: the joins of their path need an index on the referencing columns. */
static void
plan_check_paths_indexed(TenantPlan *plan)
{
	for (int i = 0; i < plan->ntables; i++)
	{
		PlanTable  *pt = &plan->tables[i];
		Oid			child = pt->relid;

		if (pt->kind != PLAN_CHILD)
			continue;
		for (int h = 0; h < pt->nhops; h++)
		{
			PlanHop    *hop = &pt->hops[h];

			hop->indexed = OidIsValid(find_leading_index(child, hop->child_att, hop->nkeys));
			if (!hop->indexed)
				add_note(pt, "no index on %s (%s): finding the tenant's rows scans the table; "
						 "CREATE INDEX ON %s (%s)",
						 quote_identifier(get_rel_name(child)),
						 plan_att_list_text(child, hop->child_att, hop->nkeys),
						 cm_qualified_relname(child),
						 plan_att_list_text(child, hop->child_att, hop->nkeys));
			child = hop->parent;
		}
		{
			PlanTable  *root = plan_root(plan, pt);

			if (root->nkey == 0)
				add_note(pt, "its tenant table %s has no key to batch by",
						 quote_identifier(root->relname));
		}
	}

}

/*
 * Build the plan.  SPI switches back to its own memory after each call, so
 * the plan is built there and copied into mcxt at the end.
 */
TenantPlan *
plan_build(const CmSettings *s, MemoryContext mcxt)
{
	TenantPlan *plan = palloc0(sizeof(TenantPlan));
	FkInfo	   *fks;
	int			nfks;

	plan->source_schema = pstrdup(s->source_schema);
	plan->tenant_column = pstrdup(s->tenant_column);
	plan->source_nsp = get_namespace_oid(s->source_schema, true);
	if (!OidIsValid(plan->source_nsp))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_SCHEMA),
				 errmsg("source schema \"%s\" does not exist", s->source_schema),
				 errhint("Set clinic_migrate.source_schema to the schema of the shared tables.")));
	plan->registry = s->registry_table[0]
		? get_relname_relid(s->registry_table, plan->source_nsp) : InvalidOid;

	plan_read_tables(plan, s);
	fks = plan_read_fks(plan, &nfks);
	plan_find_paths(plan, fks, nfks);
	plan_find_keys(plan, s);

	/*
	 * A partitioned table without a key of its own (keys on its partitions
	 * only) stays shared, as every partitioned table did before 0.7: a
	 * database that has one is not stopped from moving its tenants.
	 */
	for (int i = 0; i < plan->ntables; i++)
	{
		PlanTable  *pt = &plan->tables[i];

		if ((pt->kind == PLAN_TENANT || pt->kind == PLAN_CHILD) && pt->nkey == 0 &&
			get_rel_relkind(pt->relid) == RELKIND_PARTITIONED_TABLE)
		{
			pt->kind = PLAN_UNSUPPORTED;
			pt->note = NULL;
			add_note(pt, "partitioned table without a primary key or unique not-null key of its own: it stays shared");
		}
	}
	plan_check_paths_indexed(plan);
	order_tables(plan, fks, nfks);
	qsort(plan->tables, plan->ntables, sizeof(PlanTable), cmp_position);
	return plan_copy(plan, mcxt);
}

void
plan_check_copyable(TenantPlan *plan)
{
	for (int i = 0; i < plan->ncopied; i++)
	{
		PlanTable  *pt = &plan->tables[i];
		PlanTable  *root = plan_root(plan, pt);
		char	   *qname = quote_qualified_identifier(pt->nspname, pt->relname);

		if (pt->nkey == 0)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("table %s has no primary key or unique not-null key", qname),
					 errdetail("Without a key its rows cannot be copied in resumable batches or validated."),
					 errhint("Add a primary key, or keep the table shared with SELECT clinic_migrate.exclude_table('%s').",
							 qname)));
		if (root->nkey == 0)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("table %s, through which the rows of %s are found, has no primary key or unique not-null key",
							quote_qualified_identifier(root->nspname, root->relname), qname),
					 errhint("Add a primary key to it, or exclude %s.", qname)));
	}
	if (plan->ncopied == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("no table of schema \"%s\" holds tenant rows", plan->source_schema),
				 errdetail("No table has a column \"%s\" or a foreign key path to one.",
						   plan->tenant_column),
				 errhint("Check clinic_migrate.source_schema and clinic_migrate.tenant_column.")));
}

const char *
plan_root_alias(PlanTable *pt)
{
	static char alias[16];

	if (pt->nhops == 0)
		return "s";
	snprintf(alias, sizeof(alias), "a%d", pt->nhops);
	return alias;
}

static void
append_row_bound(StringInfo buf, PlanTable *root, const char *alias,
				 const char *op, int first_param)
{
	appendStringInfoString(buf, " AND (");
	for (int i = 0; i < root->nbatch; i++)
		appendStringInfo(buf, "%s%s.%s", i ? ", " : "", alias,
						 quote_identifier(plan_attname(root->relid, root->batch_att[i])));
	appendStringInfo(buf, ") %s (", op);
	for (int i = 0; i < root->nbatch; i++)
		appendStringInfo(buf, "%s$%d", i ? ", " : "", first_param + i);
	appendStringInfoChar(buf, ')');
}

void
plan_append_tenant_rows(StringInfo buf, TenantPlan *plan, PlanTable *pt,
						int lo_param, int hi_param)
{
	PlanTable  *root = plan_root(plan, pt);
	const char *ralias = plan_root_alias(pt);
	Oid			child = pt->relid;

	appendStringInfo(buf, " FROM %s s", cm_qualified_relname(pt->relid));
	for (int h = 0; h < pt->nhops; h++)
	{
		PlanHop    *hop = &pt->hops[h];
		char		calias[16];

		if (h == 0)
			strlcpy(calias, "s", sizeof(calias));
		else
			snprintf(calias, sizeof(calias), "a%d", h);
		appendStringInfo(buf, " JOIN %s a%d ON (", cm_qualified_relname(hop->parent), h + 1);
		for (int k = 0; k < hop->nkeys; k++)
		{
			if (k)
				appendStringInfoString(buf, " AND ");
			cm_append_eq(buf,
						 psprintf("a%d.%s", h + 1, quote_identifier(plan_attname(hop->parent, hop->parent_att[k]))),
						 get_atttype(hop->parent, hop->parent_att[k]),
						 psprintf("%s.%s", calias, quote_identifier(plan_attname(child, hop->child_att[k]))),
						 get_atttype(child, hop->child_att[k]));
		}
		appendStringInfoChar(buf, ')');
		child = hop->parent;
	}
	appendStringInfoString(buf, " WHERE ");
	cm_append_eq(buf, psprintf("%s.%s", ralias, quote_identifier(plan_attname(root->relid, root->tenant_att))),
				 root->tenant_type, "$1", root->tenant_type);
	if (lo_param > 0 && root->nbatch > 0)
		append_row_bound(buf, root, ralias, ">", lo_param);
	if (hi_param > 0 && root->nbatch > 0)
		append_row_bound(buf, root, ralias, "<=", hi_param);
}

void
plan_append_belongs(StringInfo buf, TenantPlan *plan, PlanTable *pt,
					const char *alias, int param)
{
	plan_append_belongs_to(buf, plan, pt, alias, "a", psprintf("$%d", param));
}

void
plan_append_belongs_to(StringInfo buf, TenantPlan *plan, PlanTable *pt,
					   const char *alias, const char *hop_prefix, const char *tenant)
{
	PlanTable  *root = plan_root(plan, pt);
	Oid			child = pt->relid;

	if (pt->nhops == 0)
	{
		cm_append_eq(buf, psprintf("%s.%s", alias, quote_identifier(plan_attname(root->relid, root->tenant_att))),
					 root->tenant_type, tenant, root->tenant_type);
		return;
	}
	appendStringInfoString(buf, "EXISTS (SELECT 1 FROM ");
	for (int h = 0; h < pt->nhops; h++)
		appendStringInfo(buf, "%s%s %s%d", h ? ", " : "", cm_qualified_relname(pt->hops[h].parent),
						 hop_prefix, h + 1);
	appendStringInfoString(buf, " WHERE ");
	for (int h = 0; h < pt->nhops; h++)
	{
		PlanHop    *hop = &pt->hops[h];
		char	   *calias;

		if (h == 0)
			calias = pstrdup(alias);
		else
			calias = psprintf("%s%d", hop_prefix, h);
		for (int k = 0; k < hop->nkeys; k++)
		{
			cm_append_eq(buf,
						 psprintf("%s%d.%s", hop_prefix, h + 1, quote_identifier(plan_attname(hop->parent, hop->parent_att[k]))),
						 get_atttype(hop->parent, hop->parent_att[k]),
						 psprintf("%s.%s", calias, quote_identifier(plan_attname(child, hop->child_att[k]))),
						 get_atttype(child, hop->child_att[k]));
			appendStringInfoString(buf, " AND ");
		}
		child = hop->parent;
	}
	cm_append_eq(buf, psprintf("%s%d.%s", hop_prefix, pt->nhops, quote_identifier(plan_attname(root->relid, root->tenant_att))),
				 root->tenant_type, tenant, root->tenant_type);
	appendStringInfoChar(buf, ')');
}

List *
plan_copy_columns(Oid relid, bool *has_always_identity)
{
	HeapTuple	tup;
	List	   *cols = NIL;
	int			natts;

	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	natts = ((Form_pg_class) GETSTRUCT(tup))->relnatts;
	ReleaseSysCache(tup);
	if (has_always_identity)
		*has_always_identity = false;
	for (AttrNumber a = 1; a <= natts; a++)
	{
		HeapTuple	atup = SearchSysCache2(ATTNUM, ObjectIdGetDatum(relid), Int16GetDatum(a));
		Form_pg_attribute att;

		if (!HeapTupleIsValid(atup))
			continue;
		att = (Form_pg_attribute) GETSTRUCT(atup);
		if (!att->attisdropped && att->attgenerated == '\0')
		{
			cols = lappend(cols, pstrdup(NameStr(att->attname)));
			if (att->attidentity == ATTRIBUTE_IDENTITY_ALWAYS && has_always_identity)
				*has_always_identity = true;
		}
		ReleaseSysCache(atup);
	}
	return cols;
}

List *
plan_key_columns(PlanTable *pt)
{
	List	   *cols = NIL;

	for (int i = 0; i < pt->nkey; i++)
		cols = lappend(cols, plan_attname(pt->relid, pt->key_att[i]));
	return cols;
}

char *
plan_canonical_tenant(TenantPlan *plan, const char *tenant)
{
	PlanTable  *pt = plan_find(plan, plan->registry);
	Oid			typid;
	Oid			infunc,
				ioparam,
				outfunc;
	bool		varlena;
	Datum		d = (Datum) 0;
	MemoryContext cxt = CurrentMemoryContext;

	if (pt == NULL || pt->tenant_att == InvalidAttrNumber)
	{
		pt = NULL;
		for (int i = 0; i < plan->ntables && pt == NULL; i++)
			if (plan->tables[i].kind == PLAN_TENANT)
				pt = &plan->tables[i];
	}
	if (pt == NULL)
		return pstrdup(tenant);
	typid = pt->tenant_type;
	getTypeInputInfo(typid, &infunc, &ioparam);
	getTypeOutputInfo(typid, &outfunc, &varlena);
	PG_TRY();
	{
		CmRoleSave	save;

		/* a domain's CHECK is the table owner's code: run it with no more than the owner's rights */
		cm_table_owner_begin(pt->relid, &save);
		d = OidInputFunctionCall(infunc, (char *) tenant, ioparam, -1);
		cm_role_end(&save);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		ereport(ERROR,
				(errcode(edata->sqlerrcode),
				 errmsg("tenant id \"%s\" is not a valid %s", tenant, format_type_be(typid)),
				 errdetail("%s", edata->message),
				 errhint("Column %s.%s, the tenant column, has type %s.",
						 quote_identifier(pt->relname), quote_identifier(plan->tenant_column),
						 format_type_be(typid))));
	}
	PG_END_TRY();
	return OidOutputFunctionCall(outfunc, d);
}

Datum
plan_tenant_datum(PlanTable *root, const char *tenant)
{
	Oid			infunc;
	Oid			ioparam;

	CmRoleSave	save;
	Datum		d;

	getTypeInputInfo(root->tenant_type, &infunc, &ioparam);
	/* a domain's CHECK is the table owner's code: run it with no more than the owner's rights */
	cm_table_owner_begin(root->relid, &save);
	d = OidInputFunctionCall(infunc, (char *) tenant, ioparam, -1);
	cm_role_end(&save);
	return d;
}

int
plan_append_batch_rows(StringInfo buf, TenantPlan *plan, PlanTable *pt,
					   bool have_lo, bool have_hi, int nb, Oid *types, Datum *values)
{
	if (!have_lo && !have_hi)
		plan_append_tenant_rows(buf, plan, pt, 0, 0);
	else if (!have_lo)
	{
		/* upper bound only: move the bound parameters down to $2 */
		for (int i = 0; i < nb; i++)
		{
			values[1 + i] = values[1 + nb + i];
			types[1 + i] = types[1 + nb + i];
		}
		plan_append_tenant_rows(buf, plan, pt, 0, 2);
	}
	else
		plan_append_tenant_rows(buf, plan, pt, 2, have_hi ? 2 + nb : 0);
	return 1 + (have_lo ? nb : 0) + (have_hi ? nb : 0);
}
