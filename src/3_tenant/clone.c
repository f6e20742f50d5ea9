/*-------------------------------------------------------------------------
 * clone.c
 *	  A tenant's schema with a faithful copy of the structure of every
 *	  planned table (create_tenant_schema, and the first step of a copy);
 *	  the tenant's records; the application's registry columns.
 *	  Floor 3 (the tenant's schema).  May call: floors 1 and 2.
 *
 * Columns, types, collations, defaults, NOT NULL, CHECK, generated and
 * identity columns, storage, compression, comments and extended statistics
 * come from CREATE TABLE ... (LIKE ...).  What LIKE leaves out is added
 * from the catalogs: a sequence of its own for each serial column (LIKE
 * would share the shared table's), owner, grants, reloptions, row level
 * security and policies, replica identity, and foreign keys, re-pointed to
 * the tenant's copies or kept on shared reference tables.  Indexes and key
 * constraints are cloned as parse trees with generateClonedIndexStmt, the
 * function LIKE ... INCLUDING INDEXES uses, so no DDL text is rewritten.
 *
 * Every statement is built from catalog OIDs with quoted identifiers and
 * runs with search_path = pg_catalog, so that deparsed expressions come
 * out fully qualified.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/attmap.h"
#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/transam.h"
#include "access/xact.h"
#include "catalog/index.h"
#include "catalog/namespace.h"
#include "commands/dbcommands.h"
#include "catalog/pg_class.h"
#include "catalog/partition.h"
#include "catalog/pg_constraint.h"
#include "catalog/pg_index.h"
#include "catalog/pg_trigger.h"
#include "commands/trigger.h"
#include "utils/fmgroids.h"
#include "catalog/pg_type.h"
#include "catalog/pg_sequence.h"
#include "catalog/dependency.h"
#include "catalog/pg_depend.h"
#include "catalog/pg_extension.h"
#include "catalog/indexing.h"
#include "commands/extension.h"
#include "commands/sequence.h"
#include "parser/parse_func.h"
#include "parser/parse_oper.h"
#include "utils/datum.h"
#include "executor/executor.h"
#include "optimizer/optimizer.h"
#include "parser/parse_coerce.h"
#include "utils/syscache.h"
#include "commands/comment.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "parser/parse_utilcmd.h"
#include "tcop/utility.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/syscache.h"

#include "settings.h"
#include "util.h"
#include "locks.h"
#include "runstate.h"
#include "clone.h"
#include "plan.h"
#include "state.h"

/* run a DDL statement built here */
static void
exec_ddl(const char *sql)
{
	MemoryContext cxt = CurrentMemoryContext;
	int			ret = 0;

	PG_TRY();
	{
		ret = SPI_execute(sql, false, 0);
	}
	PG_CATCH();
	{
		/* the user's error (a permission, a CHECK), without our statement's text */
		cm_rethrow_without_internal_sql(cxt);
	}
	PG_END_TRY();
	if (ret < 0)
		elog(ERROR, "clinic_migrate: SPI error %d", ret);
}

/* query_text with a snapshot taken for it (sees this command's catalog changes) */
static char *
query_text_rw(const char *sql, int nargs, Oid *types, Datum *values, bool read_only)
{
	int			ret = SPI_execute_with_args(sql, nargs, types, values, NULL, read_only, 1);

	if (ret != SPI_OK_SELECT)
		elog(ERROR, "clinic_migrate: catalog query failed");
	if (SPI_processed == 0)
		return NULL;
	return SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
}

/* first column of the first row as text, or NULL */
static char *
query_text(const char *sql, int nargs, Oid *types, Datum *values)
{
	int			ret = SPI_execute_with_args(sql, nargs, types, values, NULL, true, 1);

	if (ret != SPI_OK_SELECT)
		elog(ERROR, "clinic_migrate: query failed: %s", sql);
	if (SPI_processed == 0)
		return NULL;
	return SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
}

void
clone_tenant_info(const char *tenant, TenantInfo *info)
{
	memset(info, 0, sizeof(*info));
	cm_state_exec_tenant("SELECT schema_name, schema_oid, source_schema, tenant_column, "
						 "state, structure_done FROM clinic_migrate.tenants WHERE tenant_id = $1",
						 tenant);
	if (SPI_processed == 0)
		return;
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;

		info->exists = true;
		strlcpy(info->schema_name, SPI_getvalue(tup, desc, 1), NAMEDATALEN);
		info->schema_oid = DatumGetObjectId(SPI_getbinval(tup, desc, 2, &isnull));
		strlcpy(info->source_schema, SPI_getvalue(tup, desc, 3), NAMEDATALEN);
		strlcpy(info->tenant_column, SPI_getvalue(tup, desc, 4), NAMEDATALEN);
		strlcpy(info->state, SPI_getvalue(tup, desc, 5), sizeof(info->state));
		info->structure_done = DatumGetBool(SPI_getbinval(tup, desc, 6, &isnull));
	}
}

/*
 * A tenant may be copied (again) only before its cutover: once cut over
 * (or finalizing, finalized, rolling back) its rows live in its schema, and
 * a copy would set it back to 'copying', routing its writes to the shared
 * rows again.  The caller checks this, and so does the worker, under the
 * tenant's lock: a queued job may run after a cutover made meanwhile.
 */
void
clone_check_movable(const char *tenant)
{
	TenantInfo	info;

	clone_tenant_info(tenant, &info);
	if (!info.exists)
		return;
	if (strcmp(info.state, "cut_over") == 0 || strcmp(info.state, "finalizing") == 0 ||
		strcmp(info.state, "finalized") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("tenant \"%s\" is already cut over to schema \"%s\"", tenant, info.schema_name),
				 errdetail("Its state is %s.", info.state),
				 errhint("Nothing is left to copy; clinic_migrate.status shows where it is.")));
	if (strcmp(info.state, "rolling_back") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("tenant \"%s\" is being rolled back", tenant),
				 errdetail("Its state is %s.", info.state),
				 errhint("Let the rollback finish (clinic_migrate.rollback_tenant('%s') resumes it), then migrate again.",
						 tenant)));
}

void
clone_settings_for_tenant(const char *tenant, CmSettings *s)
{
	TenantInfo	info;

	clone_tenant_info(tenant, &info);
	if (info.exists)
	{
		strlcpy(s->source_schema, info.source_schema, NAMEDATALEN);
		strlcpy(s->tenant_column, info.tenant_column, NAMEDATALEN);
	}
}

List *
clone_recorded_tables(const char *tenant, MemoryContext mcxt)
{
	List	   *r = NIL;
	MemoryContext old;

	/* (a shared table dropped behind clinic_migrate's back has no copy to speak of) */
	cm_state_exec_tenant("SELECT tt.source_table FROM clinic_migrate.tenant_tables tt WHERE tt.tenant_id = $1 "
						 "AND EXISTS (SELECT FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) tt.source_table) "
						 "ORDER BY tt.source_table", tenant);
	/* (SPI leaves its own memory current, which SPI_finish frees) */
	old = MemoryContextSwitchTo(mcxt);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;

		r = lappend_oid(r, DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull)));
	}
	MemoryContextSwitchTo(old);
	return r;
}

static void plan_keep_recorded(TenantPlan *plan, const char *tenant);

static TenantPlan *plan_for_tenant(char **tenant, CmSettings *s, MemoryContext mcxt, bool recorded_only);

TenantPlan *
clone_plan_for_tenant(char **tenant, CmSettings *s, MemoryContext mcxt)
{
	return plan_for_tenant(tenant, s, mcxt, true);
}

TenantPlan *
clone_catalog_plan_for_tenant(char **tenant, CmSettings *s, MemoryContext mcxt)
{
	return plan_for_tenant(tenant, s, mcxt, false);
}

static TenantPlan *
plan_for_tenant(char **tenant, CmSettings *s, MemoryContext mcxt, bool recorded_only)
{
	TenantPlan *plan;
	char	   *canon;

	clone_settings_for_tenant(*tenant, s);
	plan = plan_build(s, mcxt);
	canon = plan_canonical_tenant(plan, *tenant);
	if (strcmp(canon, *tenant) != 0)
	{
		CmSettings	before = *s;

		clone_settings_for_tenant(canon, s);
		if (strcmp(before.source_schema, s->source_schema) != 0 ||
			strcmp(before.tenant_column, s->tenant_column) != 0)
			plan = plan_build(s, mcxt);
	}
	*tenant = MemoryContextStrdup(mcxt, canon);
	if (recorded_only)
		plan_keep_recorded(plan, *tenant);
	return plan;
}

/*
 * Once a tenant is cut over, its tables are the ones recorded for it: a
 * table the plan would take now but which has no copy (created without a
 * key while the tenant moved) stays shared for it, and rollback and
 * finalize leave it alone.  Before that, the plan is the catalog's, and
 * cutover refuses a table it cannot take.
 */
static void
plan_keep_recorded(TenantPlan *plan, const char *tenant)
{
	TenantInfo	info;
	List	   *recorded = NIL;
	PlanTable  *kept;
	int			n = 0;

	clone_tenant_info(tenant, &info);
	if (!info.exists || (strcmp(info.state, "cut_over") != 0 && strcmp(info.state, "rolling_back") != 0 &&
						 strcmp(info.state, "finalizing") != 0 && strcmp(info.state, "finalized") != 0))
		return;
	recorded = clone_recorded_tables(tenant, CurrentMemoryContext);
	kept = MemoryContextAlloc(GetMemoryChunkContext(plan->tables), sizeof(PlanTable) * plan->ntables);
	for (int pass = 0; pass < 2; pass++)
		for (int i = 0; i < plan->ntables; i++)
		{
			PlanTable  *pt = &plan->tables[i];
			bool		in = i < plan->ncopied && list_member_oid(recorded, pt->relid);

			if (pass == 0 && in)
				kept[n++] = *pt;
			else if (pass == 1 && !in)
			{
				kept[n] = *pt;
				if (i < plan->ncopied)
				{
					kept[n].kind = PLAN_EXCLUDED;
					kept[n].position = 0;
				}
				n++;
			}
		}
	plan->ncopied = 0;
	for (int i = 0; i < n; i++)
		if (kept[i].position > 0)
			plan->ncopied++;
	plan->tables = kept;
}

void
clone_check_tenant_exists(TenantPlan *plan, const char *tenant)
{
	/* the registry first, then every tenant table, one index probe each */
	for (int pass = 0; pass < 2; pass++)
	{
		for (int i = 0; i < plan->ntables; i++)
		{
			PlanTable  *pt = &plan->tables[i];
			StringInfoData sql;
			Oid			type;
			Datum		value;

			if (pt->tenant_att == InvalidAttrNumber)
				continue;
			if (pass == 0 ? pt->kind != PLAN_REGISTRY : pt->kind != PLAN_TENANT)
				continue;
			initStringInfo(&sql);
			appendStringInfo(&sql, "SELECT 1 FROM %s WHERE %s = $1 LIMIT 1",
							 cm_qualified_relname(pt->relid),
							 quote_identifier(plan->tenant_column));
			type = pt->tenant_type;
			value = plan_tenant_datum(pt, tenant);
			if (query_text(sql.data, 1, &type, &value) != NULL)
				return;
		}
	}
	if (!OidIsValid(plan->registry) && cm_registry_table && cm_registry_table[0])
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("tenant \"%s\" not found", tenant),
				 errdetail("No table of schema \"%s\" has rows of it, and there is no registry table \"%s\" in that schema.",
						   plan->source_schema, cm_registry_table),
				 errhint("Check the tenant id, and set clinic_migrate.registry_table to the registry (or to '' if there is none).")));
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_OBJECT),
			 errmsg("tenant \"%s\" not found", tenant),
			 errdetail("No table of schema \"%s\" has rows of it in column %s, and the registry does not list it.",
					   plan->source_schema, quote_identifier(plan->tenant_column)),
			 errhint("Check the tenant id, clinic_migrate.source_schema and clinic_migrate.tenant_column.")));
}

static void
require_privilege(Oid relid, AclMode mode, const char *what)
{
	if (pg_class_aclcheck(relid, GetUserId(), mode) != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for table %s", cm_qualified_relname(relid)),
				 errdetail("Migrating a tenant needs %s privilege on it.", what),
				 errhint("GRANT %s ON %s TO %s;", what, cm_qualified_relname(relid),
						 quote_identifier(GetUserNameFromId(GetUserId(), false)))));
}

/*
 * Everything a migration will need, checked before it starts, so that a
 * missing grant fails at once rather than after the copy: SELECT on the
 * copied tables and the tables their rows are found through, REFERENCES on
 * shared tables their foreign keys keep pointing at, CREATE on the database
 * for a new schema.
 */
void
clone_check_privileges(TenantPlan *plan, const char *tenant)
{
	TenantInfo	info;

	clone_tenant_info(tenant, &info);
	if (!info.exists &&
		pg_database_aclcheck(MyDatabaseId, GetUserId(), ACL_CREATE) != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to create a schema for tenant \"%s\"", tenant),
				 errhint("GRANT CREATE ON DATABASE %s TO %s;",
						 quote_identifier(get_database_name(MyDatabaseId)),
						 quote_identifier(GetUserNameFromId(GetUserId(), false)))));
	for (int i = 0; i < plan->ncopied; i++)
	{
		PlanTable  *pt = &plan->tables[i];
		Oid			types[1] = {OIDOID};
		Datum		values[1] = {ObjectIdGetDatum(pt->relid)};
		int			n;
		Oid		   *refs;

		require_privilege(pt->relid, ACL_SELECT, "SELECT");
		/* the capture triggers go on the shared tables */
		require_privilege(pt->relid, ACL_TRIGGER, "TRIGGER");
		for (int h = 0; h < pt->nhops; h++)
			require_privilege(pt->hops[h].parent, ACL_SELECT, "SELECT");
		if (SPI_execute_with_args("SELECT DISTINCT confrelid FROM pg_constraint "
								  "WHERE conrelid = $1 AND contype = 'f' AND conparentid = 0",
								  1, types, values, NULL, true, 0) != SPI_OK_SELECT)
			elog(ERROR, "clinic_migrate: foreign key lookup failed");
		n = SPI_processed;
		refs = palloc(sizeof(Oid) * Max(n, 1));
		for (int f = 0; f < n; f++)
		{
			bool		isnull;

			refs[f] = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[f],
													 SPI_tuptable->tupdesc, 1, &isnull));
		}
		for (int f = 0; f < n; f++)
		{
			PlanTable  *rpt = plan_find(plan, refs[f]);

			if (rpt == NULL || rpt->position == 0)
				require_privilege(refs[f], ACL_REFERENCES, "REFERENCES");
		}
	}
}

