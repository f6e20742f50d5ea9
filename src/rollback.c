/*-------------------------------------------------------------------------
 * rollback.c
 *	  rollback_tenant: drop the tenant's schema and clinic_migrate's state
 *	  of it.  The shared rows are never touched.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"

#include "clinic_migrate.h"
#include "clone.h"
#include "state.h"

/*
 * clinic_migrate.rollback_tenant(tenant): true if there was something to
 * roll back.  Idempotent; every call is recorded in runs.
 */
PG_FUNCTION_INFO_V1(cm_rollback_tenant);
Datum
cm_rollback_tenant(PG_FUNCTION_ARGS)
{
	char	   *tenant = cm_tenant_arg(fcinfo, 0);
	TenantInfo	info;
	bool		did = false;
	int64		run_id;

	SPI_connect();

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
	if (info.exists)
	{
		char	   *name = get_namespace_name(info.schema_oid);

		/* drop the schema only if it is still the one we created */
		if (name != NULL && strcmp(name, info.schema_name) == 0)
		{
			StringInfoData sql;

			int			nest = NewGUCNestLevel();

			/* the list of dropped tables is noise: the schema was ours */
			(void) set_config_option("client_min_messages", "warning", PGC_USERSET,
									 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
			initStringInfo(&sql);
			appendStringInfo(&sql, "DROP SCHEMA %s CASCADE", quote_identifier(name));
			if (SPI_execute(sql.data, false, 0) != SPI_OK_UTILITY)
				elog(ERROR, "clinic_migrate: could not drop schema %s", name);
			AtEOXact_GUC(true, nest);
		}
		cm_state_exec_tenant("DELETE FROM clinic_migrate.tenants WHERE tenant_id = $1", tenant);
		did = true;
	}
	cm_runs_mark_interrupted(tenant);
	cm_run_finish(run_id, "completed", 0, did ? NULL : "nothing to roll back", NULL);
	SPI_finish();
	PG_RETURN_BOOL(did);
}
