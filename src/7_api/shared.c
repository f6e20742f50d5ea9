/*-------------------------------------------------------------------------
 * shared.c
 *	  The tenants that stay in the shared tables: their row level security
 *	  (enable_tenant_rls, disable_tenant_rls, tenant_rls_report), and which
 *	  tenants to move next (tenant_estimates, behind the candidates view).
 *	  Floor 7 (the SQL surface).  May call: floors 1 to 6.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_class.h"
#include "catalog/pg_statistic.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"

#include "settings.h"
#include "util.h"
#include "state.h"
#include "plan.h"
#include "policies.h"

/* the roles argument: existing roles, at least one, none twice */
static List *
roles_arg(FunctionCallInfo fcinfo)
{
	ArrayType  *arr;
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	List	   *roles = NIL;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("roles must not be null"),
				 errhint("Name the application's roles, for example ARRAY['app_rw'].")));
	arr = PG_GETARG_ARRAYTYPE_P(0);
	deconstruct_array(arr, NAMEOID, NAMEDATALEN, false, TYPALIGN_CHAR, &elems, &nulls, &n);
	for (int i = 0; i < n; i++)
	{
		Oid			role;
		HeapTuple	tup;

		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("roles must not contain null")));
		role = get_role_oid(NameStr(*DatumGetName(elems[i])), false);
		tup = SearchSysCache1(AUTHOID, ObjectIdGetDatum(role));
		if (HeapTupleIsValid(tup))
		{
			Form_pg_authid a = (Form_pg_authid) GETSTRUCT(tup);

			if (a->rolsuper || a->rolbypassrls)
				ereport(WARNING,
						(errmsg("role \"%s\" bypasses row level security: the tenant policies do not hold it",
								NameStr(a->rolname)),
						 errhint("Application roles should be neither SUPERUSER nor BYPASSRLS.")));
			ReleaseSysCache(tup);
		}
		roles = list_append_unique_oid(roles, role);
	}
	if (roles == NIL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("roles must name at least one role"),
				 errhint("Name the application's roles, for example ARRAY['app_rw'].")));
	return roles;
}

/*
 * clinic_migrate.enable_tenant_rls(roles, mode): the tenant policies on
 * every planned shared table; the number of tables.
 */
PG_FUNCTION_INFO_V1(cm_enable_tenant_rls);
Datum
cm_enable_tenant_rls(PG_FUNCTION_ARGS)
{
	List	   *roles;
	char	   *mode;
	int			n;

	cm_refuse_in_restricted_operation();
	roles = roles_arg(fcinfo);
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("mode must not be null"),
				 errhint("Use 'permissive' or 'enforce'.")));
	mode = text_to_cstring(PG_GETARG_TEXT_PP(1));
	SPI_connect();
	n = cm_rls_enable(roles, mode);
	SPI_finish();
	PG_RETURN_INT32(n);
}

/* clinic_migrate.disable_tenant_rls(): every table as it was; the number of tables */
PG_FUNCTION_INFO_V1(cm_disable_tenant_rls);
Datum
cm_disable_tenant_rls(PG_FUNCTION_ARGS)
{
	int			n;

	cm_refuse_in_restricted_operation();
	SPI_connect();
	n = cm_rls_disable();
	SPI_finish();
	PG_RETURN_INT32(n);
}

/*
 * clinic_migrate.tenant_rls_report(): per role and table, the rows that the
 * enforcing policy would have hidden since the mode was last set (or the
 * server started): of another tenant, and with no tenant set.
 */
