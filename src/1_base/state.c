/*-------------------------------------------------------------------------
 * state.c
 *	  clinic_migrate's bookkeeping tables, read and written through SPI as
 *	  the extension owner.
 *	  Floor 1 (base).  May call: settings, util, runstate, locks.
 *
 * Values are always SPI parameters; the statements themselves are fixed.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/rel.h"
#include "access/table.h"
#include "access/genam.h"
#include "access/xact.h"
#include "utils/snapmgr.h"
#include "utils/guc.h"
#include "utils/syscache.h"
#include "utils/lsyscache.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"

#include "settings.h"
#include "util.h"
#include "locks.h"
#include "runstate.h"
#include "state.h"

/* owner of the clinic_migrate extension in this database */
Oid
cm_extension_owner(void)
{
	static Oid	cached_owner = InvalidOid;
	static Oid	cached_ext = InvalidOid;
	Oid			ext = get_extension_oid("clinic_migrate", true);
	Relation	rel;
	SysScanDesc scan;
	ScanKeyData key;
	HeapTuple	tup;
	Oid			owner = InvalidOid;

	if (!OidIsValid(ext))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("extension \"clinic_migrate\" is not installed in this database"),
				 errhint("Run CREATE EXTENSION clinic_migrate.")));
	if (ext == cached_ext && OidIsValid(cached_owner))
		return cached_owner;
	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_oid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(ext));
	scan = systable_beginscan(rel, ExtensionOidIndexId, true, NULL, 1, &key);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
		owner = ((Form_pg_extension) GETSTRUCT(tup))->extowner;
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	cached_ext = ext;
	cached_owner = owner;
	return owner;
}

int
cm_pin_search_path(void)
{
	int			nest = NewGUCNestLevel();

	(void) set_config_option("search_path", CM_SAFE_SEARCH_PATH, PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);

	/*
	 * Our statements read catalogs and state tables, whose row estimates
	 * (a set-returning function's 1,000, a join of catalogs) often pass
	 * jit_above_cost: compiling took 60 ms of a small tenant's 150.
	 */
	(void) set_config_option("jit", "off", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	return nest;
}

/* in another role's name: a policy that would hide rows fails the statement instead */
static void
no_row_security(void)
{
	(void) set_config_option("row_security", "off", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
}

void
cm_refuse_in_restricted_operation(void)
{
	if (InSecurityRestrictedOperation())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("clinic_migrate cannot start work from a security-restricted operation"),
				 errdetail("A trigger, index expression or check run by replay or maintenance runs with its owner's rights only; work it started would run in a session that has more."),
				 errhint("Call clinic_migrate functions from a session of your own.")));

	/*
	 * A SECURITY DEFINER function (its owner's rights, in another role's
	 * session): a worker connects as the session's user and acts as the
	 * current role, as SET ROLE does, so what it runs could RESET ROLE to
	 * the session's user, which the function itself may not.
	 */
	if (InLocalUserIdChange() && GetUserId() != GetSessionUserId())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("clinic_migrate cannot start work from a SECURITY DEFINER function"),
				 errdetail("Its worker would act as role %s in a session of role %s, which the function may not reach.",
						   GetUserNameFromId(GetUserId(), false), GetUserNameFromId(GetSessionUserId(), false)),
				 errhint("Call clinic_migrate functions from a session of your own.")));
}

void
cm_owner_begin(CmRoleSave *save)
{
	GetUserIdAndSecContext(&save->userid, &save->sec);
	SetUserIdAndSecContext(cm_extension_owner(), save->sec | SECURITY_LOCAL_USERID_CHANGE);
	save->nest = cm_pin_search_path();
	no_row_security();
}

Oid
cm_rel_owner(Oid relid)
{
	HeapTuple	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	Oid			owner;

	if (!HeapTupleIsValid(tup))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("a table clinic_migrate works on (OID %u) was dropped", relid),
				 errhint("Check clinic_migrate.status; roll the tenant back if its tables are gone.")));
	owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);
	return owner;
}

void
cm_table_owner_begin(Oid relid, CmRoleSave *save)
{
	Oid			owner = cm_rel_owner(relid);

	GetUserIdAndSecContext(&save->userid, &save->sec);
	/* as the RI triggers do: the owner's own policies do not hide its rows from us */
	SetUserIdAndSecContext(owner, save->sec | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION | SECURITY_NOFORCE_RLS);
	save->nest = cm_pin_search_path();
	no_row_security();
}

void
cm_role_end(CmRoleSave *save)
{
	AtEOXact_GUC(true, save->nest);
	SetUserIdAndSecContext(save->userid, save->sec);
}

int
cm_state_exec(const char *sql, int nargs, Oid *argtypes, Datum *values,
			  const char *nulls, long count)
{
	CmRoleSave	save;
	int			ret;

	/*
	 * Switch to the owner, with the search_path pinned, for this statement
	 * only; an error unwinds the switch with the (sub)transaction.
	 */
	cm_owner_begin(&save);
	ret = SPI_execute_with_args(sql, nargs, argtypes, values, nulls, false, count);
	cm_role_end(&save);
	if (ret < 0)
		elog(ERROR, "clinic_migrate: SPI error %d in \"%s\"", ret, sql);
	return ret;
}

int
cm_state_exec_tenant(const char *sql, const char *tenant)
{
	Oid			t = TEXTOID;
	Datum		v = CStringGetTextDatum(tenant);

	return cm_state_exec(sql, 1, &t, &v, NULL, 0);
}

