/*-------------------------------------------------------------------------
 * policies.c
 *	  Row-level security for the tenants that stay in the shared tables.
 *
 *	  Every planned shared table (tenant and child kinds) gets one
 *	  RESTRICTIVE policy, clinic_migrate_tenant, for the application roles
 *	  named: a row is admitted only when its tenant (its tenant column, or
 *	  the tenant column at the end of its foreign key chain) is the
 *	  session's current tenant, app.current_tenant as set_tenant sets it,
 *	  read as the tenant column's type.  No current tenant is NULL: no rows.
 *	  A restrictive policy only narrows what the table's permissive ones
 *	  allow, so a table that had no row level security before gets a
 *	  permissive clinic_migrate_open policy for PUBLIC too: every other role
 *	  reads and writes as before.  FORCE ROW LEVEL SECURITY where the
 *	  table's owner is one of the roles.  What clinic_migrate changed is
 *	  recorded in clinic_migrate.tenant_rls, so that disabling restores the
 *	  table's own flags exactly, and the clone copies the table's own
 *	  policies, not these.  The tables of the tenants' schemas get the same
 *	  policies, comparing the session's tenant with the schema's tenant
 *	  (every row there is its own): a session of another tenant that names
 *	  the schema reads nothing either.
 *
 *	  In permissive mode the policy is "<belongs> OR tenant_rls_audit(t)":
 *	  the audit function is called only for rows that enforcing would hide,
 *	  counts them per role and table in shared memory, and admits them.
 *
 *	  clinic_migrate's own reads run as the tables' owner with
 *	  SECURITY_NOFORCE_RLS and row_security off (state.c): these policies
 *	  never hide a row from them, and any other policy fails the statement
 *	  instead of hiding rows.
 *
 *	  Floor 5 (the actions).  May call: floors 1 to 4.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"
#include "catalog/partition.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "catalog/namespace.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_class.h"
#include "catalog/pg_constraint.h"
#include "catalog/pg_policy.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/fmgroids.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "settings.h"
#include "util.h"
#include "locks.h"
#include "state.h"
#include "plan.h"
#include "policies.h"

/* the session's tenant, as the policy reads it (set_tenant sets it) */
#define CM_TENANT_SETTING "app.current_tenant"

/* ---------------------------------------------------------------------
 * The audit counters of the permissive mode
 * ---------------------------------------------------------------------
 */
#define AUDIT_MAX_ENTRIES 1024

typedef struct AuditKey
{
	Oid			db;
	Oid			role;
	Oid			relid;
} AuditKey;

typedef struct AuditEntry
{
	AuditKey	key;
	pg_atomic_uint64 other_tenant;
	pg_atomic_uint64 no_tenant;
	pg_atomic_uint64 last;
} AuditEntry;

typedef struct AuditShared
{
	LWLock	   *lock;
	pg_atomic_uint64 overflow;
} AuditShared;

static AuditShared *audit_shared = NULL;
static HTAB *audit_hash = NULL;
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static void
audit_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(AuditShared)) +
						   hash_estimate_size(AUDIT_MAX_ENTRIES, sizeof(AuditEntry)));
	RequestNamedLWLockTranche("clinic_migrate_rls_audit", 1);
}

static void
audit_shmem_startup(void)
{
	bool		found;
	HASHCTL		info;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	audit_shared = ShmemInitStruct("clinic_migrate_rls_audit", sizeof(AuditShared), &found);
	if (!found)
	{
		audit_shared->lock = &(GetNamedLWLockTranche("clinic_migrate_rls_audit"))->lock;
		pg_atomic_init_u64(&audit_shared->overflow, 0);
	}
	memset(&info, 0, sizeof(info));
	info.keysize = sizeof(AuditKey);
	info.entrysize = sizeof(AuditEntry);
	/* fixed size: a full table refuses new entries, it never takes more memory */
	audit_hash = ShmemInitHash("clinic_migrate_rls_audit_hash", AUDIT_MAX_ENTRIES, AUDIT_MAX_ENTRIES,
							   &info, HASH_ELEM | HASH_BLOBS | HASH_FIXED_SIZE);
	LWLockRelease(AddinShmemInitLock);
}

void
cm_policies_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
		return;
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = audit_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = audit_shmem_startup;
}

static void
audit_count(Oid relid, bool no_tenant)
{
	AuditKey	key;
	AuditEntry *e;

	if (audit_hash == NULL)
		return;
	memset(&key, 0, sizeof(key));
	key.db = MyDatabaseId;
	key.role = GetUserId();
	key.relid = relid;
	LWLockAcquire(audit_shared->lock, LW_SHARED);
	e = hash_search(audit_hash, &key, HASH_FIND, NULL);
	if (e == NULL)
	{
		bool		found;

		LWLockRelease(audit_shared->lock);
		LWLockAcquire(audit_shared->lock, LW_EXCLUSIVE);
		e = hash_search(audit_hash, &key, HASH_ENTER_NULL, &found);
		if (e == NULL)
		{
			pg_atomic_fetch_add_u64(&audit_shared->overflow, 1);
			LWLockRelease(audit_shared->lock);
			return;
		}
		if (!found)
		{
			pg_atomic_init_u64(&e->other_tenant, 0);
			pg_atomic_init_u64(&e->no_tenant, 0);
			pg_atomic_init_u64(&e->last, 0);
		}
	}
	pg_atomic_fetch_add_u64(no_tenant ? &e->no_tenant : &e->other_tenant, 1);
	pg_atomic_write_u64(&e->last, (uint64) GetCurrentTimestamp());
	LWLockRelease(audit_shared->lock);
}