Oid
clone_target_relid(const char *schema, const char *relname)
{
	Oid			nsp = get_namespace_oid(schema, true);

	if (!OidIsValid(nsp))
		return InvalidOid;
	return get_relname_relid(relname, nsp);
}

static const char *
fk_action(char c)
{
	switch (c)
	{
		case FKCONSTR_ACTION_RESTRICT:
			return "RESTRICT";
		case FKCONSTR_ACTION_CASCADE:
			return "CASCADE";
		case FKCONSTR_ACTION_SETNULL:
			return "SET NULL";
		case FKCONSTR_ACTION_SETDEFAULT:
			return "SET DEFAULT";
		default:
			return "NO ACTION";
	}
}

/* the grants of sequence src (but its owner's) on sequence qseq, quoted */
static void
copy_sequence_grants(Oid src, const char *qseq)
{
	Oid			stypes[1] = {OIDOID};
	Datum		svalues[1] = {ObjectIdGetDatum(src)};
	SPITupleTable *gt;
	uint64		ng;
	StringInfoData sql;

	if (SPI_execute_with_args("SELECT a.privilege_type, "
							  "  CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_catalog.quote_ident(r.rolname) END, "
							  "  a.is_grantable "
							  "FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a "
							  "LEFT JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) a.grantee "
							  "WHERE c.oid OPERATOR(pg_catalog.=) $1 AND a.grantee OPERATOR(pg_catalog.<>) c.relowner",
							  1, stypes, svalues, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "clinic_migrate: sequence grant lookup failed");
	gt = SPI_tuptable;
	ng = SPI_processed;
	initStringInfo(&sql);
	for (uint64 g = 0; g < ng; g++)
	{
		resetStringInfo(&sql);
		/* privilege_type is one of a fixed set of keywords */
		appendStringInfo(&sql, "GRANT %s ON SEQUENCE %s TO %s%s",
						 SPI_getvalue(gt->vals[g], gt->tupdesc, 1), qseq,
						 SPI_getvalue(gt->vals[g], gt->tupdesc, 2),
						 strcmp(SPI_getvalue(gt->vals[g], gt->tupdesc, 3), "t") == 0 ? " WITH GRANT OPTION" : "");
		exec_ddl(sql.data);
	}
}

/* Serial columns: a sequence of the tenant's own, and the default on it. */
static void
clone_serial_sequences(Oid src, const char *schema, const char *qtarget)
{
	Oid			types[1] = {OIDOID};
	Datum		values[1] = {ObjectIdGetDatum(src)};
	int			ret;
	int			n;
	SPITupleTable *tt;

	ret = SPI_execute_with_args(
								"SELECT a.attname, c.relname, format_type(s.seqtypid, NULL), "
								"  s.seqincrement, s.seqmin, s.seqmax, s.seqstart, s.seqcache, s.seqcycle, s.seqrelid "
								"FROM pg_depend d "
								"JOIN pg_sequence s ON s.seqrelid = d.objid "
								"JOIN pg_class c ON c.oid = s.seqrelid "
								"JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid "
								"WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass "
								"  AND d.refobjid = $1 AND d.deptype = 'a' "
								"  AND EXISTS (SELECT 1 FROM pg_attrdef ad JOIN pg_depend dd "
								"      ON dd.classid = 'pg_attrdef'::regclass AND dd.objid = ad.oid "
								"     AND dd.refclassid = 'pg_class'::regclass AND dd.refobjid = s.seqrelid "
								"      WHERE ad.adrelid = $1 AND ad.adnum = a.attnum) "
								"ORDER BY a.attnum",
								1, types, values, NULL, true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "clinic_migrate: sequence lookup failed");
	tt = SPI_tuptable;
	n = SPI_processed;
	for (int i = 0; i < n; i++)
	{
		HeapTuple	tup = tt->vals[i];
		char	   *col = SPI_getvalue(tup, tt->tupdesc, 1);
		char	   *seq = quote_qualified_identifier(schema, SPI_getvalue(tup, tt->tupdesc, 2));
		StringInfoData sql;

		initStringInfo(&sql);
		appendStringInfo(&sql,
						 "CREATE SEQUENCE %s AS %s INCREMENT BY %s MINVALUE %s MAXVALUE %s "
						 "START WITH %s CACHE %s %s OWNED BY %s.%s",
						 seq, SPI_getvalue(tup, tt->tupdesc, 3),
						 SPI_getvalue(tup, tt->tupdesc, 4), SPI_getvalue(tup, tt->tupdesc, 5),
						 SPI_getvalue(tup, tt->tupdesc, 6), SPI_getvalue(tup, tt->tupdesc, 7),
						 SPI_getvalue(tup, tt->tupdesc, 8),
						 strcmp(SPI_getvalue(tup, tt->tupdesc, 9), "t") == 0 ? "CYCLE" : "NO CYCLE",
						 qtarget, quote_identifier(col));
		exec_ddl(sql.data);
		resetStringInfo(&sql);
		appendStringInfo(&sql, "ALTER TABLE %s ALTER COLUMN %s SET DEFAULT nextval(%s::pg_catalog.regclass)",
						 qtarget, quote_identifier(col), quote_literal_cstr(seq));
		exec_ddl(sql.data);
		/* whoever may take values of the shared sequence may take the tenant's own (after finalize) */
		{
			bool		isnull;

			copy_sequence_grants(DatumGetObjectId(SPI_getbinval(tup, tt->tupdesc, 10, &isnull)), seq);
		}
	}
}

/* Owner, grants, comment, reloptions, row level security and policies. */
static void
clone_table_properties(Oid src, const char *schema, const char *qtarget)
{
	Oid			types[2] = {OIDOID, BOOLOID};
	Datum		values[2] = {ObjectIdGetDatum(src), BoolGetDatum(false)};
	HeapTuple	ctup;
	Form_pg_class cls;
	Oid			owner;
	bool		rls,
				force_rls;
	bool		ours;
	StringInfoData sql;
	int			ret,
				n;
	SPITupleTable *tt;

	ctup = SearchSysCache1(RELOID, ObjectIdGetDatum(src));
	if (!HeapTupleIsValid(ctup))
		elog(ERROR, "cache lookup failed for relation %u", src);
	cls = (Form_pg_class) GETSTRUCT(ctup);
	owner = cls->relowner;
	rls = cls->relrowsecurity;
	force_rls = cls->relforcerowsecurity;
	ReleaseSysCache(ctup);
	/* the table's own flags and policies, not those of enable_tenant_rls */
	ours = cm_rls_table_before(src, &rls, &force_rls);
	values[1] = BoolGetDatum(ours);
	initStringInfo(&sql);

	/* the table comment (LIKE copies column, constraint and index comments) */
	{
		char	   *comment = GetComment(src, RelationRelationId, 0);

		if (comment)
		{
			char		kind = get_rel_relkind(src);

			appendStringInfo(&sql, "COMMENT ON %s %s IS %s",
							 kind == RELKIND_VIEW ? "VIEW" : kind == RELKIND_MATVIEW ? "MATERIALIZED VIEW" : "TABLE",
							 qtarget, quote_literal_cstr(comment));
			exec_ddl(sql.data);
		}
	}

	/* storage parameters */
	ret = SPI_execute_with_args("SELECT split_part(o, '=', 1), substr(o, strpos(o, '=') + 1) "
								"FROM pg_class c, unnest(c.reloptions) o WHERE c.oid = $1",
								1, types, values, NULL, true, 0);
	tt = SPI_tuptable;
	n = SPI_processed;
	for (int i = 0; ret == SPI_OK_SELECT && i < n; i++)
	{
		resetStringInfo(&sql);
		appendStringInfo(&sql, "ALTER TABLE %s SET (%s = %s)", qtarget,
						 quote_identifier(SPI_getvalue(tt->vals[i], tt->tupdesc, 1)),
						 quote_literal_cstr(SPI_getvalue(tt->vals[i], tt->tupdesc, 2)));
		exec_ddl(sql.data);
	}

	/* grants on the table and on its columns; grantees get USAGE on the schema */
	ret = SPI_execute_with_args(
								"SELECT a.privilege_type, "
								"  CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END, "
								"  a.is_grantable, NULL::name "
								"FROM pg_class c, aclexplode(c.relacl) a LEFT JOIN pg_roles r ON r.oid = a.grantee "
								"WHERE c.oid = $1 AND a.grantee <> c.relowner "
								"UNION ALL "
								"SELECT a.privilege_type, "
								"  CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END, "
								"  a.is_grantable, att.attname "
								"FROM pg_attribute att, aclexplode(att.attacl) a LEFT JOIN pg_roles r ON r.oid = a.grantee "
								"WHERE att.attrelid = $1 AND att.attnum > 0 AND NOT att.attisdropped "
								"  AND att.attacl IS NOT NULL",
								1, types, values, NULL, true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "clinic_migrate: grant lookup failed");
	tt = SPI_tuptable;
	n = SPI_processed;
	for (int i = 0; i < n; i++)
	{
		char	   *priv = SPI_getvalue(tt->vals[i], tt->tupdesc, 1);
		char	   *grantee = SPI_getvalue(tt->vals[i], tt->tupdesc, 2);
		bool		grantable = strcmp(SPI_getvalue(tt->vals[i], tt->tupdesc, 3), "t") == 0;
		char	   *col = SPI_getvalue(tt->vals[i], tt->tupdesc, 4);

		resetStringInfo(&sql);
		/* privilege_type is one of a fixed set of keywords */
		appendStringInfo(&sql, "GRANT %s%s%s%s ON TABLE %s TO %s%s", priv,
						 col ? " (" : "", col ? quote_identifier(col) : "", col ? ")" : "",
						 qtarget, grantee, grantable ? " WITH GRANT OPTION" : "");
		exec_ddl(sql.data);
		/* USAGE on the schema, unless the grantee has it (a partition's, made as its owner) */
		{
			Oid			qtypes[2] = {TEXTOID, TEXTOID};
			Datum		qvalues[2];
			char	   *has;

			qvalues[0] = CStringGetTextDatum(strcmp(grantee, "PUBLIC") == 0 ? "public" : grantee);
			qvalues[1] = CStringGetTextDatum(quote_identifier(schema));
			has = query_text("SELECT pg_catalog.has_schema_privilege("
							 "CASE WHEN $1 OPERATOR(pg_catalog.=) 'public' THEN 'public' "
							 "ELSE (SELECT r.rolname FROM pg_catalog.pg_roles r "
							 "WHERE pg_catalog.quote_ident(r.rolname) OPERATOR(pg_catalog.=) $1) END, "
							 "pg_catalog.to_regnamespace($2), 'USAGE')::pg_catalog.text",
							 2, qtypes, qvalues);
			if (has == NULL || strcmp(has, "true") != 0)
			{
				resetStringInfo(&sql);
				appendStringInfo(&sql, "GRANT USAGE ON SCHEMA %s TO %s", quote_identifier(schema), grantee);
				exec_ddl(sql.data);
			}
		}
	}

	/* the same owner, when we may hand the table over */
	if (owner != GetUserId() && has_privs_of_role(GetUserId(), owner))
	{
		resetStringInfo(&sql);
		appendStringInfo(&sql, "ALTER TABLE %s OWNER TO %s", qtarget,
						 quote_identifier(GetUserNameFromId(owner, false)));
		exec_ddl(sql.data);
		/*
		 * USAGE, and CREATE: the owner's deploys make indexes on its tables
		 * (CREATE INDEX wants CREATE on their schema), carried there by
		 * follow_ddl before finalize and by fan_out after it.
		 */
		resetStringInfo(&sql);
		appendStringInfo(&sql, "GRANT USAGE%s ON SCHEMA %s TO %s",
						 get_rel_relkind(src) == RELKIND_RELATION ||
						 get_rel_relkind(src) == RELKIND_PARTITIONED_TABLE ? ", CREATE" : "",
						 quote_identifier(schema), quote_identifier(GetUserNameFromId(owner, false)));
		exec_ddl(sql.data);
	}
	else if (owner != GetUserId())
		ereport(NOTICE,
				(errmsg("table %s is owned by %s, not by the role that created it",
						qtarget, GetUserNameFromId(GetUserId(), false)),
				 errhint("Migrate as a member of role \"%s\" to keep the owner.",
						 GetUserNameFromId(owner, false))));

	/* row level security and its policies */
	if (rls || force_rls)
	{
		resetStringInfo(&sql);
		appendStringInfo(&sql, "ALTER TABLE %s %s ROW LEVEL SECURITY", qtarget,
						 rls ? "ENABLE" : "DISABLE");
		exec_ddl(sql.data);
		if (force_rls)
		{
			resetStringInfo(&sql);
			appendStringInfo(&sql, "ALTER TABLE %s FORCE ROW LEVEL SECURITY", qtarget);
			exec_ddl(sql.data);
		}
	}
	ret = SPI_execute_with_args(
								"SELECT quote_ident(p.polname), p.polpermissive, "
								"  CASE p.polcmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT' "
								"    WHEN 'w' THEN 'UPDATE' WHEN 'd' THEN 'DELETE' ELSE 'ALL' END, "
								"  (SELECT string_agg(CASE WHEN r = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(r)) END, ', ') "
								"     FROM unnest(p.polroles) r), "
								"  pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid) "
								"FROM pg_policy p WHERE p.polrelid = $1 "
								"  AND NOT ($2 AND p.polname IN (" "'" CM_RLS_POLICY "', '" CM_RLS_OPEN_POLICY "')) "
								"ORDER BY p.polname",
								2, types, values, NULL, true, 0);
	tt = SPI_tuptable;
	n = SPI_processed;
	for (int i = 0; ret == SPI_OK_SELECT && i < n; i++)
	{
		char	   *qual = SPI_getvalue(tt->vals[i], tt->tupdesc, 5);
		char	   *check = SPI_getvalue(tt->vals[i], tt->tupdesc, 6);

		resetStringInfo(&sql);
		appendStringInfo(&sql, "CREATE POLICY %s ON %s AS %s FOR %s TO %s",
						 SPI_getvalue(tt->vals[i], tt->tupdesc, 1), qtarget,
						 strcmp(SPI_getvalue(tt->vals[i], tt->tupdesc, 2), "t") == 0 ? "PERMISSIVE" : "RESTRICTIVE",
						 SPI_getvalue(tt->vals[i], tt->tupdesc, 3),
						 SPI_getvalue(tt->vals[i], tt->tupdesc, 4));
		if (qual)
			appendStringInfo(&sql, " USING (%s)", qual);
		if (check)
			appendStringInfo(&sql, " WITH CHECK (%s)", check);
		exec_ddl(sql.data);
	}
}

/* " PARTITION BY ..." of a partitioned table, or "" */
static char *
partition_by(Oid relid)
{
	Oid			type = OIDOID;
	Datum		value = ObjectIdGetDatum(relid);
	char	   *key;

	if (get_rel_relkind(relid) != RELKIND_PARTITIONED_TABLE)
		return "";
	key = query_text("SELECT pg_catalog.pg_get_partkeydef($1)", 1, &type, &value);
	return key ? psprintf(" PARTITION BY %s", key) : "";
}

/*
 * The partitions of the shared table src, made under the tenant's parent
 * qparent with the same names and bounds (sub-partitions the same way, at
 * every level), each with its owner, grants, comment and storage
 * parameters.  Indexes, triggers and constraints of the parent reach them
 * as PostgreSQL carries them to partitions; what a partition has of its
 * own (an index on one partition only) is not carried.
 */
static void
clone_partitions(Oid src, const char *schema, const char *qparent)
{
	Oid			type = OIDOID;
	Datum		value = ObjectIdGetDatum(src);
	Oid		   *oids;
	char	  **names;
	char	  **bounds;
	uint64		n;

	if (SPI_execute_with_args("SELECT c.oid, c.relname, pg_catalog.pg_get_expr(c.relpartbound, c.oid) "
							  "FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid "
							  "WHERE i.inhparent = $1 AND c.relispartition AND NOT i.inhdetachpending "
							  "ORDER BY c.relname COLLATE \"C\"",
							  1, &type, &value, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "clinic_migrate: partition lookup failed");
	/* read out first: each partition's own statements reuse SPI's result */
	n = SPI_processed;
	oids = palloc(sizeof(Oid) * Max(n, 1));
	names = palloc(sizeof(char *) * Max(n, 1));
	bounds = palloc(sizeof(char *) * Max(n, 1));
	for (uint64 i = 0; i < n; i++)
	{
		bool		isnull;

		oids[i] = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
		names[i] = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2);
		bounds[i] = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 3);
	}
	for (uint64 i = 0; i < n; i++)
		clone_one_partition(oids[i], schema, qparent, quote_qualified_identifier(schema, names[i]),
							bounds[i]);
}