PG_FUNCTION_INFO_V1(cm_tenant_rls_report);
Datum
cm_tenant_rls_report(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	CmRlsAuditRow *rows;
	int			n;
	int64		overflow;

	InitMaterializedSRF(fcinfo, 0);
	if (!cm_rls_audit_rows(&rows, &n, &overflow))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the row level security audit needs clinic_migrate in shared_preload_libraries"),
				 errhint("Add clinic_migrate to shared_preload_libraries and restart the server.")));
	if (overflow > 0)
		ereport(WARNING,
				(errmsg("%lld rows were not counted: the audit has room for 1024 roles and tables",
						(long long) overflow),
				 errhint("Set the mode again with enable_tenant_rls() to start the counts afresh.")));
	for (int i = 0; i < n; i++)
	{
		Datum		values[5];
		bool		nulls[5] = {false, false, false, false, false};
		char	   *role = GetUserNameFromId(rows[i].role, true);

		if (role == NULL || !SearchSysCacheExists1(RELOID, ObjectIdGetDatum(rows[i].relid)))
			continue;			/* dropped since */
		values[0] = DirectFunctionCall1(namein, CStringGetDatum(role));
		values[1] = ObjectIdGetDatum(rows[i].relid);
		values[2] = Int64GetDatum(rows[i].other_tenant);
		values[3] = Int64GetDatum(rows[i].no_tenant);
		values[4] = TimestampTzGetDatum(rows[i].last);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/* ---------------------------------------------------------------------
 * Which tenants to move: estimates from the statistics
 * ---------------------------------------------------------------------
 */
typedef struct Estimates
{
	int			n;
	int			cap;
	Datum	   *tab;
	Datum	   *tenant;
	bool	   *tenant_null;
	Datum	   *nrows;
	Datum	   *bpr;
	List	   *unanalyzed;		/* names of tables never analyzed */
} Estimates;

static void
est_add(Estimates *e, Oid tab, const char *tenant, double rows, double bpr)
{
	if (e->n == e->cap)
	{
		e->cap = e->cap ? e->cap * 2 : 64;
		e->tab = e->tab ? repalloc(e->tab, sizeof(Datum) * e->cap) : palloc(sizeof(Datum) * e->cap);
		e->tenant = e->tenant ? repalloc(e->tenant, sizeof(Datum) * e->cap) : palloc(sizeof(Datum) * e->cap);
		e->tenant_null = e->tenant_null ? repalloc(e->tenant_null, sizeof(bool) * e->cap) : palloc(sizeof(bool) * e->cap);
		e->nrows = e->nrows ? repalloc(e->nrows, sizeof(Datum) * e->cap) : palloc(sizeof(Datum) * e->cap);
		e->bpr = e->bpr ? repalloc(e->bpr, sizeof(Datum) * e->cap) : palloc(sizeof(Datum) * e->cap);
	}
	e->tab[e->n] = ObjectIdGetDatum(tab);
	e->tenant_null[e->n] = (tenant == NULL);
	e->tenant[e->n] = tenant ? CStringGetTextDatum(tenant) : (Datum) 0;
	e->nrows[e->n] = Float8GetDatum(rows);
	e->bpr[e->n] = Float8GetDatum(bpr);
	e->n++;
}

static double
rel_tuples(Oid relid)
{
	HeapTuple	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	double		t;

	if (!HeapTupleIsValid(tup))
		return -1;
	t = ((Form_pg_class) GETSTRUCT(tup))->reltuples;
	ReleaseSysCache(tup);
	return t;
}

static ArrayType *
est_array(Datum *values, bool *nulls, int n, Oid type)
{
	int			dims[1] = {n};
	int			lbs[1] = {1};
	int16		len;
	bool		byval;
	char		align;

	get_typlenbyvalalign(type, &len, &byval, &align);
	return construct_md_array(values, nulls, 1, dims, lbs, type, len, byval, align);
}

static void
need_column_select(Oid relid, AttrNumber att)
{
	if (pg_attribute_aclcheck(relid, att, GetUserId(), ACL_SELECT) != ACLCHECK_OK &&
		pg_class_aclcheck(relid, GetUserId(), ACL_SELECT) != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for column %s of table %s",
						quote_identifier(plan_attname(relid, att)), cm_qualified_relname(relid)),
				 errdetail("The estimates show the values of the tenant column."),
				 errhint("GRANT SELECT (%s) ON %s TO %s;", quote_identifier(plan_attname(relid, att)),
						 cm_qualified_relname(relid), quote_identifier(GetUserNameFromId(GetUserId(), false)))));
}

/*
 * The registry's tenants, read as the caller (who must be allowed to), each
 * written by its type's output function: no cast a user defined runs.
 */