/* forget this database's counters (a new mode or set of tables starts afresh) */
static void
audit_reset(void)
{
	HASH_SEQ_STATUS seq;
	AuditEntry *e;

	if (audit_hash == NULL)
		return;
	LWLockAcquire(audit_shared->lock, LW_EXCLUSIVE);
	hash_seq_init(&seq, audit_hash);
	while ((e = hash_seq_search(&seq)) != NULL)
		if (e->key.db == MyDatabaseId)
			(void) hash_search(audit_hash, &e->key, HASH_REMOVE, NULL);
	pg_atomic_write_u64(&audit_shared->overflow, 0);
	LWLockRelease(audit_shared->lock);
}

bool
cm_rls_audit_rows(CmRlsAuditRow **rows, int *n, int64 *overflow)
{
	HASH_SEQ_STATUS seq;
	AuditEntry *e;
	int			cap = 16;

	*rows = NULL;
	*n = 0;
	*overflow = 0;
	if (audit_hash == NULL)
		return false;
	*rows = palloc(sizeof(CmRlsAuditRow) * cap);
	LWLockAcquire(audit_shared->lock, LW_SHARED);
	hash_seq_init(&seq, audit_hash);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		CmRlsAuditRow *r;

		if (e->key.db != MyDatabaseId)
			continue;
		if (*n == cap)
		{
			cap *= 2;
			*rows = repalloc(*rows, sizeof(CmRlsAuditRow) * cap);
		}
		r = &(*rows)[(*n)++];
		r->role = e->key.role;
		r->relid = e->key.relid;
		r->other_tenant = (int64) pg_atomic_read_u64(&e->other_tenant);
		r->no_tenant = (int64) pg_atomic_read_u64(&e->no_tenant);
		r->last = (TimestampTz) pg_atomic_read_u64(&e->last);
	}
	*overflow = (int64) pg_atomic_read_u64(&audit_shared->overflow);
	LWLockRelease(audit_shared->lock);
	return true;
}

/*
 * clinic_migrate.tenant_rls_audit(table): called by the permissive mode's
 * policy for a row that the enforcing policy would hide; counts it for the
 * current role and admits it.  Granted to PUBLIC (the policy runs as the
 * application's role): it reads nothing and can only add to its caller's
 * own counters.
 */
static bool has_policy(Oid relid, const char *name);

/*
 * Does the table carry the tenant policy?  Looked up once per table and
 * backend: only those tables are counted, so that a caller cannot fill the
 * counters with made-up tables.
 */
typedef struct AuditedTable
{
	Oid			relid;
	bool		ours;
} AuditedTable;

static HTAB *audited = NULL;

/* CREATE and DROP POLICY invalidate the table's relcache entry: look again */
static void
audited_invalidate(Datum arg, Oid relid)
{
	if (audited == NULL)
		return;
	if (!OidIsValid(relid))
	{
		hash_destroy(audited);
		audited = NULL;
	}
	else
		(void) hash_search(audited, &relid, HASH_REMOVE, NULL);
}

/*
 * Is the table one that enable_tenant_rls recorded?  Anyone may name a
 * policy of a table of theirs clinic_migrate_tenant: the record, which only
 * enable_tenant_rls writes, is what says the policy is ours.  Read from C:
 * the caller (the application's role) may not read the records.
 */
static bool
recorded_table(Oid relid)
{
	Oid			nsp = get_namespace_oid(CM_SCHEMA, true);
	Oid			records = OidIsValid(nsp) ? get_relname_relid("tenant_rls", nsp) : InvalidOid;
	Relation	rel;
	ScanKeyData key;
	SysScanDesc scan;
	bool		found;

	if (!OidIsValid(records))
		return false;
	rel = table_open(records, AccessShareLock);
	ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_OIDEQ, ObjectIdGetDatum(relid));
	scan = systable_beginscan(rel, InvalidOid, false,
							  ActiveSnapshotSet() ? GetActiveSnapshot() : NULL, 1, &key);
	found = HeapTupleIsValid(systable_getnext(scan));
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return found;
}