/*
 * The partitions of the tenant's partitioned table, made as its owner in a
 * security-restricted operation: a partition bound is parsed again, and a
 * domain's CHECK or a cast the owner wrote may run while it is; never with
 * the rights of the role that migrates.  A copy its owner could not be
 * handed (the migrating role is not a member of the shared table's owner)
 * gets no partitions that way: refused.
 */
static void
clone_partitions_as_owner(Oid src, const char *schema, const char *qparent, Oid parent_copy)
{
	Oid			owner = cm_rel_owner(parent_copy);
	Oid			shared_owner = cm_rel_owner(src);
	CmRoleSave	save;

	if (owner != shared_owner && !has_privs_of_role(shared_owner, owner))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("cannot make the partitions of %s as role \"%s\"", qparent,
						GetUserNameFromId(owner, false)),
				 errdetail("%s is owned by role \"%s\"; its partition bounds are evaluated as the copy's owner, which could not be made that role.",
						   cm_qualified_relname(src), GetUserNameFromId(shared_owner, false)),
				 errhint("Migrate as a member of role \"%s\".", GetUserNameFromId(shared_owner, false))));
	cm_table_owner_begin(parent_copy, &save);
	{
		/* bounds rendered and read back in one fixed style: no zone abbreviation to misread */
		int			nest = cm_stable_output_settings();

		clone_partitions(src, schema, qparent);
		cm_restore_output_settings(nest);
	}
	cm_role_end(&save);
}

void
clone_one_partition(Oid part, const char *schema, const char *qparent, const char *qpart,
					const char *bound)
{
	StringInfoData sql;

	initStringInfo(&sql);
	appendStringInfo(&sql, "CREATE TABLE %s PARTITION OF %s %s%s", qpart, qparent, bound,
					 partition_by(part));
	exec_ddl(sql.data);
	CommandCounterIncrement();
	clone_table_properties(part, schema, qpart);
	CommandCounterIncrement();
	if (get_rel_relkind(part) == RELKIND_PARTITIONED_TABLE)
		clone_partitions(part, schema, qpart);
}

/*
 * Create one table of the tenant's schema; returns its OID.  A partitioned
 * table's copy is partitioned the same way, with the same partitions
 * (clinic_migrate.keep_partitions, on by default), or one plain table.
 */
static Oid
clone_create_table(PlanTable *pt, const char *schema)
{
	char	   *qtarget = quote_qualified_identifier(schema, pt->relname);
	StringInfoData sql;
	bool		partitioned = cm_keep_partitions &&
		get_rel_relkind(pt->relid) == RELKIND_PARTITIONED_TABLE;

	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "CREATE TABLE %s (LIKE %s INCLUDING COMMENTS INCLUDING COMPRESSION "
					 "INCLUDING CONSTRAINTS INCLUDING DEFAULTS INCLUDING GENERATED "
					 "INCLUDING IDENTITY INCLUDING STATISTICS INCLUDING STORAGE)%s",
					 qtarget, cm_qualified_relname(pt->relid),
					 partitioned ? partition_by(pt->relid) : "");
	exec_ddl(sql.data);
	CommandCounterIncrement();
	clone_serial_sequences(pt->relid, schema, qtarget);
	clone_table_properties(pt->relid, schema, qtarget);
	CommandCounterIncrement();
	/* after the defaults point at the tenant's sequences: partitions take the parent's */
	if (partitioned)
		clone_partitions_as_owner(pt->relid, schema, qtarget, clone_target_relid(schema, pt->relname));
	return clone_target_relid(schema, pt->relname);
}

char *
clone_prepare_schema(const char *tenant, TenantPlan *plan, const CmSettings *s,
					 bool defer_indexes)
{
	TenantInfo	info;
	char	   *schema;
	int			nest;

	clone_tenant_info(tenant, &info);
	if (info.exists)
	{
		char	   *name = get_namespace_name(info.schema_oid);

		if (name == NULL || strcmp(name, info.schema_name) != 0)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("schema \"%s\" of tenant \"%s\" was dropped or renamed outside clinic_migrate",
							info.schema_name, tenant),
					 errhint("Run SELECT clinic_migrate.rollback_tenant('%s') to clear its state, then migrate again.",
							 tenant)));
		schema = pstrdup(info.schema_name);
	}
	else
	{
		Oid			types[5] = {TEXTOID, NAMEOID, OIDOID, NAMEOID, NAMEOID};
		Datum		values[5];
		Oid			nsp;
		StringInfoData sql;

		schema = cm_schema_name_for(tenant, s->schema_template);
		if (strncmp(schema, "pg_", 3) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_RESERVED_NAME),
					 errmsg("schema name \"%s\" for tenant \"%s\" is reserved", schema, tenant),
					 errhint("Set clinic_migrate.schema_template to a pattern with a prefix, such as 'tenant_%%s'.")));
		/* another tenant's schema first: that is the clearer error */
		values[1] = DirectFunctionCall1(namein, CStringGetDatum(schema));
		cm_state_exec("SELECT tenant_id FROM clinic_migrate.tenants WHERE schema_name = $1",
					  1, &types[1], &values[1], NULL, 0);
		if (SPI_processed > 0)
			ereport(ERROR,
					(errcode(ERRCODE_DUPLICATE_SCHEMA),
					 errmsg("tenants \"%s\" and \"%s\" map to the same schema name \"%s\"",
							tenant, SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1), schema),
					 errhint("Set clinic_migrate.schema_template to a pattern that keeps them apart.")));
		if (OidIsValid(get_namespace_oid(schema, true)))
			ereport(ERROR,
					(errcode(ERRCODE_DUPLICATE_SCHEMA),
					 errmsg("schema \"%s\" already exists and was not created by clinic_migrate", schema),
					 errdetail("clinic_migrate only writes into schemas it created for the tenant."),
					 errhint("Drop or rename that schema, or set clinic_migrate.schema_template to another pattern.")));

		initStringInfo(&sql);
		appendStringInfo(&sql, "CREATE SCHEMA %s", quote_identifier(schema));
		exec_ddl(sql.data);
		CommandCounterIncrement();
		nsp = get_namespace_oid(schema, false);
		values[0] = CStringGetTextDatum(tenant);
		values[2] = ObjectIdGetDatum(nsp);
		values[3] = DirectFunctionCall1(namein, CStringGetDatum(plan->source_schema));
		values[4] = DirectFunctionCall1(namein, CStringGetDatum(plan->tenant_column));
		cm_state_exec("INSERT INTO clinic_migrate.tenants "
					  "(tenant_id, schema_name, schema_oid, source_schema, tenant_column) "
					  "VALUES ($1, $2, $3, $4, $5)",
					  5, types, values, NULL, 0);
	}

	nest = cm_pin_search_path();
	for (int i = 0; i < plan->ncopied; i++)
	{
		PlanTable  *pt = &plan->tables[i];
		Oid			target = clone_target_relid(schema, pt->relname);
		Oid			types[6] = {TEXTOID, INT4OID, OIDOID, OIDOID, NAMEOID, TEXTOID};
		Datum		values[6];

		if (!OidIsValid(target))
		{
			target = clone_create_table(pt, schema);
			if (!defer_indexes)
				clone_finish_table(pt, schema);
		}
		values[0] = CStringGetTextDatum(tenant);
		values[1] = Int32GetDatum(pt->position);
		values[2] = ObjectIdGetDatum(pt->relid);
		values[3] = ObjectIdGetDatum(target);
		values[4] = DirectFunctionCall1(namein, CStringGetDatum(pt->relname));
		values[5] = CStringGetTextDatum(pt->kind == PLAN_TENANT ? "tenant" : "child");
		cm_state_exec("INSERT INTO clinic_migrate.tenant_tables "
					  "(tenant_id, position, source_table, target_table, table_name, kind, indexed) "
					  "VALUES ($1, $2, $3, $4, $5, $6, false) "
					  "ON CONFLICT (tenant_id, source_table) DO NOTHING",
					  6, types, values, NULL, 0);
	}
	cm_restore_output_settings(nest);
	return schema;
}

