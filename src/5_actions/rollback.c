/*-------------------------------------------------------------------------
 * rollback.c
 *	  rollback_tenant of a tenant not cut over: drop the tenant's schema and
 *	  clinic_migrate's state of it.  The shared rows are never touched.
 *	  Floor 5 (the actions).  May call: floors 1 to 4.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"

#include "apply.h"
#include "capture.h"
#include "settings.h"
#include "util.h"
#include "locks.h"
#include "runstate.h"
#include "clone.h"
#include "rollback.h"
#include "state.h"

/*
 * DROP SCHEMA ... CASCADE would silently take objects outside the schema
 * with it (a view in public on a tenant table, a foreign key from another
 * schema): refuse and name them instead.
 */
static void
check_no_outside_dependents(Oid nsp, const char *name)
{
	Oid			types[1] = {OIDOID};
	Datum		values[1] = {ObjectIdGetDatum(nsp)};
	StringInfoData list;

	/* each depending object, located by the schema of what it belongs to */
	if (SPI_execute_with_args(
							  "SELECT DISTINCT pg_describe_object(d.classid, d.objid, 0) "
							  "FROM pg_depend d "
							  "WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid IN " CM_RELS_OF_NAMESPACE("$1") " "
							  "  AND d.deptype = 'n' AND coalesce(CASE d.classid "
							  "    WHEN 'pg_class'::regclass THEN "
							  "      (SELECT relnamespace FROM pg_class WHERE oid = d.objid) "
							  "    WHEN 'pg_attrdef'::regclass THEN (SELECT r.relnamespace FROM pg_attrdef a "
							  "      JOIN pg_class r ON r.oid = a.adrelid WHERE a.oid = d.objid) "
							  "    WHEN 'pg_constraint'::regclass THEN "
							  "      (SELECT connamespace FROM pg_constraint WHERE oid = d.objid) "
							  "    WHEN 'pg_trigger'::regclass THEN (SELECT r.relnamespace FROM pg_trigger t "
							  "      JOIN pg_class r ON r.oid = t.tgrelid WHERE t.oid = d.objid) "
							  "    WHEN 'pg_rewrite'::regclass THEN (SELECT r.relnamespace FROM pg_rewrite w "
							  "      JOIN pg_class r ON r.oid = w.ev_class WHERE w.oid = d.objid) "
							  "    WHEN 'pg_policy'::regclass THEN (SELECT r.relnamespace FROM pg_policy p "
							  "      JOIN pg_class r ON r.oid = p.polrelid WHERE p.oid = d.objid) "
							  "    WHEN 'pg_type'::regclass THEN "
							  "      (SELECT typnamespace FROM pg_type WHERE oid = d.objid) "
							  "    WHEN 'pg_statistic_ext'::regclass THEN "
							  "      (SELECT stxnamespace FROM pg_statistic_ext WHERE oid = d.objid) "
							  "  END, 0) <> $1 "
							  "ORDER BY 1 LIMIT 20",
							  1, types, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "clinic_migrate: dependency lookup failed");
	if (SPI_processed == 0)
		return;
	initStringInfo(&list);
	for (uint64 i = 0; i < SPI_processed; i++)
		appendStringInfo(&list, "%s%s", i ? ", " : "",
						 SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1));
	ereport(ERROR,
			(errcode(ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST),
			 errmsg("objects outside schema \"%s\" depend on it", name),
			 errdetail("Depending objects: %s.", list.data),
			 errhint("Drop them, or point them elsewhere, then roll back again; nothing was changed.")));
}

/*
 * Drop the tenant's schema (only if it is still the one we created) and
 * clinic_migrate's state of it.  The caller holds the tenant's migration
 * lock.  Returns true if there was something to drop.
 */
bool
cm_rollback_drop(const char *tenant)
{
	TenantInfo	info;

	/* a replay round in progress finishes first; the next one sees us */
	(void) cm_lock_tenant_kind(tenant, CM_LOCK_APPLY, true, false);
	clone_tenant_info(tenant, &info);
	if (!info.exists)
		return false;
	{
		char	   *name = get_namespace_name(info.schema_oid);

		if (name != NULL && strcmp(name, info.schema_name) == 0)
		{
			StringInfoData sql;
			int			nest;

			if (!pg_namespace_ownercheck(info.schema_oid, GetUserId()))
				ereport(ERROR,
						(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
						 errmsg("permission denied to roll back tenant \"%s\"", tenant),
						 errdetail("Rolling back drops schema \"%s\", which only its owner may do.", name),
						 errhint("Roll back as the owner of schema \"%s\" or a member of its role.", name)));
			check_no_outside_dependents(info.schema_oid, name);
			nest = NewGUCNestLevel();

			/* the list of dropped tables is noise: the schema was ours */
			(void) set_config_option("client_min_messages", "warning", PGC_USERSET,
									 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
			initStringInfo(&sql);
			appendStringInfo(&sql, "DROP SCHEMA %s CASCADE", quote_identifier(name));

			/*
			 * Dropping a table whose foreign key points at a shared table
			 * locks that table exclusively for a moment, and a cut-over
			 * tenant's tables may be busy: never queue for them.
			 */
			cm_ddl_with_retry(sql.data);
			AtEOXact_GUC(true, nest);
		}
	}
	cm_state_exec_tenant("DELETE FROM clinic_migrate.tenants WHERE tenant_id = $1", tenant);
	apply_forget(tenant);
	capture_tenants_changed();	/* writers stop capturing it at our commit */
	return true;
}

/*
 * rollback_tenant of a tenant not cut over, in the caller's session and
 * transaction: the schema is dropped, the state forgotten, the run
 * recorded.  True if there was something to roll back.  SPI connected.
 */
bool
cm_rollback_in_session(const char *tenant)
{
	TenantInfo	info;
	bool		did;
	int64		run_id;

	/*
	 * A transaction-level lock: a running copy holds the session lock, and
	 * we must not drop the schema under it.
	 */
	if (!cm_lock_tenant(tenant, false, false))
		ereport(ERROR,
				(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
				 errmsg("tenant \"%s\" is being migrated by another session", tenant),
				 errhint("Cancel that session's migrate_tenant() (pg_cancel_backend) or wait for it, then roll back.")));
	clone_tenant_info(tenant, &info);
	run_id = cm_run_start(tenant, info.exists ? info.schema_name : NULL, "rollback",
						  GetUserNameFromId(GetUserId(), false), 0);
	did = cm_rollback_drop(tenant);
	if (did)
		cm_registry_sync(tenant, "rolled_back", info.source_schema);
	cm_runs_mark_interrupted(tenant);
	cm_run_finish(run_id, "completed", 0, did ? NULL : "nothing to roll back", NULL);
	return did;
}