static bool
audited_table(Oid relid)
{
	static bool registered = false;
	bool		found;
	AuditedTable *e;

	if (!registered)
	{
		CacheRegisterRelcacheCallback(audited_invalidate, (Datum) 0);
		registered = true;
	}
	if (audited == NULL)
	{
		HASHCTL		info;

		memset(&info, 0, sizeof(info));
		info.keysize = sizeof(Oid);
		info.entrysize = sizeof(AuditedTable);
		info.hcxt = TopMemoryContext;
		audited = hash_create("clinic_migrate audited tables", 64, &info,
							  HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	e = hash_search(audited, &relid, HASH_FIND, NULL);
	if (e == NULL)
	{
		bool		ours = SearchSysCacheExists1(RELOID, ObjectIdGetDatum(relid)) &&
			get_rel_persistence(relid) == RELPERSISTENCE_PERMANENT &&
			has_policy(relid, CM_RLS_POLICY) && recorded_table(relid);

		if (hash_get_num_entries(audited) >= 4096)
			return ours;		/* not cached past that: a caller's made-up OIDs */
		e = hash_search(audited, &relid, HASH_ENTER, &found);
		e->ours = ours;
	}
	return e->ours;
}

PG_FUNCTION_INFO_V1(cm_tenant_rls_audit);
Datum
cm_tenant_rls_audit(PG_FUNCTION_ARGS)
{
	const char *tenant;

	if (PG_ARGISNULL(0) || audit_hash == NULL || !audited_table(PG_GETARG_OID(0)))
		PG_RETURN_BOOL(true);
	tenant = GetConfigOption(CM_TENANT_SETTING, true, false);
	audit_count(PG_GETARG_OID(0), tenant == NULL || tenant[0] == '\0');
	PG_RETURN_BOOL(true);
}

/*
 * clinic_migrate.current_tenant(NULL::<type>): the session's tenant
 * (app.current_tenant, as set_tenant sets it) read as that type; NULL when
 * none is set.  What every tenant policy compares with: one function call,
 * which the planner looks up once, where the cast of NULLIF(current_setting())
 * took four nodes to plan in every statement.  Granted to PUBLIC.
 */
PG_FUNCTION_INFO_V1(cm_current_tenant);
Datum
cm_current_tenant(PG_FUNCTION_ARGS)
{
	const char *tenant = GetConfigOption(CM_TENANT_SETTING, true, false);
	struct
	{
		Oid			type;
		FmgrInfo	input;
		Oid			ioparam;
	}		   *cache = fcinfo->flinfo->fn_extra;
	Oid			type = get_fn_expr_argtype(fcinfo->flinfo, 0);

	if (tenant == NULL || tenant[0] == '\0' || !OidIsValid(type))
		PG_RETURN_NULL();
	if (cache == NULL || cache->type != type)
	{
		Oid			input;

		cache = MemoryContextAlloc(fcinfo->flinfo->fn_mcxt, sizeof(*cache));
		getTypeInputInfo(type, &input, &cache->ioparam);
		fmgr_info_cxt(input, &cache->input, fcinfo->flinfo->fn_mcxt);
		cache->type = type;
		fcinfo->flinfo->fn_extra = cache;
	}
	return InputFunctionCall(&cache->input, (char *) tenant, cache->ioparam, -1);
}

/* ---------------------------------------------------------------------
 * The policies
 * ---------------------------------------------------------------------
 */

/* what clinic_migrate.tenant_rls says of a table */
typedef struct RlsRecord
{
	Oid			relid;
	bool		rls_before;
	bool		force_before;
	bool		covered;		/* covered by this call */
} RlsRecord;

static List *
read_records(const char *source_schema)
{
	List	   *recs = NIL;
	Oid			t = NAMEOID;
	Datum		v = CStringGetDatum(source_schema);

	cm_state_exec("SELECT r.table_name::pg_catalog.oid, r.rls_before, r.force_before "
				  "FROM clinic_migrate.tenant_rls r WHERE r.source_schema OPERATOR(pg_catalog.=) $1",
				  1, &t, &v, NULL, 0);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		RlsRecord  *r = palloc0(sizeof(RlsRecord));
		bool		isnull;

		r->relid = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
		r->rls_before = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull));
		r->force_before = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 3, &isnull));
		recs = lappend(recs, r);
	}
	/* a tenant's schema dropped by rollback takes its tables with it */
	cm_state_exec("DELETE FROM clinic_migrate.tenant_rls r WHERE NOT EXISTS "
				  "(SELECT FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) r.table_name)",
				  0, NULL, NULL, NULL, 0);
	return recs;
}

static RlsRecord *
find_record(List *recs, Oid relid)
{
	ListCell   *lc;

	foreach(lc, recs)
	{
		RlsRecord  *r = lfirst(lc);

		if (r->relid == relid)
			return r;
	}
	return NULL;
}

static void
rel_flags(Oid relid, bool *rls, bool *force)
{
	HeapTuple	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));

	if (!HeapTupleIsValid(tup))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("a table of the plan (OID %u) was dropped while its locks were awaited", relid),
				 errhint("Nothing was changed; run it again.")));
	*rls = ((Form_pg_class) GETSTRUCT(tup))->relrowsecurity;
	*force = ((Form_pg_class) GETSTRUCT(tup))->relforcerowsecurity;
	ReleaseSysCache(tup);
}