bool
clone_reset_if_empty(const char *tenant, const char *schema)
{
	SPITupleTable *tt;
	uint64		n;
	StringInfoData sql;
	Oid			nsp = get_namespace_oid(schema, false);
	Oid			types[1] = {OIDOID};
	Datum		values[1] = {ObjectIdGetDatum(nsp)};

	cm_state_exec_tenant("SELECT target_table FROM clinic_migrate.tenant_tables "
						 "WHERE tenant_id = $1", tenant);
	tt = SPI_tuptable;
	n = SPI_processed;
	initStringInfo(&sql);
	for (uint64 i = 0; i < n; i++)
	{
		bool		isnull;
		Oid			target = DatumGetObjectId(SPI_getbinval(tt->vals[i], tt->tupdesc, 1, &isnull));

		if (get_rel_name(target) == NULL)
			return false;
		resetStringInfo(&sql);
		appendStringInfo(&sql, "SELECT 1 FROM %s LIMIT 1", cm_qualified_relname(target));
		if (SPI_execute(sql.data, true, 1) != SPI_OK_SELECT || SPI_processed > 0)
			return false;
	}

	/*
	 * Only the tenant's own tables are touched (a foreign key to a shared
	 * table stays: its parents exist, and dropping it would lock the shared
	 * table): first the foreign keys between tenant tables, then every
	 * index and key constraint, which come back after the load.
	 */
	if (SPI_execute_with_args(
							  "SELECT format('ALTER TABLE %s DROP CONSTRAINT %I', c.conrelid::regclass, c.conname) "
							  "FROM pg_constraint c "
							  "WHERE c.contype = 'f' AND c.conparentid = 0 AND c.oid IN (SELECT fd.objid FROM pg_depend fd "
							  "  WHERE fd.classid = 'pg_constraint'::regclass AND fd.refclassid = 'pg_class'::regclass "
							  "    AND fd.refobjid IN " CM_RELS_OF_NAMESPACE("$1") ") "
							  "UNION ALL "
							  "SELECT * FROM (SELECT CASE WHEN con.oid IS NOT NULL "
							  "  THEN format('ALTER TABLE %s DROP CONSTRAINT %I', i.indrelid::regclass, con.conname) "
							  "  ELSE format('DROP INDEX %s', i.indexrelid::regclass) END "
							  "FROM pg_index i "
							  "LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.contype IN ('p', 'u', 'x') "
							  "WHERE i.indrelid IN " CM_RELS_OF_NAMESPACE("$1") " "
							  /* a partition's index goes with its partitioned table's */
							  "  AND NOT EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhrelid = i.indexrelid) "
							  "ORDER BY i.indexrelid) x",
							  1, types, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "clinic_migrate: constraint lookup failed");
	tt = SPI_tuptable;
	n = SPI_processed;
	{
		int			nest = NewGUCNestLevel();

		(void) set_config_option("search_path", "pg_catalog, pg_temp",
								 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
		for (uint64 i = 0; i < n; i++)
			exec_ddl(SPI_getvalue(tt->vals[i], tt->tupdesc, 1));
		AtEOXact_GUC(true, nest);
	}
	cm_state_exec_tenant("UPDATE clinic_migrate.tenant_tables SET indexed = false "
						 "WHERE tenant_id = $1", tenant);
	CommandCounterIncrement();
	return true;
}

/* does the schema already have an object of that name? (indexes, constraints) */
static bool
relation_exists(const char *schema, const char *name)
{
	return OidIsValid(clone_target_relid(schema, name));
}

/*
 * The application's triggers of the shared table, on the tenant's: built
 * from the catalog as PostgreSQL builds a partition's from its parent's (no
 * DDL text rewritten; the WHEN clause's columns mapped by name), each with
 * its firing mode (ALWAYS as ENABLE, REPLICA as DISABLE: below).  A plain
 * ENABLE trigger fires for the application's
 * writes in the tenant's schema after cutover, and never for the copy or
 * the replay, which write as a replica (session_replication_role): their
 * rows went through the shared table's triggers when they were written.
 * Ours, the internal ones (foreign keys) and constraint triggers are not
 * carried (the last with a WARNING).  One that is there already stays.
 */
void
clone_triggers(Oid source, Oid target, const char *only)
{
	Relation	tgrel = table_open(TriggerRelationId, AccessShareLock);
	Relation	srcrel = table_open(source, AccessShareLock);
	Relation	tgtrel = table_open(target, AccessShareLock);
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;

	ScanKeyInit(&key, Anum_pg_trigger_tgrelid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(source));
	scan = systable_beginscan(tgrel, TriggerRelidNameIndexId, true, NULL, 1, &key);
	while (HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		Form_pg_trigger tg = (Form_pg_trigger) GETSTRUCT(tup);
		CreateTrigStmt *stmt;
		Node	   *qual = NULL;
		List	   *args = NIL;
		List	   *cols = NIL;
		bool		isnull;
		Datum		d;

		if (tg->tgisinternal || strncmp(NameStr(tg->tgname), "clinic_migrate_", 15) == 0 ||
			get_func_namespace(tg->tgfoid) == get_namespace_oid(CM_SCHEMA, true) ||
			(only && strcmp(NameStr(tg->tgname), only) != 0) ||
			OidIsValid(get_trigger_oid(target, NameStr(tg->tgname), true)))
			continue;
		if (OidIsValid(tg->tgconstraint))
		{
			ereport(WARNING,
					(errmsg("constraint trigger \"%s\" of %s is not carried to %s",
							NameStr(tg->tgname), cm_qualified_relname(source), cm_qualified_relname(target)),
					 errhint("Create it on the tenant's table before cutover.")));
			continue;
		}
		d = heap_getattr(tup, Anum_pg_trigger_tgqual, RelationGetDescr(tgrel), &isnull);
		if (!isnull)
		{
			qual = stringToNode(TextDatumGetCString(d));
			qual = (Node *) map_partition_varattnos((List *) qual, PRS2_OLD_VARNO, tgtrel, srcrel);
			qual = (Node *) map_partition_varattnos((List *) qual, PRS2_NEW_VARNO, tgtrel, srcrel);
		}
		if (tg->tgnargs > 0)
		{
			bytea	   *val;
			char	   *p;

			val = DatumGetByteaPP(heap_getattr(tup, Anum_pg_trigger_tgargs, RelationGetDescr(tgrel), &isnull));
			p = (char *) VARDATA_ANY(val);
			for (int i = 0; i < tg->tgnargs; i++)
			{
				args = lappend(args, makeString(pstrdup(p)));
				p += strlen(p) + 1;
			}
		}
		for (int i = 0; i < tg->tgattr.dim1; i++)
			cols = lappend(cols, makeString(get_attname(source, tg->tgattr.values[i], false)));

		stmt = makeNode(CreateTrigStmt);
		stmt->trigname = pstrdup(NameStr(tg->tgname));
		stmt->args = args;
		stmt->row = TRIGGER_FOR_ROW(tg->tgtype);
		stmt->timing = tg->tgtype & TRIGGER_TYPE_TIMING_MASK;
		stmt->events = tg->tgtype & TRIGGER_TYPE_EVENT_MASK;
		stmt->columns = cols;
		d = heap_getattr(tup, Anum_pg_trigger_tgoldtable, RelationGetDescr(tgrel), &isnull);
		if (!isnull)
		{
			TriggerTransition *t = makeNode(TriggerTransition);

			t->name = pstrdup(NameStr(*DatumGetName(d)));
			t->isNew = false;
			t->isTable = true;
			stmt->transitionRels = lappend(stmt->transitionRels, t);
		}
		d = heap_getattr(tup, Anum_pg_trigger_tgnewtable, RelationGetDescr(tgrel), &isnull);
		if (!isnull)
		{
			TriggerTransition *t = makeNode(TriggerTransition);

			t->name = pstrdup(NameStr(*DatumGetName(d)));
			t->isNew = true;
			t->isTable = true;
			stmt->transitionRels = lappend(stmt->transitionRels, t);
		}
		/*
		 * The firing mode: ENABLE and DISABLE as they are; ALWAYS as
		 * ENABLE, REPLICA as DISABLE, since the copy and the replay write
		 * as a replica and must fire nothing of the application's (run as
		 * the migrating role, they would run it with that role's rights).
		 */
		(void) CreateTriggerFiringOn(stmt, "/* clinic_migrate: clone trigger */", target, InvalidOid,
									 InvalidOid, InvalidOid, tg->tgfoid, InvalidOid, qual,
									 false, false,
									 tg->tgenabled == TRIGGER_FIRES_ALWAYS ? TRIGGER_FIRES_ON_ORIGIN :
									 tg->tgenabled == TRIGGER_FIRES_ON_REPLICA ? TRIGGER_DISABLED :
									 tg->tgenabled);
		CommandCounterIncrement();
	}
	systable_endscan(scan);
	table_close(tgtrel, NoLock);
	table_close(srcrel, NoLock);
	table_close(tgrel, AccessShareLock);
}

void
clone_finish_table(PlanTable *pt, const char *schema)
{
	Oid			target = clone_target_relid(schema, pt->relname);
	Relation	srcrel;
	Relation	tgtrel;
	List	   *indexes;
	ListCell   *lc;
	AttrMap    *attmap;
	RangeVar   *rv;
	char		replident;
	Oid			replindex = InvalidOid;
	int			nest;

	if (!OidIsValid(target))
		elog(ERROR, "clinic_migrate: table %s.%s is missing", schema, pt->relname);
	nest = cm_pin_search_path();
	srcrel = table_open(pt->relid, AccessShareLock);
	tgtrel = table_open(target, AccessShareLock);
	attmap = build_attrmap_by_name(RelationGetDescr(tgtrel), RelationGetDescr(srcrel));
	rv = makeRangeVar(pstrdup(schema), pstrdup(pt->relname), -1);
	indexes = RelationGetIndexList(srcrel);
	replident = srcrel->rd_rel->relreplident;
	table_close(tgtrel, NoLock);

	foreach(lc, indexes)
	{
		Oid			idxoid = lfirst_oid(lc);
		Relation	idxrel = index_open(idxoid, AccessShareLock);
		char	   *idxname = pstrdup(RelationGetRelationName(idxrel));
		IndexStmt  *stmt;
		PlannedStmt *pstmt;

		if (replident == REPLICA_IDENTITY_INDEX && idxrel->rd_index->indisreplident)
			replindex = idxoid;
		if (!idxrel->rd_index->indisvalid || relation_exists(schema, idxname))
		{
			index_close(idxrel, AccessShareLock);
			continue;
		}
		stmt = generateClonedIndexStmt(rv, idxrel, attmap, NULL);
		stmt->idxname = idxname;
		stmt->idxcomment = GetComment(idxoid, RelationRelationId, 0);
		index_close(idxrel, AccessShareLock);

		pstmt = makeNode(PlannedStmt);
		pstmt->commandType = CMD_UTILITY;
		pstmt->canSetTag = false;
		pstmt->utilityStmt = (Node *) stmt;
		pstmt->stmt_location = -1;
		pstmt->stmt_len = 0;
		ProcessUtility(pstmt, "/* clinic_migrate: clone index */", false,
					   PROCESS_UTILITY_QUERY, NULL, NULL, None_Receiver, NULL);
		CommandCounterIncrement();
	}
	table_close(srcrel, NoLock);

	if (replident != REPLICA_IDENTITY_DEFAULT)
	{
		StringInfoData sql;
		char	   *qtarget = quote_qualified_identifier(schema, pt->relname);

		initStringInfo(&sql);
		if (replident == REPLICA_IDENTITY_FULL)
			appendStringInfo(&sql, "ALTER TABLE %s REPLICA IDENTITY FULL", qtarget);
		else if (replident == REPLICA_IDENTITY_NOTHING)
			appendStringInfo(&sql, "ALTER TABLE %s REPLICA IDENTITY NOTHING", qtarget);
		else if (OidIsValid(replindex))
			appendStringInfo(&sql, "ALTER TABLE %s REPLICA IDENTITY USING INDEX %s", qtarget,
							 quote_identifier(get_rel_name(replindex)));
		if (sql.len > 0)
			exec_ddl(sql.data);
	}
	clone_triggers(pt->relid, target, NULL);
	cm_restore_output_settings(nest);
}

static char *
att_names(Oid relid, Datum arr)
{
	AttrNumber	atts[INDEX_MAX_KEYS];
	ArrayType  *a = DatumGetArrayTypeP(arr);
	Datum	   *elems;
	int			n;
	StringInfoData buf;

	deconstruct_array(a, INT2OID, 2, true, TYPALIGN_SHORT, &elems, NULL, &n);
	initStringInfo(&buf);
	for (int i = 0; i < n && i < INDEX_MAX_KEYS; i++)
	{
		atts[i] = DatumGetInt16(elems[i]);
		appendStringInfo(&buf, "%s%s", i ? ", " : "",
						 quote_identifier(get_attname(relid, atts[i], false)));
	}
	return buf.data;
}

/*
 * The views and materialized views of the source schema over the tenant's
 * tables, in the tenant's schema, so that a routed session (search_path =
 * its schema, then the source schema) reads its own rows through them,
 * before and after finalize.  A view is taken when it reads a planned table
 * or a view taken before it (OID order, which is the order they could be
 * created in).  Its query is deparsed with search_path = the source schema,
 * so that what is there comes out unqualified, and created again with
 * search_path = the tenant's schema, then the source schema: a name finds
 * the tenant's table or view first, and the rest (reference tables,
 * functions, types) where the original found it; columns by name.  Its
 * options (security_barrier, check_option, security_invoker), owner, grants
 * and comment come as a table's do.  A materialized view is filled with the
 * tenant's rows at its creation.  One that is there already stays.
 */
typedef struct ViewClone
{
	TenantPlan *plan;
	const char *schema;
	Oid			view;
	const char *name;
	bool		matview;
} ViewClone;

/* one view, in a subtransaction of its own (cm_try_in_subxact) */
static void
clone_one_view(void *arg)
{
	ViewClone  *v = arg;
	Oid			types[1] = {OIDOID};
	Datum		values[1] = {ObjectIdGetDatum(v->view)};
	char	   *qtarget = quote_qualified_identifier(v->schema, v->name);
	char	   *def;
	StringInfoData sql;
	int			nest;

	nest = NewGUCNestLevel();
	(void) set_config_option("search_path", quote_identifier(v->plan->source_schema), PGC_USERSET,
							 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	def = query_text("SELECT pg_catalog.pg_get_viewdef($1)", 1, types, values);
	AtEOXact_GUC(true, nest);
	if (def == NULL)
		return;

	nest = NewGUCNestLevel();
	(void) set_config_option("search_path",
							 psprintf("%s, %s, pg_temp", quote_identifier(v->schema),
									  quote_identifier(v->plan->source_schema)),
							 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	initStringInfo(&sql);
	appendStringInfo(&sql, "CREATE %s %s AS %s", v->matview ? "MATERIALIZED VIEW" : "VIEW", qtarget, def);
	/* a view's definition ends with ';' */
	while (sql.len > 0 && (sql.data[sql.len - 1] == ';' || sql.data[sql.len - 1] == ' ' ||
						   sql.data[sql.len - 1] == '\n'))
		sql.data[--sql.len] = '\0';
	/* never filled here: its query would run with the migrating role's rights */
	if (v->matview)
		appendStringInfoString(&sql, " WITH NO DATA");
	exec_ddl(sql.data);
	AtEOXact_GUC(true, nest);
	CommandCounterIncrement();

	/*
	 * What the new view reads and calls must be what the shared one does,
	 * but for the relations it finds in the tenant's schema: those must be
	 * the tenant's copies of the planned tables (or views made there, by
	 * name).  A function, operator, type or table that a role with CREATE on
	 * the tenant's schema put there to shadow the original's would run its
	 * code for whoever reads the view.  Refused (the caller makes that a
	 * WARNING, and the view is not made).
	 */
	{
		Oid			new_view = clone_target_relid(v->schema, v->name);
		Datum	   *copies = palloc(sizeof(Datum) * Max(v->plan->ncopied, 1));
		int			ncopies = 0;
		Oid			dtypes[4] = {OIDOID, OIDOID, OIDARRAYOID, OIDOID};
		Datum		dvalues[4];
		char	   *odd;

		for (int i = 0; i < v->plan->ncopied; i++)
		{
			Oid			t = clone_target_relid(v->schema, v->plan->tables[i].relname);

			if (OidIsValid(t))
				copies[ncopies++] = ObjectIdGetDatum(t);
		}
		dvalues[0] = ObjectIdGetDatum(new_view);
		dvalues[1] = ObjectIdGetDatum(v->view);
		dvalues[2] = PointerGetDatum(construct_array(copies, ncopies, OIDOID, sizeof(Oid), true, TYPALIGN_INT));
		dvalues[3] = ObjectIdGetDatum(get_namespace_oid(v->schema, false));
		/* not read-only: a snapshot of its own, which sees the view just made */
		odd = query_text_rw("WITH n AS (SELECT d.refclassid, d.refobjid FROM pg_catalog.pg_depend d "
						 "  JOIN pg_catalog.pg_rewrite r ON d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_rewrite'::pg_catalog.regclass "
						 "   AND d.objid OPERATOR(pg_catalog.=) r.oid "
						 "  WHERE r.ev_class OPERATOR(pg_catalog.=) $1 AND d.refobjid OPERATOR(pg_catalog.<>) $1), "
						 "o AS (SELECT d.refclassid, d.refobjid FROM pg_catalog.pg_depend d "
						 "  JOIN pg_catalog.pg_rewrite r ON d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_rewrite'::pg_catalog.regclass "
						 "   AND d.objid OPERATOR(pg_catalog.=) r.oid "
						 "  WHERE r.ev_class OPERATOR(pg_catalog.=) $2 AND d.refobjid OPERATOR(pg_catalog.<>) $2) "
						 "SELECT pg_catalog.pg_describe_object(n.refclassid, n.refobjid, 0) FROM n "
						 "WHERE NOT EXISTS (SELECT 1 FROM o WHERE o.refclassid OPERATOR(pg_catalog.=) n.refclassid "
						 "                  AND o.refobjid OPERATOR(pg_catalog.=) n.refobjid) "
						 "AND NOT (n.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass "
						 "  AND EXISTS (SELECT 1 FROM pg_catalog.pg_class nc WHERE nc.oid OPERATOR(pg_catalog.=) n.refobjid "
						 "    AND nc.relnamespace OPERATOR(pg_catalog.=) $4 "
						 "    AND (nc.oid OPERATOR(pg_catalog.=) ANY ($3) OR nc.relkind IN ('v', 'm')))) "
						 "LIMIT 1", 4, dtypes, dvalues, false);
		if (odd != NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("the view would use %s, which the shared view does not", odd),
					 errdetail("An object of schema \"%s\" takes the place of the one the shared view uses.", v->schema),
					 errhint("Drop that object from the tenant's schema, or create the view there by hand.")));
	}
	clone_table_properties(v->view, v->schema, qtarget);
	CommandCounterIncrement();

	/*
	 * Filled by REFRESH, which runs the query as the view's owner (handed
	 * over above) inside a security-restricted operation, when the shared
	 * one is filled.
	 */
	if (v->matview && query_text("SELECT 'yes' FROM pg_catalog.pg_class WHERE oid = $1 AND relispopulated",
								 1, types, values) != NULL)
		exec_ddl(psprintf("REFRESH MATERIALIZED VIEW %s", qtarget));
}

/*
 * The views and materialized views of the source schema over the tenant's
 * tables, in the tenant's schema, so that a routed session (search_path =
 * its schema, then the source schema) reads its own rows through them,
 * before and after finalize.  A view is taken when it reads a planned table
 * or a view taken before it (OID order, which is the order they could be
 * created in).  Its query is deparsed with search_path = the source schema,
 * so that what is there comes out unqualified, and created again with
 * search_path = the tenant's schema, then the source schema: a name finds
 * the tenant's table or view first, and the rest (reference tables,
 * functions, types) where the original found it; columns by name.  Its
 * options (security_barrier, check_option, security_invoker), owner, grants
 * and comment come as a table's do.  Only a view whose owner the migrating
 * role can hand it to is made (it would otherwise read the tenant's tables
 * with the migrating role's rights); one that fails to be made again (a
 * function that does not take the tenant's row type) is left out; both with
 * a WARNING.  A materialized view is filled by REFRESH, as its owner.  One
 * that is there already stays.
 */
void
clone_views(TenantPlan *plan, const char *schema, Oid only)
{
	Oid			types[1] = {OIDOID};
	Datum		values[1] = {ObjectIdGetDatum(plan->source_nsp)};
	List	   *taken = NIL;	/* source relids whose copies exist */
	SPITupleTable *tt;
	uint64		n;

	for (int i = 0; i < plan->ncopied; i++)
		taken = lappend_oid(taken, plan->tables[i].relid);
	/* through pg_depend's index: pg_class has none on relnamespace, and grows with every tenant */
	if (SPI_execute_with_args("SELECT c.oid, c.relname, c.relkind, c.relowner FROM pg_catalog.pg_class c "
							  "WHERE c.oid IN " CM_RELS_OF_NAMESPACE("$1") " AND c.relkind IN ('v', 'm') "
							  "ORDER BY c.oid",
							  1, types, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "clinic_migrate: view lookup failed");
	tt = SPI_tuptable;
	n = SPI_processed;
	for (uint64 i = 0; i < n; i++)
	{
		bool		isnull;
		Oid			view = DatumGetObjectId(SPI_getbinval(tt->vals[i], tt->tupdesc, 1, &isnull));
		char	   *name = SPI_getvalue(tt->vals[i], tt->tupdesc, 2);
		bool		matview = SPI_getvalue(tt->vals[i], tt->tupdesc, 3)[0] == 'm';
		Oid			owner = DatumGetObjectId(SPI_getbinval(tt->vals[i], tt->tupdesc, 4, &isnull));
		Datum		vvalues[1] = {ObjectIdGetDatum(view)};
		bool		reads_taken = false;
		ViewClone	v = {plan, schema, view, name, matview};
		ErrorData  *failed;

		if (relation_exists(schema, name))
		{
			Oid			there = clone_target_relid(schema, name);
			char		kind = get_rel_relkind(there);

			/* the copy made before, or something else taking its name: said */
			if (kind == RELKIND_VIEW || kind == RELKIND_MATVIEW)
				taken = lappend_oid(taken, view);
			else if (!OidIsValid(only) || view == only)
				ereport(WARNING,
						(errmsg("view %s is not made again in schema \"%s\": %s there is not a view",
								quote_qualified_identifier(plan->source_schema, name), schema,
								cm_qualified_relname(there)),
						 errdetail("It is a %s owned by %s.", kind == RELKIND_VIEW ? "view" :
								   kind == RELKIND_MATVIEW ? "materialized view" : "relation",
								   GetUserNameFromId(cm_rel_owner(there), false)),
						 errhint("Drop it, then run the tenant's move again, or create the view there by hand.")));
			continue;
		}
		/* one view only (a new one): what it reads was made before, or not */
		if (OidIsValid(only) && view != only)
			continue;
		/* the relations its query reads */
		if (SPI_execute_with_args("SELECT DISTINCT d.refobjid FROM pg_catalog.pg_rewrite r "
								  "JOIN pg_catalog.pg_depend d ON d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_rewrite'::pg_catalog.regclass "
								  "AND d.objid OPERATOR(pg_catalog.=) r.oid "
								  "AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass "
								  "WHERE r.ev_class OPERATOR(pg_catalog.=) $1 AND d.refobjid OPERATOR(pg_catalog.<>) $1",
								  1, types, vvalues, NULL, true, 0) != SPI_OK_SELECT)
			elog(ERROR, "clinic_migrate: view dependency lookup failed");
		for (uint64 k = 0; k < SPI_processed && !reads_taken; k++)
			reads_taken = list_member_oid(taken,
										  DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[k],
																		 SPI_tuptable->tupdesc, 1, &isnull)));
		if (!reads_taken)
			continue;
		if (owner != GetUserId() && !has_privs_of_role(GetUserId(), owner))
		{
			ereport(WARNING,
					(errmsg("view %s is not made again in schema \"%s\"",
							quote_qualified_identifier(plan->source_schema, name), schema),
					 errdetail("It is owned by %s, to whom the migrating role %s cannot hand it.",
							   GetUserNameFromId(owner, false), GetUserNameFromId(GetUserId(), false)),
					 errhint("Migrate as a member of role \"%s\", or create the view in the tenant's schema.",
							 GetUserNameFromId(owner, false))));
			continue;
		}
		failed = cm_try_in_subxact(clone_one_view, &v);
		if (failed)
		{
			ereport(WARNING,
					(errmsg("view %s is not made again in schema \"%s\": %s",
							quote_qualified_identifier(plan->source_schema, name), schema, failed->message),
					 errhint("Create it in the tenant's schema by hand; clinic_migrate.uncarried() lists what stays shared.")));
			FreeErrorData(failed);
			continue;
		}
		taken = lappend_oid(taken, view);
	}
}

/*
 * Foreign keys: added NOT VALID (a brief lock on the referenced table, no
 * scan), then validated (no lock that blocks writers of shared tables).
 */
void
clone_finish_schema(TenantPlan *plan, const char *schema)
{
	int			nest = cm_pin_search_path();

	for (int i = 0; i < plan->ncopied; i++)
		clone_table_foreign_keys(plan, schema, &plan->tables[i]);
	cm_restore_output_settings(nest);
}

void
clone_finish_views(TenantPlan *plan, const char *schema)
{
	int			nest = cm_pin_search_path();
	int			out = cm_stable_output_settings();
	List	   *rels = NIL;

	/*
	 * The shared tables first, all at once (ACCESS SHARE): a view's
	 * definition locks the tables it names, and a deploy holding one and
	 * waiting for the copy (locked by a view made a moment before) would
	 * wait for this transaction, which would wait for it.  A transaction of
	 * its own, short: no scan but a materialized view's REFRESH.
	 */
	for (int i = 0; i < plan->ncopied; i++)
		rels = lappend_oid(rels, plan->tables[i].relid);
	cm_lock_relations(rels, AccessShareLock, false);
	clone_views(plan, schema, InvalidOid);
	cm_restore_output_settings(out);
	AtEOXact_GUC(true, nest);
}

/*
 * The registry guard.  A tenant table's foreign key to the registry by its
 * tenant column is, in the tenant's copy, a key to one registry row: its
 * own tenant's.  Made as a foreign key it would put two triggers on the
 * registry for every such table of every tenant; with thousands of tenants
 * every load of the registry's relcache entry reads them all (each new
 * tenant's keys make every session load it again), and a DELETE of one of
 * its rows checks and locks every tenant's table.  One pair of triggers on
 * the registry keeps the promise instead, for every tenant at once: the row
 * of a tenant whose schema exists can be neither deleted nor have its key
 * changed, and the registry cannot be truncated while such a tenant exists.
 */
#define REGISTRY_GUARD "clinic_migrate_registry_guard"
#define REGISTRY_GUARD_TRUNCATE "clinic_migrate_registry_guard_truncate"
#define TENANT_CHECK "clinic_migrate_tenant_check"

/* the single column of an int2[] key, or InvalidAttrNumber */
static AttrNumber
single_att(Datum arr)
{
	Datum	   *elems;
	int			n;

	deconstruct_array(DatumGetArrayTypeP(arr), INT2OID, 2, true, TYPALIGN_SHORT, &elems, NULL, &n);
	return n == 1 ? DatumGetInt16(elems[0]) : InvalidAttrNumber;
}

/* the column the registry guard of relid watches (0 if none), and whether its truncate half is there */
static AttrNumber
registry_guard_column(Oid relid, bool *truncate_half)
{
	Relation	rel = table_open(relid, AccessShareLock);
	TriggerDesc *td = rel->trigdesc;
	AttrNumber	col = InvalidAttrNumber;

	*truncate_half = false;
	for (int i = 0; td && i < td->numtriggers; i++)
	{
		if (strcmp(td->triggers[i].tgname, REGISTRY_GUARD) == 0 && td->triggers[i].tgnargs == 1)
			col = get_attnum(relid, td->triggers[i].tgargs[0]);
		if (strcmp(td->triggers[i].tgname, REGISTRY_GUARD_TRUNCATE) == 0)
			*truncate_half = true;
	}
	table_close(rel, AccessShareLock);
	return col;
}

/* DROP EXTENSION takes the guard with it, without CASCADE (guard_ddl too: a dump loses this tie) */
static void
registry_guard_depends_on_extension(Oid relid, const char *name)
{
	ObjectAddress trig;
	ObjectAddress ext;

	ObjectAddressSet(trig, TriggerRelationId, get_trigger_oid(relid, name, false));
	ObjectAddressSet(ext, ExtensionRelationId, get_extension_oid(CM_SCHEMA, false));
	recordDependencyOn(&trig, &ext, DEPENDENCY_AUTO);
	CommandCounterIncrement();
}

/* the tenant whose copy lives in schema, or NULL */
static char *
tenant_of_schema(const char *schema)
{
	Oid			t = NAMEOID;
	Datum		v = DirectFunctionCall1(namein, CStringGetDatum(schema));
	char	   *tenant = NULL;

	cm_state_exec("SELECT tenant_id FROM clinic_migrate.tenants "
				  "WHERE schema_name OPERATOR(pg_catalog.=) $1", 1, &t, &v, NULL, 1);
	if (SPI_processed > 0)
		tenant = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	return tenant;
}

/*
 * The copy's half of the key it no longer has: its rows are its tenant's
 * (whose registry row the guard keeps).  A CHECK of the tenant column.
 */
static void
tenant_check(PlanTable *pt, const char *schema, Oid target)
{
	char	   *tenant;
	Oid			typid;
	int32		typmod;
	Oid			collid;

	Oid			base;
	int32		basemod;

	if (OidIsValid(get_relation_constraint_oid(target, TENANT_CHECK, true)))
		return;
	tenant = tenant_of_schema(schema);
	if (tenant == NULL)
		return;
	get_atttypetypmodcoll(target, pt->tenant_att, &typid, &typmod, &collid);

	/*
	 * Only PostgreSQL's own code in it: the constraint is checked now as the
	 * migrating role (a superuser, maybe), and later by replay.  So the
	 * literal is of the column's base type (a cast to a domain would run
	 * its CHECK, the table owner's code), a built-in type compared with a
	 * built-in equality; for other types the copy goes without this half.
	 */
	basemod = typmod;
	base = getBaseTypeAndTypmod(typid, &basemod);
	if (base >= FirstNormalObjectId)
		return;
	{
		Operator	op = oper(NULL, list_make2(makeString("pg_catalog"), makeString("=")), base, base, true, -1);
		Oid			eq = op ? oprid(op) : InvalidOid;

		if (op)
			ReleaseSysCache(op);
		if (!OidIsValid(eq) || eq >= FirstNormalObjectId)
			return;
	}
	exec_ddl(psprintf("ALTER TABLE %s ADD CONSTRAINT %s CHECK (%s OPERATOR(pg_catalog.=) CAST(%s AS %s))",
					  quote_qualified_identifier(schema, pt->relname), TENANT_CHECK,
					  quote_identifier(get_attname(target, pt->tenant_att, false)),
					  quote_literal_cstr(tenant),
					  format_type_extended(base, basemod,
										   FORMAT_TYPE_TYPEMOD_GIVEN | FORMAT_TYPE_FORCE_QUALIFY)));
	CommandCounterIncrement();
}

/*
 * Is this foreign key of pt (to ref) the key to the registry by the tenant
 * column, kept by the registry guard?  Puts the guard on the registry if it
 * has none yet, and the tenant CHECK on the copy.
 */
static bool
registry_guarded(TenantPlan *plan, PlanTable *pt, const char *schema, Oid target,
				 Oid ref, Datum conkey, Datum confkey)
{
	AttrNumber	refatt;
	AttrNumber	have;
	bool		have_truncate;
	CmRoleSave	save;
	const char *qreg;

	if (!OidIsValid(plan->registry) || ref != plan->registry || pt->kind != PLAN_TENANT ||
		single_att(conkey) != pt->tenant_att)
		return false;
	refatt = single_att(confkey);
	if (refatt == InvalidAttrNumber)
		return false;
	/* the library may be newer than the extension's SQL (before 0.9) */
	if (!OidIsValid(LookupFuncName(list_make2(makeString(CM_SCHEMA), makeString("registry_guard")),
								   0, NULL, true)))
		return false;
	have = registry_guard_column(ref, &have_truncate);
	if (have == InvalidAttrNumber || !have_truncate)
	{
		/*
		 * Made once, under the registry's lock (two first migrations must
		 * not both make it), as the extension's owner, as PostgreSQL makes
		 * the triggers of a foreign key on the referenced table: the
		 * migrating role holds REFERENCES on the registry
		 * (clone_check_privileges), which is what a key needs, not TRIGGER.
		 */
		cm_lock_relations(list_make1_oid(ref), ShareRowExclusiveLock, false);
		have = registry_guard_column(ref, &have_truncate);
		qreg = cm_qualified_relname(ref);
		cm_owner_begin(&save);
		if (have == InvalidAttrNumber &&
			!OidIsValid(get_trigger_oid(ref, REGISTRY_GUARD, true)))
		{
			/*
			 * Not UPDATE OF the key: an application's BEFORE UPDATE trigger
			 * may change it in an UPDATE that does not name it.  The column
			 * by name (a rename of it makes the guard again, follow_ddl).
			 */
			exec_ddl(psprintf("CREATE TRIGGER %s AFTER UPDATE OR DELETE ON %s FOR EACH ROW "
							  "EXECUTE FUNCTION clinic_migrate.registry_guard(%s)",
							  REGISTRY_GUARD, qreg, quote_literal_cstr(get_attname(ref, refatt, false))));
			CommandCounterIncrement();
			registry_guard_depends_on_extension(ref, REGISTRY_GUARD);
			have = refatt;
		}
		if (!have_truncate)
		{
			exec_ddl(psprintf("CREATE TRIGGER %s BEFORE TRUNCATE ON %s FOR EACH STATEMENT "
							  "EXECUTE FUNCTION clinic_migrate.registry_guard()",
							  REGISTRY_GUARD_TRUNCATE, qreg));
			CommandCounterIncrement();
			registry_guard_depends_on_extension(ref, REGISTRY_GUARD_TRUNCATE);
		}
		cm_role_end(&save);
	}
	/* a guard of another column (or someone else's trigger of that name): the key is made */
	if (have != refatt)
		return false;
	tenant_check(pt, schema, target);
	return true;
}

/*
 * The text of a registry key, as a tenant id: its cast to text, as the
 * capture triggers take it (char(n)'s padding goes), evaluated as the
 * session's role.
 */
static char *
key_as_tenant_id(Datum value, Oid typid, int32 typmod, Oid collid)
{
	int16		typlen;
	bool		typbyval;
	Node	   *expr;
	ExprState  *es;
	ExprContext *ec;
	Datum		d;
	bool		isnull;
	char	   *result;

	get_typlenbyval(typid, &typlen, &typbyval);
	expr = coerce_to_target_type(NULL, (Node *) makeConst(typid, typmod, collid, typlen, value, false, typbyval),
								 typid, TEXTOID, -1, COERCION_EXPLICIT, COERCE_EXPLICIT_CAST, -1);
	if (expr == NULL)
	{
		Oid			out;
		bool		varlena;

		getTypeOutputInfo(typid, &out, &varlena);
		return OidOutputFunctionCall(out, value);
	}
	ec = CreateStandaloneExprContext();
	es = ExecInitExpr(expression_planner((Expr *) expr), NULL);
	d = ExecEvalExpr(es, ec, &isnull);
	result = isnull ? NULL : TextDatumGetCString(d);
	FreeExprContext(ec, true);
	return result;
}

/*
 * A tenant of this database whose copy exists (any tenant if tenant is
 * NULL): "tenant\tschema", or NULL.  With a key of a built-in type, the
 * tenants of the registry's schema are also compared in that type (1.0 is
 * tenant 1, 't2 ' is tenant t2 for char(n)); only PostgreSQL's own input
 * and equality functions run there, as the extension's owner.
 */
static char *
tenant_with_schema(const char *tenant, Datum key, Oid keytype, const char *source_schema, Oid registry)
{
	Oid			types[4] = {TEXTOID, OIDOID, NAMEOID, InvalidOid};
	Datum		values[4];
	char		nulls[4] = {' ', ' ', ' ', ' '};
	char	   *result = NULL;
	bool		typed = tenant != NULL && OidIsValid(keytype) && keytype < FirstNormalObjectId &&
		OidIsValid(registry);
	MemoryContext cxt = CurrentMemoryContext;
	StringInfoData sql;

	values[0] = tenant ? CStringGetTextDatum(tenant) : (Datum) 0;
	nulls[0] = tenant ? ' ' : 'n';
	values[1] = ObjectIdGetDatum(registry);
	nulls[1] = OidIsValid(registry) ? ' ' : 'n';
	values[2] = DirectFunctionCall1(namein, CStringGetDatum(source_schema ? source_schema : ""));
	types[3] = typed ? keytype : TEXTOID;
	values[3] = typed ? key : (Datum) 0;
	nulls[3] = typed ? ' ' : 'n';
	initStringInfo(&sql);
	appendStringInfoString(&sql,
						   "SELECT t.tenant_id, t.schema_name FROM clinic_migrate.tenants t "
						   "WHERE ($1 IS NULL OR t.tenant_id OPERATOR(pg_catalog.=) $1");
	/*
	 * Only the tenants of this registry: of its schema, with a tenant
	 * column that a key to it starts from (their ids were read in that
	 * column's type, which the key's matches).  The CASE casts no other.
	 */
	if (typed)
		appendStringInfo(&sql,
						 " OR CASE WHEN t.source_schema OPERATOR(pg_catalog.=) $3 "
						 "AND t.tenant_column IN (SELECT a.attname FROM pg_catalog.pg_constraint c "
						 "  JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) c.conrelid "
						 "   AND a.attnum OPERATOR(pg_catalog.=) c.conkey[1] "
						 "  WHERE c.confrelid OPERATOR(pg_catalog.=) $2 "
						 "   AND c.contype OPERATOR(pg_catalog.=) 'f' "
						 "   AND pg_catalog.cardinality(c.conkey) OPERATOR(pg_catalog.=) 1) "
						 "THEN CAST(t.tenant_id AS %s) OPERATOR(pg_catalog.=) $4 END",
						 /* typmod -1 given: bpchar, not character (that is char(1)) */
						 format_type_extended(keytype, -1,
											  FORMAT_TYPE_TYPEMOD_GIVEN | FORMAT_TYPE_FORCE_QUALIFY));
	appendStringInfoString(&sql,
						   ") AND EXISTS (SELECT 1 FROM pg_catalog.pg_namespace n "
						   "              WHERE n.nspname OPERATOR(pg_catalog.=) t.schema_name) "
						   "ORDER BY t.tenant_id LIMIT 1");
	SPI_connect();
	cm_state_exec(sql.data, 4, types, values, nulls, 1);
	if (SPI_processed > 0)
	{
		MemoryContext old = MemoryContextSwitchTo(cxt);

		result = psprintf("%s\t%s", SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1),
						  SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2));
		MemoryContextSwitchTo(old);
	}
	SPI_finish();
	return result;
}