static Datum
registry_tenants(PlanTable *reg)
{
	StringInfoData sql;
	Datum	   *ids;
	uint64		n;
	int			nest;
	const char *col;

	if (reg == NULL || reg->tenant_att == InvalidAttrNumber)
		return PointerGetDatum(construct_empty_array(TEXTOID));
	need_column_select(reg->relid, reg->tenant_att);
	col = quote_identifier(plan_attname(reg->relid, reg->tenant_att));
	initStringInfo(&sql);
	appendStringInfo(&sql, "SELECT r.%s FROM %s r WHERE r.%s IS NOT NULL", col,
					 cm_qualified_relname(reg->relid), col);
	nest = cm_pin_search_path();
	if (SPI_execute(sql.data, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "clinic_migrate: registry query failed");
	AtEOXact_GUC(true, nest);
	n = SPI_processed;
	ids = palloc(sizeof(Datum) * Max(n, 1));
	for (uint64 i = 0; i < n; i++)
		ids[i] = CStringGetTextDatum(SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1));
	return PointerGetDatum(est_array(ids, NULL, (int) n, TEXTOID));
}

/*
 * One table's estimates: for each tenant among the most common values of
 * its root's tenant column, freq x rows (child tables: the root's
 * frequency x the child's rows, as if each tenant had the same share of
 * both); for the others (tenant NULL), what is left spread evenly over the
 * distinct values not listed.  Bytes per row: the table's total size
 * (heap, TOAST, indexes) over its rows.
 */
static void
estimate_table(Estimates *e, TenantPlan *plan, PlanTable *pt)
{
	PlanTable  *root = plan_root(plan, pt);
	double		rows = rel_tuples(pt->relid);
	double		root_rows = rel_tuples(root->relid);
	double		bpr;
	double		listed = 0;
	double		nullfrac = 0;
	double		ndistinct = 0;
	int			nmcv = 0;
	HeapTuple	stat;

	/* the statistics show the column's values: as pg_stats, only to who may read it */
	need_column_select(root->relid, root->tenant_att);
	if (rows < 0 || root_rows < 0)
	{
		e->unanalyzed = lappend(e->unanalyzed, cm_qualified_relname(rows < 0 ? pt->relid : root->relid));
		return;
	}
	bpr = rows > 0 ? (double) DatumGetInt64(DirectFunctionCall1(pg_total_relation_size,
																ObjectIdGetDatum(pt->relid))) / rows : 0;
	stat = SearchSysCache3(STATRELATTINH, ObjectIdGetDatum(root->relid),
						   Int16GetDatum(root->tenant_att), BoolGetDatum(false));
	if (HeapTupleIsValid(stat))
	{
		Form_pg_statistic st = (Form_pg_statistic) GETSTRUCT(stat);
		AttStatsSlot sslot;

		nullfrac = st->stanullfrac;
		ndistinct = st->stadistinct < 0 ? -st->stadistinct * root_rows : st->stadistinct;
		if (get_attstatsslot(&sslot, stat, STATISTIC_KIND_MCV, InvalidOid,
							 ATTSTATSSLOT_VALUES | ATTSTATSSLOT_NUMBERS))
		{
			Oid			out;
			bool		varlena;

			getTypeOutputInfo(sslot.valuetype, &out, &varlena);
			nmcv = sslot.nvalues;
			for (int i = 0; i < sslot.nvalues && i < sslot.nnumbers; i++)
			{
				listed += sslot.numbers[i];
				est_add(e, pt->relid, OidOutputFunctionCall(out, sslot.values[i]),
						sslot.numbers[i] * rows, bpr);
			}
			free_attstatsslot(&sslot);
		}
		ReleaseSysCache(stat);
	}
	else if (root_rows > 0)
		e->unanalyzed = lappend(e->unanalyzed, cm_qualified_relname(root->relid));
	if (ndistinct - nmcv >= 1)
		est_add(e, pt->relid, NULL, Max(0.0, 1.0 - nullfrac - listed) * rows / (ndistinct - nmcv), bpr);
	else
		est_add(e, pt->relid, NULL, 0, bpr);
}

/*
 * clinic_migrate.tenant_estimates(): every tenant known (the registry's,
 * clinic_migrate's, and those the statistics list), with its state and an
 * estimate of its rows and bytes in the planned tables, from the
 * statistics of the last ANALYZE: nothing of the tables themselves is
 * read, so the cost does not grow with their size.
 */