static bool
has_policy(Oid relid, const char *name)
{
	Relation	rel = table_open(PolicyRelationId, AccessShareLock);
	ScanKeyData key[2];
	SysScanDesc scan;
	bool		found;

	ScanKeyInit(&key[0], Anum_pg_policy_polrelid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(relid));
	ScanKeyInit(&key[1], Anum_pg_policy_polname, BTEqualStrategyNumber, F_NAMEEQ,
				CStringGetDatum(name));
	scan = systable_beginscan(rel, PolicyPolrelidPolnameIndexId, true, NULL, 2, key);
	found = HeapTupleIsValid(systable_getnext(scan));
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return found;
}

static void
exec_ddl(const char *sql)
{
	if (SPI_execute(sql, false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "clinic_migrate: row level security statement failed");
}

static void
ddl(const char *fmt, Oid relid, const char *extra)
{
	exec_ddl(psprintf(fmt, cm_qualified_relname(relid), extra ? extra : ""));
}

/* take clinic_migrate's policies off a table and restore its own flags */
static void
uncover(RlsRecord *r)
{
	bool		rls;
	bool		force;

	if (!SearchSysCacheExists1(RELOID, ObjectIdGetDatum(r->relid)))
		return;
	if (has_policy(r->relid, CM_RLS_POLICY))
		ddl("DROP POLICY " CM_RLS_POLICY " ON %s%s", r->relid, NULL);
	if (has_policy(r->relid, CM_RLS_OPEN_POLICY))
		ddl("DROP POLICY " CM_RLS_OPEN_POLICY " ON %s%s", r->relid, NULL);
	rel_flags(r->relid, &rls, &force);
	if (force != r->force_before)
		ddl("ALTER TABLE %s %sFORCE ROW LEVEL SECURITY", r->relid, r->force_before ? "" : "NO ");
	if (rls != r->rls_before)
		ddl("ALTER TABLE %s %s ROW LEVEL SECURITY", r->relid, r->rls_before ? "ENABLE" : "DISABLE");
}

/*
 * A child whose foreign key to its root includes the root's tenant column
 * (FOREIGN KEY (tenant_id, account_id) REFERENCES accounts) carries its
 * tenant in its own row: the policy compares that column, with no lookup
 * of the parent per row.  Only for a validated key, and with its other
 * columns NOT NULL, so that the row references a parent, as the EXISTS
 * form requires.  False when the child has no such key.
 */
static bool
append_tenant_in_key(StringInfo buf, PlanTable *root, PlanTable *pt, const char *tenant)
{
	PlanHop    *hop;
	HeapTuple	tup;
	bool		validated;
	int			tk = -1;

	if (pt->nhops != 1 || pt->hops[0].parent != root->relid)
		return false;
	hop = &pt->hops[0];
	for (int k = 0; k < hop->nkeys; k++)
		if (hop->parent_att[k] == root->tenant_att)
			tk = k;
	if (tk < 0)
		return false;
	tup = SearchSysCache1(CONSTROID, ObjectIdGetDatum(hop->conoid));
	if (!HeapTupleIsValid(tup))
		return false;
	validated = ((Form_pg_constraint) GETSTRUCT(tup))->convalidated;
	ReleaseSysCache(tup);
	if (!validated)
		return false;

	/*
	 * The key matched under the root column's collation: the child's value
	 * equals the root's only in that sense ('T3' may reference 't3' under a
	 * case-insensitive one).  Compared in the same collation, the column
	 * says the same as the parent would; in another, it need not.
	 */
	{
		Oid			ctype,
					rtype,
					ccoll,
					rcoll;
		int32		typmod;

		get_atttypetypmodcoll(pt->relid, hop->child_att[tk], &ctype, &typmod, &ccoll);
		get_atttypetypmodcoll(root->relid, root->tenant_att, &rtype, &typmod, &rcoll);
		if (ctype != root->tenant_type || ccoll != rcoll)
			return false;
	}
	appendStringInfoChar(buf, '(');
	cm_append_eq(buf, quote_identifier(plan_attname(pt->relid, hop->child_att[tk])),
				 root->tenant_type, tenant, root->tenant_type);
	for (int k = 0; k < hop->nkeys; k++)
		if (k != tk)
			appendStringInfo(buf, " AND %s IS NOT NULL",
							 quote_identifier(plan_attname(pt->relid, hop->child_att[k])));
	appendStringInfoChar(buf, ')');
	return true;
}

/* the policy's expression: the row belongs to the session's tenant */
static char *
policy_expr(TenantPlan *plan, PlanTable *pt, bool enforce, const char *alias)
{
	PlanTable  *root = plan_root(plan, pt);
	StringInfoData buf;
	char	   *tenant;

	tenant = psprintf("clinic_migrate.current_tenant(NULL::%s)", format_type_be_qualified(root->tenant_type));
	initStringInfo(&buf);
	if (!enforce)
		appendStringInfoChar(&buf, '(');
	if (!append_tenant_in_key(&buf, root, pt, tenant))
		plan_append_belongs_to(&buf, plan, pt, quote_identifier(alias), "clinic_migrate_p", tenant);
	if (!enforce)
		appendStringInfo(&buf, " OR clinic_migrate.tenant_rls_audit(%s::pg_catalog.regclass))",
						 quote_literal_cstr(cm_qualified_relname(pt->relid)));
	return buf.data;
}

static char *
role_list(List *roles)
{
	StringInfoData buf;
	ListCell   *lc;

	initStringInfo(&buf);
	foreach(lc, roles)
		appendStringInfo(&buf, "%s%s", foreach_current_index(lc) ? ", " : "",
						 quote_identifier(GetUserNameFromId(lfirst_oid(lc), false)));
	return buf.data;
}

/*
 * A child table's tenant is found through its parents, as the child's owner
 * (capture, copy): with row level security on the parents, an owner that
 * is not theirs would be refused by them.
 */
static void
check_chain_owners(List *tables)
{
	ListCell   *lc;

	foreach(lc, tables)
	{
		PlanTable  *pt = lfirst(lc);
		Oid			owner = cm_rel_owner(pt->relid);

		for (int h = 0; h < pt->nhops; h++)
		{
			Oid			powner = cm_rel_owner(pt->hops[h].parent);

			if (powner != owner)
				ereport(ERROR,
						(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						 errmsg("tenant row level security needs a child table and the tables it reaches its tenant through to have one owner"),
						 errdetail("Table %s is owned by role \"%s\", table %s by role \"%s\".",
								   cm_qualified_relname(pt->relid), GetUserNameFromId(owner, false),
								   cm_qualified_relname(pt->hops[h].parent), GetUserNameFromId(powner, false)),
						 errhint("clinic_migrate reads a child row's parents as the child's owner; "
								 "give them one owner with ALTER TABLE ... OWNER TO.")));
		}
	}
}

/* tables with the tenant column that stay open: partitioned, excluded */
static void
warn_uncovered(TenantPlan *plan)
{
	StringInfoData names;

	initStringInfo(&names);
	for (int i = 0; i < plan->ntables; i++)
	{
		PlanTable  *pt = &plan->tables[i];

		if ((pt->kind == PLAN_UNSUPPORTED || pt->kind == PLAN_EXCLUDED) &&
			get_attnum(pt->relid, plan->tenant_column) != InvalidAttrNumber)
			appendStringInfo(&names, "%s%s (%s)", names.len ? ", " : "",
							 cm_qualified_relname(pt->relid), plan_kind_name(pt->kind));
	}
	if (names.len)
		ereport(WARNING,
				(errmsg("tables with the tenant column that get no tenant policy: %s", names.data),
				 errdetail("Every role reads all of their rows."),
				 errhint("Excluded tables are kept out by exclude_table(); a partitioned table without a key of its own is not planned.")));
}

static List *
covered_tables(TenantPlan *plan)
{
	List	   *tables = NIL;

	for (int i = 0; i < plan->ntables; i++)
	{
		PlanTable  *pt = &plan->tables[i];

		if (pt->kind == PLAN_TENANT || pt->kind == PLAN_CHILD)
			tables = lappend(tables, pt);
	}
	if (tables == NIL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("no table of schema \"%s\" holds tenant rows", plan->source_schema),
				 errhint("Check clinic_migrate.plan() and the settings source_schema and tenant_column.")));
	return tables;
}