/*
 * clinic_migrate.registry_guard(column): the trigger of the registry guard
 * (above).  Row level, AFTER UPDATE OR DELETE, the key column named in its
 * argument (after a rename of it, the primary key's single column);
 * statement level, BEFORE TRUNCATE, no argument.
 */
PG_FUNCTION_INFO_V1(cm_registry_guard);
Datum
cm_registry_guard(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	Relation	rel;
	TupleDesc	desc;
	AttrNumber	att;
	Form_pg_attribute attr;
	Datum		old;
	bool		isnull;
	char	   *tenant;
	char	   *found;
	char	   *schema;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("clinic_migrate.registry_guard() may only be called as a trigger")));
	rel = td->tg_relation;
	if (TRIGGER_FIRED_BY_TRUNCATE(td->tg_event))
	{
		found = tenant_with_schema(NULL, (Datum) 0, InvalidOid, NULL, InvalidOid);
		if (found == NULL)
			return PointerGetDatum(NULL);
		schema = strchr(found, '\t');
		*schema++ = '\0';
		ereport(ERROR,
				(errcode(ERRCODE_FOREIGN_KEY_VIOLATION),
				 errmsg("cannot truncate %s: it is the registry of tenants that live in schemas of their own",
						cm_qualified_relname(RelationGetRelid(rel))),
				 errdetail("Tenant \"%s\" (schema %s) is one; clinic_migrate keeps their registry rows in place of the foreign keys of their tables.",
						   found, quote_identifier(schema)),
				 errhint("Roll back or drop those tenants first.")));
	}
	if (!TRIGGER_FIRED_FOR_ROW(td->tg_event) || !TRIGGER_FIRED_AFTER(td->tg_event) ||
		TRIGGER_FIRED_BY_INSERT(td->tg_event) || td->tg_trigger->tgnargs != 1)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("clinic_migrate.registry_guard(column) must be an AFTER UPDATE OR DELETE row trigger")));
	desc = RelationGetDescr(rel);
	att = SPI_fnumber(desc, td->tg_trigger->tgargs[0]);
	if (att <= 0)
	{
		/* renamed since: the key is the primary key's column, as a foreign key to it would be */
		Oid			pk = RelationGetPrimaryKeyIndex(rel);
		HeapTuple	itup = OidIsValid(pk) ? SearchSysCache1(INDEXRELID, ObjectIdGetDatum(pk)) : NULL;

		if (itup && HeapTupleIsValid(itup))
		{
			Form_pg_index idx = (Form_pg_index) GETSTRUCT(itup);

			if (idx->indnkeyatts == 1)
				att = idx->indkey.values[0];
			ReleaseSysCache(itup);
		}
	}
	if (att <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("the registry guard of %s names column \"%s\", which it does not have",
						cm_qualified_relname(RelationGetRelid(rel)), td->tg_trigger->tgargs[0]),
				 errhint("The column was renamed: drop trigger clinic_migrate_registry_guard on it; "
						 "the next migration makes it again.")));
	attr = TupleDescAttr(desc, att - 1);
	old = heap_getattr(td->tg_trigtuple, att, desc, &isnull);
	if (isnull)
		return PointerGetDatum(NULL);
	if (TRIGGER_FIRED_BY_UPDATE(td->tg_event))
	{
		bool		newnull;
		Datum		new = heap_getattr(td->tg_newtuple, att, desc, &newnull);

		if (!newnull && datumIsEqual(old, new, attr->attbyval, attr->attlen))
			return PointerGetDatum(NULL);
	}
	tenant = key_as_tenant_id(old, attr->atttypid, attr->atttypmod, attr->attcollation);
	if (tenant == NULL)
		return PointerGetDatum(NULL);
	found = tenant_with_schema(tenant, old, getBaseType(attr->atttypid),
							   get_namespace_name(RelationGetNamespace(rel)), RelationGetRelid(rel));
	if (found == NULL)
		return PointerGetDatum(NULL);
	schema = strchr(found, '\t');
	*schema++ = '\0';
	ereport(ERROR,
			(errcode(ERRCODE_FOREIGN_KEY_VIOLATION),
			 errmsg("%s on table %s violates the foreign keys of tenant \"%s\"'s tables",
					TRIGGER_FIRED_BY_UPDATE(td->tg_event) ? "update" : "delete",
					cm_qualified_relname(RelationGetRelid(rel)), found),
			 errdetail("Key (%s)=(%s) is still referenced from schema %s, where clinic_migrate keeps this row in place of the tables' foreign keys to %s.",
					   quote_identifier(NameStr(attr->attname)), tenant, quote_identifier(schema),
					   RelationGetRelationName(rel)),
			 errhint("Roll the tenant back, or drop its schema, first.")));
	return PointerGetDatum(NULL);
}