PG_FUNCTION_INFO_V1(cm_tenant_estimates);
Datum
cm_tenant_estimates(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	CmSettings	s;
	TenantPlan *plan;
	PlanTable  *reg;
	Estimates	e;
	StringInfoData sql;
	Oid			types[5] = {OIDARRAYOID, TEXTARRAYOID, FLOAT8ARRAYOID, FLOAT8ARRAYOID, TEXTARRAYOID};
	Datum		values[5];
	SPITupleTable *tt;
	uint64		n;

	InitMaterializedSRF(fcinfo, 0);
	SPI_connect();
	cm_current_settings(&s);
	plan = plan_build(&s, CurrentMemoryContext);
	memset(&e, 0, sizeof(e));
	for (int i = 0; i < plan->ntables; i++)
		if (plan->tables[i].kind == PLAN_TENANT || plan->tables[i].kind == PLAN_CHILD)
			estimate_table(&e, plan, &plan->tables[i]);
	if (e.unanalyzed != NIL)
	{
		StringInfoData names;
		ListCell   *lc;

		initStringInfo(&names);
		foreach(lc, e.unanalyzed)
			appendStringInfo(&names, "%s%s", foreach_current_index(lc) ? ", " : "", (char *) lfirst(lc));
		ereport(NOTICE,
				(errmsg("tables without statistics count as empty in the estimates: %s", names.data),
				 errhint("Run ANALYZE on them.")));
	}
	values[0] = PointerGetDatum(est_array(e.tab, NULL, e.n, OIDOID));
	values[1] = PointerGetDatum(est_array(e.tenant, e.tenant_null, e.n, TEXTOID));
	values[2] = PointerGetDatum(est_array(e.nrows, NULL, e.n, FLOAT8OID));
	values[3] = PointerGetDatum(est_array(e.bpr, NULL, e.n, FLOAT8OID));
	reg = OidIsValid(plan->registry) ? plan_find(plan, plan->registry) : NULL;
	values[4] = registry_tenants(reg);

	initStringInfo(&sql);
	appendStringInfoString(&sql,
						   "WITH s AS (SELECT * FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), "
						   "  pg_catalog.unnest($3), pg_catalog.unnest($4)) AS s(tab, tenant, nrows, bpr)), "
						   "base AS (SELECT coalesce(sum(o.nrows), 0) AS r, coalesce(sum(o.nrows * o.bpr), 0) AS b "
						   "         FROM s o WHERE o.tenant IS NULL), "
						   "spec AS (SELECT x.tenant, sum(x.nrows - o.nrows) AS dr, sum((x.nrows - o.nrows) * x.bpr) AS db "
						   "         FROM s x JOIN s o ON o.tab = x.tab AND o.tenant IS NULL "
						   "         WHERE x.tenant IS NOT NULL GROUP BY x.tenant), "
						   "known AS (SELECT spec.tenant FROM spec "
						   "          UNION SELECT t.tenant_id FROM clinic_migrate.tenants t "
						   "          UNION SELECT pg_catalog.unnest($5)) "
						   "SELECT k.tenant, coalesce(t.state, 'shared'), "
						   "  pg_catalog.round(base.r + coalesce(spec.dr, 0))::bigint, "
						   "  pg_catalog.round(base.b + coalesce(spec.db, 0))::bigint, "
						   "  spec.tenant IS NOT NULL "
						   "FROM known k CROSS JOIN base LEFT JOIN spec ON spec.tenant = k.tenant "
						   "LEFT JOIN clinic_migrate.tenants t ON t.tenant_id = k.tenant "
						   "ORDER BY 3 DESC, 1");
	/* arrays and clinic_migrate's own table only: nothing of a user's runs here */
	cm_state_exec(sql.data, 5, types, values, NULL, 0);
	tt = SPI_tuptable;
	n = SPI_processed;
	for (uint64 i = 0; i < n; i++)
	{
		Datum		out[5];
		bool		nulls[5];

		for (int c = 0; c < 5; c++)
			out[c] = SPI_getbinval(tt->vals[i], tt->tupdesc, c + 1, &nulls[c]);
		out[0] = PointerGetDatum(DatumGetTextPCopy(out[0]));
		out[1] = PointerGetDatum(DatumGetTextPCopy(out[1]));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, out, nulls);
	}
	SPI_finish();
	return (Datum) 0;
}