static void
record(Oid relid, const char *mode, List *roles, bool rls_before, bool force_before)
{
	Oid			types[6] = {OIDOID, TEXTOID, OIDARRAYOID, BOOLOID, BOOLOID, NAMEOID};
	Datum		values[6];
	Datum	   *oids = palloc(sizeof(Datum) * list_length(roles));
	ListCell   *lc;

	foreach(lc, roles)
		oids[foreach_current_index(lc)] = ObjectIdGetDatum(lfirst_oid(lc));
	values[0] = ObjectIdGetDatum(relid);
	values[1] = CStringGetTextDatum(mode);
	values[2] = PointerGetDatum(construct_array(oids, list_length(roles), OIDOID,
												sizeof(Oid), true, TYPALIGN_INT));
	values[3] = BoolGetDatum(rls_before);
	values[4] = BoolGetDatum(force_before);
	values[5] = CStringGetDatum(cm_source_schema);
	cm_state_exec("INSERT INTO clinic_migrate.tenant_rls AS r "
				  "(table_name, source_schema, mode, roles, rls_before, force_before, since, enabled_by) "
				  "VALUES ($1::pg_catalog.regclass, $6, $2, $3::pg_catalog.regrole[], $4, $5, "
				  "        pg_catalog.clock_timestamp(), pg_catalog.session_user()) "
				  "ON CONFLICT (table_name) DO UPDATE SET source_schema = EXCLUDED.source_schema, mode = EXCLUDED.mode, roles = EXCLUDED.roles, "
				  "  since = CASE WHEN r.mode OPERATOR(pg_catalog.=) EXCLUDED.mode THEN r.since "
				  "               ELSE EXCLUDED.since END, enabled_by = EXCLUDED.enabled_by",
				  6, types, values, NULL, 0);
}