/* the foreign keys of one tenant table that its copy still lacks */
void
clone_table_foreign_keys(TenantPlan *plan, const char *schema, PlanTable *pt)
{
	int			nest = cm_pin_search_path();

	{
		Oid			target = clone_target_relid(schema, pt->relname);
		Oid			types[2] = {OIDOID, OIDOID};
		Datum		values[2];
		SPITupleTable *tt;
		int			n;

		values[0] = ObjectIdGetDatum(pt->relid);
		values[1] = ObjectIdGetDatum(target);
		if (SPI_execute_with_args(
								  "SELECT quote_ident(c.conname), c.confrelid, c.conkey, c.confkey, "
								  "  c.confupdtype::text, c.confdeltype::text, c.confmatchtype::text, "
								  "  c.condeferrable, c.condeferred, c.convalidated, c.confdelsetcols, c.conname "
								  "FROM pg_constraint c WHERE c.conrelid = $1 AND c.contype = 'f' AND c.conparentid = 0 "
								  "  AND NOT EXISTS (SELECT 1 FROM pg_constraint t "
								  "                  WHERE t.conrelid = $2 AND t.conname = c.conname) "
								  "ORDER BY c.conname",
								  2, types, values, NULL, true, 0) != SPI_OK_SELECT)
			elog(ERROR, "clinic_migrate: foreign key lookup failed");
		tt = SPI_tuptable;
		n = SPI_processed;
		for (int f = 0; f < n; f++)
		{
			HeapTuple	tup = tt->vals[f];
			TupleDesc	desc = tt->tupdesc;
			bool		isnull;
			Oid			ref = DatumGetObjectId(SPI_getbinval(tup, desc, 2, &isnull));
			Oid			newref = clone_fk_target(plan, schema, ref);
			char	   *qtarget = quote_qualified_identifier(schema, pt->relname);
			char	   *conname = SPI_getvalue(tup, desc, 1);
			bool		validated = strcmp(SPI_getvalue(tup, desc, 10), "t") == 0;
			Datum		delsetcols = SPI_getbinval(tup, desc, 11, &isnull);
			bool		has_delsetcols = !isnull;
			StringInfoData sql;

			/*
			 * A key to a table that stays shared puts two triggers on that
			 * table for every tenant: with thousands of tenants, loading the
			 * table's relcache entry reads them all, and deleting one of its
			 * rows checks every tenant's table (locking each).  Kept unless
			 * clinic_migrate.shared_foreign_keys is off.
			 */
			if (newref == ref &&
				registry_guarded(plan, pt, schema, target, ref, SPI_getbinval(tup, desc, 3, &isnull),
								 SPI_getbinval(tup, desc, 4, &isnull)))
				continue;
			if (newref == ref && !cm_shared_foreign_keys)
				continue;

			initStringInfo(&sql);
			appendStringInfo(&sql, "ALTER TABLE %s ADD CONSTRAINT %s FOREIGN KEY (%s) REFERENCES %s (%s)",
							 qtarget, conname,
							 att_names(pt->relid, SPI_getbinval(tup, desc, 3, &isnull)),
							 cm_qualified_relname(newref),
							 att_names(ref, SPI_getbinval(tup, desc, 4, &isnull)));
			if (SPI_getvalue(tup, desc, 7)[0] == FKCONSTR_MATCH_FULL)
				appendStringInfoString(&sql, " MATCH FULL");
			appendStringInfo(&sql, " ON UPDATE %s ON DELETE %s",
							 fk_action(SPI_getvalue(tup, desc, 5)[0]),
							 fk_action(SPI_getvalue(tup, desc, 6)[0]));
			if (has_delsetcols)
				appendStringInfo(&sql, " (%s)", att_names(pt->relid, delsetcols));
			if (strcmp(SPI_getvalue(tup, desc, 8), "t") == 0)
				appendStringInfoString(&sql, " DEFERRABLE");
			if (strcmp(SPI_getvalue(tup, desc, 9), "t") == 0)
				appendStringInfoString(&sql, " INITIALLY DEFERRED");
			/*
			 * PostgreSQL 15 has no NOT VALID key on a partitioned table:
			 * added there, the key is checked under a SHARE ROW EXCLUSIVE
			 * lock on the referenced (maybe shared, busy) table, which
			 * would stop its writers for the whole scan.  So each leaf
			 * partition gets the key NOT VALID (a brief lock), validated
			 * there (no lock that stops writers), and the partitioned
			 * table's key, added last, takes theirs over without a scan.
			 */
			if (get_rel_relkind(target) != RELKIND_PARTITIONED_TABLE)
				appendStringInfoString(&sql, " NOT VALID");
			else
			{
				if (validated)
				{
					ListCell   *pl;
					const char *rest = strstr(sql.data, " FOREIGN KEY (");

					foreach(pl, cm_partitions_of(target))
					{
						Oid			part = lfirst_oid(pl);
						StringInfoData leaf;

						if (get_rel_relkind(part) != RELKIND_RELATION ||
							OidIsValid(get_relation_constraint_oid(part, SPI_getvalue(tup, desc, 12), true)))
							continue;
						initStringInfo(&leaf);
						appendStringInfo(&leaf, "ALTER TABLE %s ADD CONSTRAINT %s%s NOT VALID",
										 cm_qualified_relname(part), conname, rest);
						cm_ddl_with_retry(leaf.data);
						resetStringInfo(&leaf);
						appendStringInfo(&leaf, "ALTER TABLE %s VALIDATE CONSTRAINT %s",
										 cm_qualified_relname(part), conname);
						exec_ddl(leaf.data);
						CommandCounterIncrement();
					}
				}
				validated = false;
			}
			/* locks the referenced table, maybe a busy shared one: briefly */
			cm_ddl_with_retry(sql.data);
			if (validated)
			{
				resetStringInfo(&sql);
				appendStringInfo(&sql, "ALTER TABLE %s VALIDATE CONSTRAINT %s", qtarget, conname);
				exec_ddl(sql.data);
			}
			CommandCounterIncrement();
		}
	}
	cm_restore_output_settings(nest);
}