int64
cm_run_start(const char *tenant, const char *schema, const char *action,
			 const char *started_by, int pid)
{
	Oid			types[5] = {TEXTOID, NAMEOID, TEXTOID, NAMEOID, INT4OID};
	Datum		values[5];
	char		nulls[5] = {' ', ' ', ' ', ' ', ' '};
	bool		isnull;

	values[0] = CStringGetTextDatum(tenant);
	if (schema)
		values[1] = DirectFunctionCall1(namein, CStringGetDatum(schema));
	else
		nulls[1] = 'n';
	values[2] = CStringGetTextDatum(action);
	values[3] = DirectFunctionCall1(namein, CStringGetDatum(started_by));
	values[4] = Int32GetDatum(pid);
	if (pid == 0)
		nulls[4] = 'n';
	/* whoever starts a run holds the tenant's lock: a run still 'running' died */
	(void) cm_runs_mark_interrupted(tenant);
	cm_state_exec("INSERT INTO clinic_migrate.runs "
				  "(tenant_id, schema_name, action, status, started_by, worker_pid) "
				  "VALUES ($1, $2, $3, 'running', $4, $5) RETURNING run_id",
				  5, types, values, nulls, 0);
	return DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
									   SPI_tuptable->tupdesc, 1, &isnull));
}

void
cm_run_finish(int64 run_id, const char *status, int64 rows,
			  const char *error, const char *sqlstate)
{
	Oid			types[5] = {INT8OID, TEXTOID, INT8OID, TEXTOID, TEXTOID};
	Datum		values[5];
	char		nulls[5] = {' ', ' ', ' ', ' ', ' '};

	values[0] = Int64GetDatum(run_id);
	values[1] = CStringGetTextDatum(status);
	values[2] = Int64GetDatum(rows);
	if (error)
		values[3] = CStringGetTextDatum(error);
	else
		nulls[3] = 'n';
	if (sqlstate)
		values[4] = CStringGetTextDatum(sqlstate);
	else
		nulls[4] = 'n';
	cm_state_exec("UPDATE clinic_migrate.runs SET status = $2, rows_copied = $3, "
				  "error = $4, sqlstate = $5, completed_at = clock_timestamp() "
				  "WHERE run_id = $1",
				  5, types, values, nulls, 0);
}

int
cm_runs_mark_interrupted(const char *tenant)
{
	cm_state_exec_tenant("UPDATE clinic_migrate.runs SET status = 'interrupted', "
						 "completed_at = clock_timestamp(), "
						 "error = 'the run stopped before it finished (cancel, crash or restart)' "
						 "WHERE tenant_id = $1 AND status = 'running'",
						 tenant);
	return (int) SPI_processed;
}

void
cm_tenant_record_error(const char *tenant, const char *msg)
{
	Oid			types[2] = {TEXTOID, TEXTOID};
	Datum		values[2];

	values[0] = CStringGetTextDatum(tenant);
	values[1] = CStringGetTextDatum(msg);
	/*
	 * Only a copy under way fails: a tenant whose run was refused before
	 * it began copying (schema_created, copied, cut over by the time a
	 * queued job ran) keeps its state, with the error.
	 */
	cm_state_exec("UPDATE clinic_migrate.tenants SET last_error = $2, state = CASE WHEN state "
				  "IN ('copying', 'failed') THEN 'failed' ELSE state END WHERE tenant_id = $1",
				  2, types, values, NULL, 0);
}

void
cm_tenant_record_last_error(const char *tenant, const char *msg)
{
	Oid			types[2] = {TEXTOID, TEXTOID};
	Datum		values[2];

	values[0] = CStringGetTextDatum(tenant);
	values[1] = CStringGetTextDatum(msg);
	cm_state_exec("UPDATE clinic_migrate.tenants SET last_error = $2 WHERE tenant_id = $1",
				  2, types, values, NULL, 0);
}

void
cm_begin_txn(void)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
}

void
cm_begin_txn_read_committed(void)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	/* before the first snapshot, as SET TRANSACTION ISOLATION LEVEL does */
	XactIsoLevel = XACT_READ_COMMITTED;
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
}

void
cm_end_txn(void)
{
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
}

void
cm_bgworker_session(const char *appname)
{
	SetConfigOption("search_path", CM_SAFE_SEARCH_PATH, PGC_USERSET, PGC_S_SESSION);
	SetConfigOption("application_name", appname, PGC_USERSET, PGC_S_SESSION);
	SetConfigOption("statement_timeout", "0", PGC_USERSET, PGC_S_SESSION);
	SetConfigOption("lock_timeout", "0", PGC_USERSET, PGC_S_SESSION);
	SetConfigOption("idle_in_transaction_session_timeout", "0", PGC_USERSET, PGC_S_SESSION);
	/* see cm_pin_search_path: compiling costs more than it saves here */
	SetConfigOption("jit", "off", PGC_USERSET, PGC_S_SESSION);
	pgstat_report_appname(appname);
}

bool
cm_rls_table_before(Oid relid, bool *rls, bool *force)
{
	Oid			t = OIDOID;
	Datum		v = ObjectIdGetDatum(relid);
	bool		isnull;
	Oid			nsp = get_namespace_oid("clinic_migrate", true);

	/* the library may be newer than the extension's SQL (before ALTER EXTENSION UPDATE) */
	if (!OidIsValid(nsp) || !OidIsValid(get_relname_relid("tenant_rls", nsp)))
		return false;
	cm_state_exec("SELECT r.rls_before, r.force_before FROM clinic_migrate.tenant_rls r "
				  "WHERE r.table_name OPERATOR(pg_catalog.=) $1::pg_catalog.regclass",
				  1, &t, &v, NULL, 0);
	if (SPI_processed == 0)
		return false;
	*rls = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	*force = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	return true;
}