static void
unrecord(Oid relid)
{
	Oid			t = OIDOID;
	Datum		v = ObjectIdGetDatum(relid);

	cm_state_exec("DELETE FROM clinic_migrate.tenant_rls "
				  "WHERE table_name OPERATOR(pg_catalog.=) $1::pg_catalog.regclass",
				  1, &t, &v, NULL, 0);
}

/*
 * Is one of the roles the owner, or a member with its rights?  PostgreSQL
 * treats such a role as the owner, whom policies hold only with FORCE.
 */
static bool
holds_owner(List *roles, Oid owner)
{
	ListCell   *lc;

	foreach(lc, roles)
		if (has_privs_of_role(lfirst_oid(lc), owner))
			return true;
	return false;
}

static void
cover(Oid relid, const char *expr, RlsRecord *rec, List *roles, const char *mode, bool enforce)
{
	bool		rls;
	bool		force;
	bool		rls_before;
	bool		force_before;
	bool		want_force;
	char	   *qrel = cm_qualified_relname(relid);

	rel_flags(relid, &rls, &force);
	rls_before = rec ? rec->rls_before : rls;
	force_before = rec ? rec->force_before : force;
	want_force = force_before || holds_owner(roles, cm_rel_owner(relid));

	if (rec == NULL && (has_policy(relid, CM_RLS_POLICY) || has_policy(relid, CM_RLS_OPEN_POLICY)))
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("table %s already has a policy named \"%s\" or \"%s\"",
						qrel, CM_RLS_POLICY, CM_RLS_OPEN_POLICY),
				 errdetail("clinic_migrate did not create it, and uses those names for its own."),
				 errhint("Rename that policy with ALTER POLICY ... RENAME TO.")));
	if (has_policy(relid, CM_RLS_POLICY))
		ddl("DROP POLICY " CM_RLS_POLICY " ON %s%s", relid, NULL);
	if (!rls)
		ddl("ALTER TABLE %s ENABLE ROW LEVEL SECURITY%s", relid, NULL);
	if (force != want_force)
		ddl("ALTER TABLE %s %sFORCE ROW LEVEL SECURITY", relid, want_force ? "" : "NO ");
	if (!rls_before && !has_policy(relid, CM_RLS_OPEN_POLICY))
		ddl("CREATE POLICY " CM_RLS_OPEN_POLICY " ON %s AS PERMISSIVE FOR ALL TO PUBLIC "
			"USING (true) WITH CHECK (true)%s", relid, NULL);
	exec_ddl(psprintf("CREATE POLICY " CM_RLS_POLICY " ON %s AS RESTRICTIVE FOR ALL TO %s "
					  "USING (%s) WITH CHECK (%s)", qrel, role_list(roles), expr, expr));
	exec_ddl(psprintf("COMMENT ON POLICY " CM_RLS_POLICY " ON %s IS %s", qrel,
					  quote_literal_cstr(enforce ?
										 "clinic_migrate: a row only for the session's tenant (app.current_tenant)" :
										 "clinic_migrate, permissive: rows of other tenants are counted by tenant_rls_report(), not hidden")));
	record(relid, mode, roles, rls_before, force_before);
}

/*
 * A tenant's own table (its schema's copy of a shared table): every row is
 * the tenant's, so the policy compares the session's tenant with it.
 */
static char *
tenant_table_expr(PlanTable *root, Oid relid, const char *tenant, bool enforce)
{
	StringInfoData buf;
	char	   *type = format_type_be_qualified(root->tenant_type);

	initStringInfo(&buf);
	if (!enforce)
		appendStringInfoChar(&buf, '(');
	/* a subquery: an InitPlan, the setting read once per query, not per row */
	appendStringInfoString(&buf, "(SELECT ");
	cm_append_eq(&buf, psprintf("clinic_migrate.current_tenant(NULL::%s)", type),
				 root->tenant_type, psprintf("%s::%s", quote_literal_cstr(tenant), type), root->tenant_type);
	appendStringInfoChar(&buf, ')');
	if (!enforce)
		appendStringInfo(&buf, " OR clinic_migrate.tenant_rls_audit(%s::pg_catalog.regclass))",
						 quote_literal_cstr(cm_qualified_relname(relid)));
	return buf.data;
}

/* a table of a tenant's schema, and the shared table it copies */
typedef struct TenantTable
{
	char	   *tenant;
	Oid			source;
	Oid			target;
} TenantTable;