List *
clone_owned_sequences(Oid relid)
{
	Oid			types[1] = {OIDOID};
	Datum		values[1] = {ObjectIdGetDatum(relid)};
	SPITupleTable *tt;
	List	   *result = NIL;

	if (SPI_execute_with_args("SELECT d.objid, a.attname, s.seqincrement, a.attidentity::text "
							  "FROM pg_depend d JOIN pg_sequence s ON s.seqrelid = d.objid "
							  "JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid "
							  "WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass "
							  "  AND d.refobjid = $1 AND d.deptype IN ('a', 'i') AND NOT a.attisdropped "
							  "ORDER BY a.attnum",
							  1, types, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "clinic_migrate: sequence lookup failed");
	tt = SPI_tuptable;
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		OwnedSequence *os = palloc(sizeof(OwnedSequence));
		bool		isnull;
		char	   *ident = SPI_getvalue(tt->vals[i], tt->tupdesc, 4);

		os->seq = DatumGetObjectId(SPI_getbinval(tt->vals[i], tt->tupdesc, 1, &isnull));
		os->name = SPI_getvalue(tt->vals[i], tt->tupdesc, 2);
		os->column = pstrdup(quote_identifier(os->name));
		os->increment = DatumGetInt64(SPI_getbinval(tt->vals[i], tt->tupdesc, 3, &isnull));
		os->identity = ident ? ident[0] : '\0';
		result = lappend(result, os);
	}
	return result;
}

Oid
clone_fk_target(TenantPlan *plan, const char *schema, Oid ref)
{
	PlanTable  *rpt = plan_find(plan, ref);

	if (rpt && rpt->position > 0)
		return clone_target_relid(schema, rpt->relname);
	return ref;
}

void
clone_set_sequences(Oid target)
{
	ListCell   *lc;

	foreach(lc, clone_owned_sequences(target))
	{
		OwnedSequence *os = lfirst(lc);
		StringInfoData sql;
		Oid			stype[1] = {OIDOID};
		Datum		sval[1] = {ObjectIdGetDatum(os->seq)};

		/* past the keys, and never back: values handed out stay handed out */
		initStringInfo(&sql);
		appendStringInfo(&sql,
						 "SELECT pg_catalog.setval($1, x.m) FROM (SELECT %s(%s)::bigint AS m FROM %s) x, %s q "
						 "WHERE x.m IS NOT NULL AND (NOT q.is_called OR x.m %s q.last_value)",
						 os->increment > 0 ? "max" : "min", os->column,
						 cm_qualified_relname(target), cm_qualified_relname(os->seq),
						 os->increment > 0 ? ">" : "<");
		if (SPI_execute_with_args(sql.data, 1, stype, sval, NULL, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "clinic_migrate: setval failed");
	}
}

/* attidentity of a column ('\0' when it is not an identity column) */
static char
attidentity(Oid relid, AttrNumber attnum)
{
	HeapTuple	tp = SearchSysCache2(ATTNUM, ObjectIdGetDatum(relid), Int16GetDatum(attnum));
	char		result = '\0';

	if (HeapTupleIsValid(tp))
	{
		result = ((Form_pg_attribute) GETSTRUCT(tp))->attidentity;
		ReleaseSysCache(tp);
	}
	return result;
}

void
clone_switch_sequences(TenantPlan *plan, const char *schema)
{
	int			nest = cm_pin_search_path();

	for (int i = 0; i < plan->ncopied; i++)
	{
		PlanTable  *pt = &plan->tables[i];
		Oid			target = clone_target_relid(schema, pt->relname);
		ListCell   *lc;

		foreach(lc, clone_owned_sequences(pt->relid))
		{
			OwnedSequence *ks = lfirst(lc);
			AttrNumber	att = get_attnum(target, ks->name);
			StringInfoData sql;

			if (att == InvalidAttrNumber)
				continue;
			initStringInfo(&sql);
			appendStringInfo(&sql, "ALTER TABLE %s ", cm_qualified_relname(target));
			if (attidentity(target, att) != '\0')
				appendStringInfo(&sql, "ALTER COLUMN %s DROP IDENTITY, ", quote_identifier(ks->name));
			if (ks->identity != '\0')
				appendStringInfo(&sql, "ALTER COLUMN %s SET DEFAULT clinic_migrate.identity_nextval(%s::pg_catalog.regclass, %s::pg_catalog.name)",
								 quote_identifier(ks->name),
								 quote_literal_cstr(cm_qualified_relname(pt->relid)),
								 quote_literal_cstr(ks->name));
			else
				appendStringInfo(&sql, "ALTER COLUMN %s SET DEFAULT pg_catalog.nextval(%s::pg_catalog.regclass)",
								 quote_identifier(ks->name),
								 quote_literal_cstr(cm_qualified_relname(ks->seq)));
			cm_ddl_with_retry(sql.data);
		}
	}
	cm_restore_output_settings(nest);
}

/* a column whose default draws from a sequence it does not own */
typedef struct SharedSeqUse
{
	Oid			target;			/* the tenant's table */
	char	   *column;			/* unquoted */
	Oid			seq;			/* the shared sequence */
	Oid			tenant_seq;		/* its tenant's counterpart, once known */
	char	   *expr;			/* the column's default, search_path pinned */
} SharedSeqUse;

/*
 * The tenant's sequence for shared sequence seq: the one its owner column's
 * copy owns (a serial another planned table draws from too), or a copy made
 * now in the tenant's schema of a sequence of the source schema that no
 * column owns; InvalidOid when it stays shared (a sequence elsewhere).
 */
static Oid
tenant_sequence_for(TenantPlan *plan, const char *schema, Oid seq)
{
	Oid			types[1] = {OIDOID};
	Datum		values[1] = {ObjectIdGetDatum(seq)};
	Oid			owner_rel = InvalidOid;
	AttrNumber	owner_att = 0;
	PlanTable  *pt;

	if (SPI_execute_with_args("SELECT d.refobjid, d.refobjsubid FROM pg_depend d "
							  "WHERE d.classid = 'pg_class'::regclass AND d.objid = $1 "
							  "AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i') LIMIT 1",
							  1, types, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "clinic_migrate: sequence owner lookup failed");
	if (SPI_processed > 0)
	{
		bool		isnull;

		owner_rel = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		owner_att = DatumGetInt16(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	}
	if (OidIsValid(owner_rel))
	{
		ListCell   *lc;
		Oid			target;
		char	   *col;

		pt = plan_find(plan, owner_rel);
		if (pt == NULL || pt->position == 0)
			return InvalidOid;
		target = clone_target_relid(schema, pt->relname);
		col = get_attname(owner_rel, owner_att, true);
		if (!OidIsValid(target) || col == NULL)
			return InvalidOid;
		foreach(lc, clone_owned_sequences(target))
		{
			OwnedSequence *os = lfirst(lc);

			if (strcmp(os->name, col) == 0)
				return os->seq;
		}
		return InvalidOid;
	}
	if (get_rel_namespace(seq) != plan->source_nsp)
		return InvalidOid;
	{
		Oid			nsp = get_namespace_oid(schema, false);
		Oid			mine = get_relname_relid(get_rel_name(seq), nsp);
		StringInfoData sql;
		char	   *qseq = quote_qualified_identifier(schema, get_rel_name(seq));

		if (OidIsValid(mine))
			return get_rel_relkind(mine) == RELKIND_SEQUENCE ? mine : InvalidOid;
		if (SPI_execute_with_args("SELECT format_type(seqtypid, NULL), seqincrement, seqmin, seqmax, seqstart, "
								  "seqcache, seqcycle FROM pg_sequence WHERE seqrelid = $1",
								  1, types, values, NULL, true, 0) != SPI_OK_SELECT || SPI_processed != 1)
			elog(ERROR, "clinic_migrate: sequence %u not found", seq);
		initStringInfo(&sql);
		appendStringInfo(&sql, "CREATE SEQUENCE %s AS %s INCREMENT BY %s MINVALUE %s MAXVALUE %s "
						 "START WITH %s CACHE %s %s", qseq,
						 SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1),
						 SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2),
						 SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3),
						 SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4),
						 SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 5),
						 SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 6),
						 strcmp(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 7), "t") == 0 ? "CYCLE" : "NO CYCLE");
		exec_ddl(sql.data);
		CommandCounterIncrement();
		mine = get_relname_relid(get_rel_name(seq), nsp);
		/* whoever may take values of the shared sequence may take the tenant's */
		copy_sequence_grants(seq, qseq);
		return mine;
	}
}

/*
 * The columns of the tenant's tables whose default draws from a sequence
 * they do not own: several planned tables drawing from one sequence draw
 * from one sequence of the tenant's after finalize.
 */
static List *
shared_sequence_uses(TenantPlan *plan, const char *schema)
{
	List	   *uses = NIL;

	for (int i = 0; i < plan->ncopied; i++)
	{
		PlanTable  *pt = &plan->tables[i];
		Oid			target = clone_target_relid(schema, pt->relname);
		Oid			types[1] = {OIDOID};
		Datum		values[1] = {ObjectIdGetDatum(target)};
		SPITupleTable *tt;
		uint64		n;

		if (!OidIsValid(target))
			continue;
		if (SPI_execute_with_args("SELECT a.attname, d.refobjid, pg_get_expr(ad.adbin, ad.adrelid) "
								  "FROM pg_attrdef ad JOIN pg_attribute a ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum "
								  "JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid "
								  "  AND d.refclassid = 'pg_class'::regclass "
								  "JOIN pg_class s ON s.oid = d.refobjid AND s.relkind = 'S' "
								  "WHERE ad.adrelid = $1 AND NOT a.attisdropped AND a.attidentity = '' "
								  "  AND NOT EXISTS (SELECT 1 FROM pg_depend o WHERE o.classid = 'pg_class'::regclass "
								  "      AND o.objid = s.oid AND o.refclassid = 'pg_class'::regclass "
								  "      AND o.refobjid = a.attrelid AND o.refobjsubid = a.attnum) "
								  "ORDER BY a.attnum",
								  1, types, values, NULL, true, 0) != SPI_OK_SELECT)
			elog(ERROR, "clinic_migrate: sequence default lookup failed");
		tt = SPI_tuptable;
		n = SPI_processed;
		for (uint64 r = 0; r < n; r++)
		{
			SharedSeqUse *u = palloc0(sizeof(SharedSeqUse));
			bool		isnull;

			u->target = target;
			u->column = SPI_getvalue(tt->vals[r], tt->tupdesc, 1);
			u->seq = DatumGetObjectId(SPI_getbinval(tt->vals[r], tt->tupdesc, 2, &isnull));
			u->expr = SPI_getvalue(tt->vals[r], tt->tupdesc, 3);
			uses = lappend(uses, u);
		}
	}
	return uses;
}

/* "nextval('<seq>'::regclass)" as pg_get_expr writes it with search_path pinned */
static char *
nextval_text(Oid seq)
{
	return psprintf("nextval(%s::regclass)", quote_literal_cstr(cm_qualified_relname(seq)));
}

/* the default expr with every call of nextval(from) made a call of nextval(to) */
static char *
replace_nextval(const char *expr, Oid from, Oid to)
{
	const char *old = nextval_text(from);
	const char *new = nextval_text(to);
	StringInfoData buf;
	const char *p = expr;
	const char *hit;

	initStringInfo(&buf);
	while ((hit = strstr(p, old)) != NULL)
	{
		appendBinaryStringInfo(&buf, p, hit - p);
		appendStringInfoString(&buf, new);
		p = hit + strlen(old);
	}
	appendStringInfoString(&buf, p);
	return buf.data;
}

