/*-------------------------------------------------------------------------
 * routing.c
 *	  Floor 7 (the SQL surface): routing, what the application calls to
 *	  reach a tenant wherever its rows live: tenant_schema, set_tenant, and
 *	  identity_nextval (the default of a tenant's identity columns between
 *	  cutover and finalize).  Granted to PUBLIC.  This is where a tenant's
 *	  location is told to the application: a schema of this database today.
 *	  May call: every floor below.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/sequence.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "catalog/dependency.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"

#include "settings.h"
#include "util.h"
#include "state.h"
#include "plan.h"
#include "clone.h"
#include "capture.h"

/* clinic_migrate.tenant_schema(tenant): where the tenant's rows live now */
PG_FUNCTION_INFO_V1(cm_tenant_schema);
Datum
cm_tenant_schema(PG_FUNCTION_ARGS)
{
	char	   *tenant = cm_tenant_arg(fcinfo, 0);
	Name		result = palloc0(NAMEDATALEN);

	namestrcpy(result, capture_tenant_location(tenant, NULL));
	PG_RETURN_NAME(result);
}

/*
 * clinic_migrate.set_tenant(tenant, is_local): search_path to where the
 * tenant's rows live, then the source schema (its shared tables), and
 * app.current_tenant to the tenant; for the transaction only with is_local
 * (poolers in transaction mode).  Returns the schema.
 */
PG_FUNCTION_INFO_V1(cm_set_tenant);
Datum
cm_set_tenant(PG_FUNCTION_ARGS)
{
	char	   *tenant = cm_tenant_arg(fcinfo, 0);
	bool		is_local = PG_ARGISNULL(1) ? false : PG_GETARG_BOOL(1);
	const char *shared;
	const char *where = capture_tenant_location(tenant, &shared);
	StringInfoData path;
	Name		result = palloc0(NAMEDATALEN);

	initStringInfo(&path);
	appendStringInfoString(&path, quote_identifier(where));
	if (strcmp(where, shared) != 0)
		appendStringInfo(&path, ", %s", quote_identifier(shared));
	(void) set_config_option("search_path", path.data, PGC_USERSET, PGC_S_SESSION,
							 is_local ? GUC_ACTION_LOCAL : GUC_ACTION_SET, true, 0, false);
	(void) set_config_option("app.current_tenant", tenant, PGC_USERSET, PGC_S_SESSION,
							 is_local ? GUC_ACTION_LOCAL : GUC_ACTION_SET, true, 0, false);
	namestrcpy(result, where);
	PG_RETURN_NAME(result);
}

/*
 * clinic_migrate.identity_nextval(table, column): the next value of a
 * table's identity column, for the default of a cut-over tenant's copy of
 * that column.  As for the identity itself, INSERT on the column is the
 * privilege it takes.
 */
PG_FUNCTION_INFO_V1(cm_identity_nextval);
Datum
cm_identity_nextval(PG_FUNCTION_ARGS)
{
	Oid			rel = PG_GETARG_OID(0);
	Name		col = PG_GETARG_NAME(1);
	AttrNumber	att = get_attnum(rel, NameStr(*col));
	Oid			seq;

	if (att == InvalidAttrNumber)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("column \"%s\" of relation %u does not exist", NameStr(*col), rel)));
	if (pg_attribute_aclcheck(rel, att, GetUserId(), ACL_INSERT) != ACLCHECK_OK &&
		pg_class_aclcheck(rel, GetUserId(), ACL_INSERT) != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for table %s", cm_qualified_relname(rel)),
				 errdetail("Drawing from the identity of column \"%s\" takes INSERT on it.", NameStr(*col))));
	seq = getIdentitySequence(rel, att, true);
	if (!OidIsValid(seq))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("column \"%s\" of %s is not an identity column", NameStr(*col),
						cm_qualified_relname(rel))));
	PG_RETURN_INT64(nextval_internal(seq, false));
}