/* the existing tables of the tenants' schemas (of one tenant, if not NULL) */
static List *
tenant_tables(TenantPlan *plan, const char *tenant)
{
	List	   *out = NIL;
	Oid			t = TEXTOID;
	Datum		v = tenant ? CStringGetTextDatum(tenant) : (Datum) 0;

	cm_state_exec("SELECT tt.tenant_id, tt.source_table::pg_catalog.oid, tt.target_table::pg_catalog.oid "
				  "FROM clinic_migrate.tenant_tables tt "
				  "WHERE ($1::pg_catalog.text IS NULL OR tt.tenant_id OPERATOR(pg_catalog.=) $1) "
				  "  AND EXISTS (SELECT FROM pg_catalog.pg_class c "
				  "              WHERE c.oid OPERATOR(pg_catalog.=) tt.target_table::pg_catalog.oid) "
				  "ORDER BY tt.tenant_id, tt.position",
				  1, &t, &v, tenant ? NULL : "n", 0);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		TenantTable *tt = palloc0(sizeof(TenantTable));
		bool		isnull;
		PlanTable  *pt;

		tt->tenant = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
		tt->source = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull));
		tt->target = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 3, &isnull));
		pt = plan_find(plan, tt->source);
		if (pt == NULL || (pt->kind != PLAN_TENANT && pt->kind != PLAN_CHILD))
			continue;			/* its shared table is no longer planned */
		out = lappend(out, tt);
	}
	return out;
}

static void
cover_tenant_table(TenantPlan *plan, TenantTable *tt, List *recs, List *roles, const char *mode,
				   bool enforce)
{
	RlsRecord  *rec = find_record(recs, tt->target);
	PlanTable  *root = plan_root(plan, plan_find(plan, tt->source));

	if (rec)
		rec->covered = true;
	cover(tt->target, tenant_table_expr(root, tt->target, tt->tenant, enforce), rec, roles, mode, enforce);
}

static List *
lock_list(List *tables, List *ttables, List *recs)
{
	List	   *relids = NIL;
	ListCell   *lc;

	foreach(lc, tables)
	{
		relids = list_append_unique_oid(relids, ((PlanTable *) lfirst(lc))->relid);
		relids = list_concat_unique_oid(relids, cm_partitions_of(((PlanTable *) lfirst(lc))->relid));
	}
	foreach(lc, ttables)
		relids = list_append_unique_oid(relids, ((TenantTable *) lfirst(lc))->target);
	foreach(lc, recs)
	{
		RlsRecord  *r = lfirst(lc);

		if (SearchSysCacheExists1(RELOID, ObjectIdGetDatum(r->relid)))
			relids = list_append_unique_oid(relids, r->relid);
	}
	return relids;
}

int
cm_rls_enable(List *roles, const char *mode)
{
	bool		enforce;
	CmSettings	s;
	TenantPlan *plan;
	List	   *tables;
	List	   *ttables;
	List	   *recs;
	ListCell   *lc;
	int			nest;

	if (strcmp(mode, "enforce") == 0)
		enforce = true;
	else if (strcmp(mode, "permissive") == 0)
		enforce = false;
	else
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown row level security mode \"%s\"", mode),
				 errhint("Use 'permissive' (every row still visible, hidden ones counted) or 'enforce'.")));
	cm_current_settings(&s);
	plan = plan_build(&s, CurrentMemoryContext);
	tables = covered_tables(plan);
	check_chain_owners(tables);
	warn_uncovered(plan);
	recs = read_records(plan->source_schema);
	ttables = tenant_tables(plan, NULL);

	/* every table at once, or none: then the DDL below never waits */
	cm_lock_relations(lock_list(tables, ttables, recs), AccessExclusiveLock, false);

	nest = cm_pin_search_path();
	foreach(lc, tables)
	{
		PlanTable  *pt = lfirst(lc);
		RlsRecord  *rec = find_record(recs, pt->relid);

		if (rec)
			rec->covered = true;
		cover(pt->relid, policy_expr(plan, pt, enforce, pt->relname), rec, roles, mode, enforce);

		/*
		 * A query may name a partition itself, which the partitioned
		 * table's policies do not cover: each partition gets its own (its
		 * name in the expression where the table's was).
		 */
		{
			ListCell   *pl;

			foreach(pl, cm_partitions_of(pt->relid))
			{
				Oid			part = lfirst_oid(pl);
				RlsRecord  *prec = find_record(recs, part);

				if (get_rel_relkind(part) == RELKIND_FOREIGN_TABLE)
					continue;
				if (prec)
					prec->covered = true;
				cover(part, policy_expr(plan, pt, enforce, get_rel_name(part)), prec, roles, mode, enforce);
			}
		}
	}
	/* the tenants' schemas: the copies of those tables */
	foreach(lc, ttables)
		cover_tenant_table(plan, lfirst(lc), recs, roles, mode, enforce);
	foreach(lc, recs)
	{
		RlsRecord  *r = lfirst(lc);

		if (r->covered)
			continue;
		uncover(r);
		unrecord(r->relid);
	}
	AtEOXact_GUC(true, nest);
	audit_reset();
	return list_length(tables) + list_length(ttables);
}