/* point the columns at the tenant's sequences; set those past every column's values */
static void
restore_shared_sequences(TenantPlan *plan, const char *schema, List *uses)
{
	ListCell   *lc;
	List	   *done = NIL;

	foreach(lc, uses)
	{
		SharedSeqUse *u = lfirst(lc);
		char	   *expr;

		u->tenant_seq = tenant_sequence_for(plan, schema, u->seq);
		if (!OidIsValid(u->tenant_seq))
			continue;
		expr = replace_nextval(u->expr, u->seq, u->tenant_seq);
		if (strcmp(expr, u->expr) == 0)
		{
			u->tenant_seq = InvalidOid;
			continue;
		}
		exec_ddl(psprintf("ALTER TABLE %s ALTER COLUMN %s SET DEFAULT %s", cm_qualified_relname(u->target),
						  quote_identifier(u->column), expr));
	}
	CommandCounterIncrement();
	/* each tenant sequence past the highest value any of its columns holds */
	foreach(lc, uses)
	{
		SharedSeqUse *u = lfirst(lc);
		StringInfoData sql;
		ListCell   *oc;
		Oid			stype[1] = {OIDOID};
		Datum		sval[1];
		int			n = 0;

		if (!OidIsValid(u->tenant_seq) || list_member_oid(done, u->tenant_seq))
			continue;
		done = lappend_oid(done, u->tenant_seq);
		initStringInfo(&sql);
		appendStringInfoString(&sql, "SELECT pg_catalog.setval($1::pg_catalog.regclass, x.m::bigint) FROM (SELECT max(v) AS m FROM (");
		foreach(oc, uses)
		{
			SharedSeqUse *o = lfirst(oc);

			if (o->tenant_seq != u->tenant_seq)
				continue;
			appendStringInfo(&sql, "%sSELECT max(%s)::numeric AS v FROM %s", n++ ? " UNION ALL " : "",
							 quote_identifier(o->column), cm_qualified_relname(o->target));
		}
		/* and the column that owns it, if one of the tenant's does */
		{
			Oid			types[1] = {OIDOID};
			Datum		values[1] = {ObjectIdGetDatum(u->tenant_seq)};

			if (SPI_execute_with_args("SELECT d.refobjid, a.attname FROM pg_depend d "
									  "JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid "
									  "WHERE d.classid = 'pg_class'::regclass AND d.objid = $1 "
									  "AND d.refclassid = 'pg_class'::regclass AND d.deptype = 'a'",
									  1, types, values, NULL, true, 0) == SPI_OK_SELECT && SPI_processed > 0)
			{
				bool		isnull;
				Oid			rel = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));

				appendStringInfo(&sql, " UNION ALL SELECT max(%s)::numeric FROM %s",
								 quote_identifier(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2)),
								 cm_qualified_relname(rel));
			}
		}
		appendStringInfo(&sql, ") y) x, %s q WHERE x.m IS NOT NULL AND (NOT q.is_called OR x.m > q.last_value)",
						 cm_qualified_relname(u->tenant_seq));
		sval[0] = ObjectIdGetDatum(u->tenant_seq);
		if (SPI_execute_with_args(sql.data, 1, stype, sval, NULL, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "clinic_migrate: setval of a shared sequence failed");
	}
}

void
clone_restore_sequences(TenantPlan *plan, const char *schema)
{
	int			nest = cm_pin_search_path();
	List	   *lock = NIL;
	List	   *uses = shared_sequence_uses(plan, schema);
	ListCell   *uc;

	foreach(uc, uses)
		lock = list_append_unique_oid(lock, ((SharedSeqUse *) lfirst(uc))->target);

	/*
	 * No key may be taken between reading the highest and switching: every
	 * table that switches is locked first, all at once (the caller reads in
	 * READ COMMITTED, so after this lock).
	 */
	for (int i = 0; i < plan->ncopied; i++)
	{
		PlanTable  *pt = &plan->tables[i];
		Oid			target = clone_target_relid(schema, pt->relname);
		ListCell   *lc;

		foreach(lc, clone_owned_sequences(pt->relid))
		{
			OwnedSequence *ks = lfirst(lc);
			AttrNumber	att = get_attnum(target, ks->name);

			if (att != InvalidAttrNumber && attidentity(target, att) == '\0')
			{
				lock = list_append_unique_oid(lock, target);
				/* SET DEFAULT reaches the partitions too: locked with it */
				lock = list_concat_unique_oid(lock, cm_partitions_of(target));
				break;
			}
		}
	}
	cm_lock_relations(lock, AccessExclusiveLock, true);

	for (int i = 0; i < plan->ncopied; i++)
	{
		PlanTable  *pt = &plan->tables[i];
		Oid			target = clone_target_relid(schema, pt->relname);
		List	   *kss = clone_owned_sequences(pt->relid);
		ListCell   *lc;

		foreach(lc, kss)
		{
			OwnedSequence *ks = lfirst(lc);
			AttrNumber	att = get_attnum(target, ks->name);
			const char *qcol = quote_identifier(ks->name);
			char	   *qtarget = cm_qualified_relname(target);
			StringInfoData sql;

			if (att == InvalidAttrNumber || attidentity(target, att) != '\0')
				continue;
			initStringInfo(&sql);
			if (ks->identity != '\0')
			{
				Oid			types[1] = {OIDOID};
				Datum		values[1] = {ObjectIdGetDatum(ks->seq)};
				SPITupleTable *tt;
				int64		inc;
				char	   *start;

				/* (the identity takes the column's type) */
				if (SPI_execute_with_args("SELECT format_type(seqtypid, NULL), seqincrement, seqmin, seqmax, "
										  "seqcache, seqcycle, seqstart FROM pg_sequence WHERE seqrelid = $1",
										  1, types, values, NULL, true, 0) != SPI_OK_SELECT ||
					SPI_processed != 1)
					elog(ERROR, "clinic_migrate: sequence %u not found", ks->seq);
				tt = SPI_tuptable;
				inc = pg_strtoint64(SPI_getvalue(tt->vals[0], tt->tupdesc, 2));
				appendStringInfo(&sql, "SELECT coalesce(%s(%s)::numeric + %s, %s)::text FROM %s",
								 inc > 0 ? "max" : "min", qcol, SPI_getvalue(tt->vals[0], tt->tupdesc, 2),
								 SPI_getvalue(tt->vals[0], tt->tupdesc, 7), qtarget);
				start = query_text(sql.data, 0, NULL, NULL);
				resetStringInfo(&sql);
				appendStringInfo(&sql, "ALTER TABLE %s ALTER COLUMN %s DROP DEFAULT, ALTER COLUMN %s ADD GENERATED %s AS IDENTITY "
								 "(INCREMENT BY %s MINVALUE %s MAXVALUE %s START WITH %s CACHE %s %s)",
								 qtarget, qcol, qcol, ks->identity == ATTRIBUTE_IDENTITY_ALWAYS ? "ALWAYS" : "BY DEFAULT",
								 SPI_getvalue(tt->vals[0], tt->tupdesc, 2),
								 SPI_getvalue(tt->vals[0], tt->tupdesc, 3), SPI_getvalue(tt->vals[0], tt->tupdesc, 4),
								 start, SPI_getvalue(tt->vals[0], tt->tupdesc, 5),
								 strcmp(SPI_getvalue(tt->vals[0], tt->tupdesc, 6), "t") == 0 ? "CYCLE" : "NO CYCLE");
				exec_ddl(sql.data);
			}
			else
			{
				/* the tenant's own serial sequence, made when its table was */
				ListCell   *oc;
				OwnedSequence *own = NULL;

				foreach(oc, clone_owned_sequences(target))
				{
					OwnedSequence *os = lfirst(oc);

					if (strcmp(os->column, qcol) == 0)
						own = os;
				}
				if (own == NULL)
					continue;	/* it shares a sequence it does not own: nothing to restore */
				appendStringInfo(&sql, "ALTER TABLE %s ALTER COLUMN %s SET DEFAULT pg_catalog.nextval(%s::pg_catalog.regclass)",
								 qtarget, qcol, quote_literal_cstr(cm_qualified_relname(own->seq)));
				exec_ddl(sql.data);
			}
		}
		if (list_member_oid(lock, target))
			clone_set_sequences(target);
	}
	restore_shared_sequences(plan, schema, uses);
	cm_restore_output_settings(nest);
}

List *
clone_column_sequences(Oid relid)
{
	SPITupleTable *tt;
	uint64		n;
	List	   *result = NIL;
	Oid			fn = LookupFuncName(list_make2(makeString(CM_SCHEMA), makeString("identity_nextval")),
									-1, NULL, true);

	/*
	 * Per column with a sequence behind it: its identity sequence; else the
	 * sequence its default reads; else, for identity_nextval(table, column),
	 * that table's identity sequence.
	 */
	if (SPI_execute_with_args(
							  "SELECT a.attname, "
							  "  (SELECT d.objid FROM pg_depend d WHERE d.classid = 'pg_class'::regclass "
							  "     AND d.refclassid = 'pg_class'::regclass AND d.refobjid = a.attrelid "
							  "     AND d.refobjsubid = a.attnum AND d.deptype = 'i' LIMIT 1), "
							  "  (SELECT d.refobjid FROM pg_depend d JOIN pg_class c ON c.oid = d.refobjid "
							  "     WHERE d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid "
							  "       AND d.refclassid = 'pg_class'::regclass AND c.relkind = 'S' LIMIT 1), "
							  "  (SELECT d.refobjid FROM pg_depend d JOIN pg_class c ON c.oid = d.refobjid "
							  "     WHERE d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid "
							  "       AND d.refclassid = 'pg_class'::regclass AND c.relkind IN ('r', 'p') "
							  "       AND EXISTS (SELECT 1 FROM pg_depend f WHERE f.classid = 'pg_attrdef'::regclass "
							  "                   AND f.objid = ad.oid AND f.refclassid = 'pg_proc'::regclass "
							  "                   AND f.refobjid = $2) LIMIT 1) "
							  "FROM pg_attribute a LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum "
							  "WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped "
							  "ORDER BY a.attnum",
							  2, (Oid[]) {OIDOID, OIDOID},
							  (Datum[]) {ObjectIdGetDatum(relid), ObjectIdGetDatum(fn)},
							  NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "clinic_migrate: sequence lookup failed");
	tt = SPI_tuptable;
	n = SPI_processed;
	for (uint64 i = 0; i < n; i++)
	{
		bool		isnull;
		Datum		d;
		Oid			seq = InvalidOid;
		char	   *col = SPI_getvalue(tt->vals[i], tt->tupdesc, 1);

		d = SPI_getbinval(tt->vals[i], tt->tupdesc, 2, &isnull);
		if (!isnull)
			seq = DatumGetObjectId(d);
		if (!OidIsValid(seq))
		{
			d = SPI_getbinval(tt->vals[i], tt->tupdesc, 3, &isnull);
			if (!isnull)
				seq = DatumGetObjectId(d);
		}
		if (!OidIsValid(seq))
		{
			d = SPI_getbinval(tt->vals[i], tt->tupdesc, 4, &isnull);
			if (!isnull)
			{
				Oid			shared = DatumGetObjectId(d);
				AttrNumber	att = get_attnum(shared, col);

				if (att != InvalidAttrNumber)
					seq = getIdentitySequence(shared, att, true);
			}
		}
		if (OidIsValid(seq))
		{
			OwnedSequence *os = palloc(sizeof(OwnedSequence));
			HeapTuple	stup = SearchSysCache1(SEQRELID, ObjectIdGetDatum(seq));

			os->seq = seq;
			os->name = pstrdup(col);
			os->column = pstrdup(quote_identifier(col));
			os->increment = 1;
			os->identity = '\0';
			if (HeapTupleIsValid(stup))
			{
				os->increment = ((Form_pg_sequence) GETSTRUCT(stup))->seqincrement;
				ReleaseSysCache(stup);
			}
			result = lappend(result, os);
		}
	}
	return result;
}

void
cm_registry_sync(const char *tenant, const char *state, const char *location)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	const char *scol = cm_registry_schema_column;
	const char *stcol = cm_registry_status_column;

	if ((scol == NULL || scol[0] == '\0') && (stcol == NULL || stcol[0] == '\0'))
		return;
	if (cm_registry_table == NULL || cm_registry_table[0] == '\0')
		return;

	/*
	 * The application's own table: in a subtransaction with a short
	 * lock_timeout, so that a locked registry row delays nothing and a
	 * misconfigured column costs a warning, not the step.
	 */
	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		TenantInfo	info;
		Oid			nsp;
		Oid			reg;
		StringInfoData sql;
		Oid			types[3] = {TEXTOID, TEXTOID, TEXTOID};
		Datum		values[3];
		int			nest = NewGUCNestLevel();

		(void) set_config_option("lock_timeout", "200", PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_SAVE, true, 0, false);
		clone_tenant_info(tenant, &info);
		nsp = get_namespace_oid(info.exists ? info.source_schema : cm_source_schema, true);
		reg = OidIsValid(nsp) ? get_relname_relid(cm_registry_table, nsp) : InvalidOid;
		if (OidIsValid(reg))
		{
			initStringInfo(&sql);
			appendStringInfo(&sql, "UPDATE %s SET ", cm_qualified_relname(reg));
			if (scol && scol[0])
				appendStringInfo(&sql, "%s = $2", quote_identifier(scol));
			if (stcol && stcol[0])
				appendStringInfo(&sql, "%s%s = $3", (scol && scol[0]) ? ", " : "",
								 quote_identifier(stcol));
			appendStringInfo(&sql, " WHERE %s::text = $1",
							 quote_identifier(info.exists ? info.tenant_column : cm_tenant_column));
			values[0] = CStringGetTextDatum(tenant);
			values[1] = CStringGetTextDatum(location);
			values[2] = CStringGetTextDatum(state);
			if (SPI_execute_with_args(sql.data, 3, types, values, NULL, false, 0) < 0)
				elog(ERROR, "clinic_migrate: registry update failed");
		}
		AtEOXact_GUC(true, nest);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
		ereport(WARNING,
				(errmsg("could not record tenant \"%s\" as %s in the registry: %s",
						tenant, state, edata->message),
				 errhint("Check clinic_migrate.registry_schema_column and registry_status_column.")));
	}
	PG_END_TRY();
}

/*
 * create_tenant_schema: the tenant's schema with the full structure
 * (indexes, keys, foreign keys), empty; idempotent.  *tenant becomes the
 * canonical id.  Returns the schema's name.  SPI connected.
 */
char *
clone_create_schema(char **tenant_p)
{
	char	   *tenant = *tenant_p;
	CmSettings	s;
	TenantPlan *plan;
	char	   *schema;
	int64		run_id;

	cm_current_settings(&s);
	plan = clone_plan_for_tenant(&tenant, &s, CurrentMemoryContext);
	if (!cm_lock_tenant(tenant, false, false))
		ereport(ERROR,
				(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
				 errmsg("tenant \"%s\" is being migrated or rolled back by another session", tenant),
				 errhint("Wait for it to finish; clinic_migrate.status shows its progress.")));
	plan_check_copyable(plan);
	clone_check_privileges(plan, tenant);
	clone_check_tenant_exists(plan, tenant);
	schema = clone_prepare_schema(tenant, plan, &s, false);
	for (int i = 0; i < plan->ncopied; i++)
	{
		clone_finish_table(&plan->tables[i], schema);
		cm_state_exec_tenant("UPDATE clinic_migrate.tenant_tables SET indexed = true "
							 "WHERE tenant_id = $1", tenant);
	}
	clone_finish_schema(plan, schema);
	clone_finish_views(plan, schema);
	run_id = cm_run_start(tenant, schema, "create_schema",
						  GetUserNameFromId(GetUserId(), false), 0);
	cm_run_finish(run_id, "completed", 0, NULL, NULL);
	*tenant_p = tenant;
	return schema;
}