void
cm_rls_cover_new_partition(Oid part)
{
	List	   *up = get_rel_relispartition(part) ? get_partition_ancestors(part) : NIL;
	Oid			root;
	Oid			type = OIDOID;
	Datum		value;
	char	   *mode;
	List	   *roles = NIL;
	List	   *recs;
	CmSettings	s;
	TenantPlan *plan;
	PlanTable  *pt;
	bool		enforce;
	List	   *parts;
	ListCell   *lc;
	int			nest;

	if (up == NIL)
		return;
	root = llast_oid(up);
	value = ObjectIdGetDatum(root);
	cm_state_exec("SELECT r.mode, r.roles::pg_catalog.oid[] FROM clinic_migrate.tenant_rls r "
				  "WHERE r.table_name OPERATOR(pg_catalog.=) $1",
				  1, &type, &value, NULL, 0);
	if (SPI_processed != 1)
		return;
	mode = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	{
		bool		isnull;
		Datum	   *elems;
		int			n;

		deconstruct_array(DatumGetArrayTypeP(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull)),
						  OIDOID, sizeof(Oid), true, TYPALIGN_INT, &elems, NULL, &n);
		for (int i = 0; i < n; i++)
			roles = lappend_oid(roles, DatumGetObjectId(elems[i]));
	}
	enforce = strcmp(mode, "enforce") == 0;
	cm_current_settings(&s);
	strlcpy(s.source_schema, get_namespace_name(get_rel_namespace(root)), NAMEDATALEN);
	plan = plan_build(&s, CurrentMemoryContext);
	pt = plan_find(plan, root);
	if (pt == NULL || (pt->kind != PLAN_TENANT && pt->kind != PLAN_CHILD))
		return;
	recs = read_records(s.source_schema);
	parts = lcons_oid(part, cm_partitions_of(part));
	cm_lock_relations(parts, AccessExclusiveLock, false);
	nest = cm_pin_search_path();
	foreach(lc, parts)
	{
		Oid			p = lfirst_oid(lc);

		if (get_rel_relkind(p) == RELKIND_FOREIGN_TABLE)
			continue;
		cover(p, policy_expr(plan, pt, enforce, get_rel_name(p)), find_record(recs, p), roles, mode, enforce);
	}
	AtEOXact_GUC(true, nest);
	/* the audit counters stay: the mode and the tables counted are the same */
}

int
cm_rls_disable(void)
{
	List	   *recs = read_records(cm_source_schema);
	ListCell   *lc;
	int			nest;

	if (recs == NIL)
		return 0;
	cm_lock_relations(lock_list(NIL, NIL, recs), AccessExclusiveLock, false);
	nest = cm_pin_search_path();
	foreach(lc, recs)
	{
		RlsRecord  *r = lfirst(lc);

		uncover(r);
		unrecord(r->relid);
	}
	AtEOXact_GUC(true, nest);
	audit_reset();
	return list_length(recs);
}

void
cm_rls_cover_tenant(TenantPlan *plan, const char *tenant)
{
	List	   *recs;
	List	   *ttables;
	List	   *roles = NIL;
	List	   *relids = NIL;
	char	   *mode;
	bool		isnull;
	ListCell   *lc;
	int			nest;
	Oid			nsp = get_namespace_oid("clinic_migrate", true);

	/* the library may be newer than the extension's SQL (before ALTER EXTENSION UPDATE) */
	if (!OidIsValid(nsp) || !OidIsValid(get_relname_relid("tenant_rls", nsp)))
		return;
	{
		Oid			t = NAMEOID;
		Datum		v = CStringGetDatum(plan->source_schema);

		cm_state_exec("SELECT r.mode, r.roles::pg_catalog.oid[] FROM clinic_migrate.tenant_rls r "
					  "WHERE r.source_schema OPERATOR(pg_catalog.=) $1 "
					  "ORDER BY r.since DESC LIMIT 1", 1, &t, &v, NULL, 0);
	}
	if (SPI_processed == 0)
		return;					/* no tenant policies */
	mode = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	{
		ArrayType  *arr = DatumGetArrayTypeP(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
		Datum	   *elems;
		int			n;

		deconstruct_array(arr, OIDOID, sizeof(Oid), true, TYPALIGN_INT, &elems, NULL, &n);
		for (int i = 0; i < n; i++)
			roles = lappend_oid(roles, DatumGetObjectId(elems[i]));
	}
	recs = read_records(plan->source_schema);
	ttables = tenant_tables(plan, tenant);
	foreach(lc, ttables)
	{
		TenantTable *tt = lfirst(lc);

		/* only where the shared table carries them */
		if (find_record(recs, tt->source) != NULL)
			relids = lappend_oid(relids, tt->target);
	}
	if (relids == NIL)
		return;
	cm_lock_relations(relids, AccessExclusiveLock, true);
	nest = cm_pin_search_path();
	foreach(lc, ttables)
	{
		TenantTable *tt = lfirst(lc);

		if (find_record(recs, tt->source) != NULL)
			cover_tenant_table(plan, tt, recs, roles, mode, strcmp(mode, "enforce") == 0);
	}
	AtEOXact_GUC(true, nest);
}
