/*-------------------------------------------------------------------------
 * sync.c
 *	  The database's sync worker, and sync_now/syncing.
 *
 * Between its copy and its cutover a tenant's schema must follow every
 * change of its shared rows; between its cutover and its finalize the
 * shared rows must follow every change made in its schema, so that a
 * rollback loses nothing.  Both directions use the same log tables: which
 * direction a tenant's entries go is told by its state (see capture.c).
 *
 * One worker per database does this for every tenant, one replay round per
 * tenant with pending changes every clinic_migrate.sync_interval.  It is
 * started by migrate_tenant and cutover when they finish, by
 * clinic_migrate.start_sync(), and exits when no tenant needs it.  A round
 * is one transaction under the tenant's apply lock, so rounds of the
 * worker, of cutover's drain and of sync_now never overlap for a tenant.
 * A failing round records the error in the tenant's last_error and is
 * tried again next time; nothing is lost meanwhile, the log keeps it.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/wait_event.h"

#include "apply.h"
#include "capture.h"
#include "clinic_migrate.h"
#include "clone.h"
#include "plan.h"
#include "state.h"
#include "sync.h"
#include "worker.h"

PGDLLEXPORT void cm_sync_worker_main(Datum main_arg);

static void
sync_sigterm(SIGNAL_ARGS)
{
	int			save_errno = errno;

	cm_got_sigterm = true;
	SetLatch(MyLatch);
	errno = save_errno;
}

int64
cm_sync_tenant_once(const char *tenant)
{
	TenantInfo	info;
	CmSettings	s;
	char	   *t = (char *) tenant;
	TenantPlan *plan;
	int64		applied = 0;

	(void) cm_lock_tenant_kind(tenant, CM_LOCK_APPLY, true, false);
	clone_tenant_info(tenant, &info);
	if (!info.exists)
		return 0;
	if (strcmp(info.state, "copied") != 0 && strcmp(info.state, "cut_over") != 0)
		return 0;
	cm_current_settings(&s);
	plan = clone_plan_for_tenant(&t, &s, CurrentMemoryContext);
	if (strcmp(info.state, "copied") == 0)
		applied = apply_round(tenant, plan, info.schema_name);
	else
		applied = apply_reverse_round(tenant, plan, info.schema_name);
	return applied;
}

int64
cm_sync_tenant_round(const char *tenant)
{
	int64		applied;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	(void) cm_lock_tenant_kind(tenant, CM_LOCK_APPLY, true, false);
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	applied = cm_sync_tenant_once(tenant);
	cm_pause_point("sync_round");
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	return applied;
}

/* the tenants that need rounds (copied or cut over), or NIL */
typedef struct SyncTenant
{
	char	   *tenant;
	char	   *schema;
} SyncTenant;

static List *
tenants_to_sync(MemoryContext cxt, bool *any)
{
	List	   *result = NIL;
	SPITupleTable *tt;
	uint64		n;
	MemoryContext old;
	StringInfoData sql;

	/*
	 * One pass over the logs for every tenant: which copied or cut-over
	 * tenants have changes waiting.  (A round of a tenant with none would
	 * still read its plan from the catalogs.)
	 */
	*any = false;
	cm_state_exec("SELECT quote_ident(relname) FROM pg_class "
				  "WHERE oid IN " CM_RELS_OF_NAMESPACE("'clinic_migrate'::pg_catalog.regnamespace") " "
				  "AND relname LIKE 'log\\_%' "
				  "AND relkind = 'r' ORDER BY relname", 0, NULL, NULL, NULL, 0);
	tt = SPI_tuptable;
	n = SPI_processed;
	initStringInfo(&sql);
	appendStringInfoString(&sql, "SELECT t.tenant_id, t.schema_name::text, true "
						   "FROM clinic_migrate.tenants t WHERE t.state IN ('copied', 'cut_over') "
						   "AND t.tenant_id IN (");
	for (uint64 i = 0; i < n; i++)
		appendStringInfo(&sql, "%sSELECT _cm_tenant FROM clinic_migrate.%s", i ? " UNION " : "",
						 SPI_getvalue(tt->vals[i], tt->tupdesc, 1));
	if (n == 0)
		appendStringInfoString(&sql, "SELECT NULL::text");
	appendStringInfoString(&sql, ") ORDER BY t.tenant_id");

	/*
	 * Only the tenants with changes waiting come back: thousands of copied
	 * tenants with none cost a round one look at each log, not a row each.
	 */
	cm_state_exec("SELECT EXISTS (SELECT FROM clinic_migrate.tenants "
				  "WHERE state IN ('copied', 'cut_over'))", 0, NULL, NULL, NULL, 0);
	{
		bool		isnull;

		*any = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	}
	cm_state_exec(sql.data, 0, NULL, NULL, NULL, 0);
	tt = SPI_tuptable;
	n = SPI_processed;
	old = MemoryContextSwitchTo(cxt);
	for (uint64 i = 0; i < n; i++)
	{
		bool		isnull;
		SyncTenant *st;

		if (!DatumGetBool(SPI_getbinval(tt->vals[i], tt->tupdesc, 3, &isnull)) || isnull)
			continue;
		st = palloc(sizeof(SyncTenant));
		st->tenant = pstrdup(SPI_getvalue(tt->vals[i], tt->tupdesc, 1));
		st->schema = pstrdup(SPI_getvalue(tt->vals[i], tt->tupdesc, 2));
		result = lappend(result, st);
	}
	MemoryContextSwitchTo(old);
	return result;
}

static void
record_sync_error(const char *tenant, const char *msg)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	cm_tenant_record_last_error(tenant, msg);
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
}

void
cm_sync_worker_main(Datum main_arg)
{
	Oid			dboid = DatumGetObjectId(main_arg);
	MemoryContext cxt;
	volatile int idle = 0;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, sync_sigterm);
	BackgroundWorkerUnblockSignals();
	/*
	 * As the bootstrap superuser: a round's bookkeeping acts as the
	 * extension's owner, its statements on the application's tables as their
	 * owners in security-restricted operations (apply.c).  No setting of the
	 * database or role may make a name resolve elsewhere than it must.
	 */
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	SetConfigOption("search_path", CM_SAFE_SEARCH_PATH, PGC_USERSET, PGC_S_SESSION);
	SetConfigOption("application_name", "clinic_migrate sync", PGC_USERSET, PGC_S_SESSION);
	SetConfigOption("DateStyle", "ISO, YMD", PGC_USERSET, PGC_S_SESSION);
	SetConfigOption("TimeZone", "UTC", PGC_USERSET, PGC_S_SESSION);
	SetConfigOption("default_transaction_isolation", "repeatable read", PGC_USERSET, PGC_S_SESSION);
	/* a round lost in a crash loses its log deletions too: it is replayed */
	SetConfigOption("synchronous_commit", "off", PGC_USERSET, PGC_S_SESSION);
	SetConfigOption("statement_timeout", "0", PGC_USERSET, PGC_S_SESSION);
	SetConfigOption("lock_timeout", "0", PGC_USERSET, PGC_S_SESSION);
	SetConfigOption("idle_in_transaction_session_timeout", "0", PGC_USERSET, PGC_S_SESSION);
	pgstat_report_appname("clinic_migrate sync");

	/* one sync worker per database: a second one leaves at once */
	if (!cm_lock_sync_worker(true))
		proc_exit(0);
	cxt = AllocSetContextCreate(TopMemoryContext, "clinic_migrate sync",
								ALLOCSET_DEFAULT_SIZES);
	for (;;)
	{
		List	   *todo = NIL;
		bool		any = false;
		ListCell   *lc;
		int			nsynced = 0;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		if (cm_got_sigterm)
			break;
		MemoryContextReset(cxt);

		/* who needs a round */
		PG_TRY();
		{
			SetCurrentStatementStartTimestamp();
			StartTransactionCommand();
			SPI_connect();
			PushActiveSnapshot(GetTransactionSnapshot());
			if (!OidIsValid(get_extension_oid("clinic_migrate", true)))
				cm_got_sigterm = true;	/* dropped: nothing left to do */
			else
				todo = tenants_to_sync(cxt, &any);
			SPI_finish();
			PopActiveSnapshot();
			CommitTransactionCommand();
		}
		PG_CATCH();
		{
			EmitErrorReport();
			FlushErrorState();
			AbortCurrentTransaction();
			any = true;			/* try again later */
		}
		PG_END_TRY();
		if (cm_got_sigterm)
			break;

		foreach(lc, todo)
		{
			SyncTenant *st = lfirst(lc);
			char		activity[NAMEDATALEN + 64];

			if (cm_got_sigterm)
				break;
			snprintf(activity, sizeof(activity), "clinic_migrate: keeping %s in sync", st->schema);
			pgstat_report_activity(STATE_RUNNING, activity);
			PG_TRY();
			{
				(void) cm_sync_tenant_round(st->tenant);
				nsynced++;
			}
			PG_CATCH();
			{
				ErrorData  *edata;
				MemoryContext ecxt = MemoryContextSwitchTo(cxt);

				EmitErrorReport();
				edata = CopyErrorData();
				FlushErrorState();
				AbortCurrentTransaction();
				MemoryContextSwitchTo(ecxt);
				/* the next round tries again; the error is there to see */
				PG_TRY();
				{
					record_sync_error(st->tenant, edata->message);
				}
				PG_CATCH();
				{
					EmitErrorReport();
					FlushErrorState();
					AbortCurrentTransaction();
				}
				PG_END_TRY();
			}
			PG_END_TRY();
		}
		pgstat_report_activity(STATE_IDLE, "clinic_migrate: sync worker waiting");

		/* nobody to keep in sync for a while: free the slot */
		idle = any ? 0 : idle + 1;
		if (idle >= 3)
			break;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 cm_sync_interval, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
	proc_exit(0);
}

/*
 * clinic_migrate.sync_now(tenant): one replay round now, in this session,
 * in whichever direction the tenant's state calls for.  Returns the keys
 * applied.
 */
PG_FUNCTION_INFO_V1(cm_sync_now);
Datum
cm_sync_now(PG_FUNCTION_ARGS)
{
	char	   *tenant = cm_tenant_arg(fcinfo, 0);
	int64		applied;

	SPI_connect();
	applied = cm_sync_tenant_once(tenant);
	SPI_finish();
	PG_RETURN_INT64(applied);
}

/* clinic_migrate.syncing(tenant): does a worker keep this tenant in step? */
PG_FUNCTION_INFO_V1(cm_syncing);
Datum
cm_syncing(PG_FUNCTION_ARGS)
{
	char	   *tenant = text_to_cstring(PG_GETARG_TEXT_PP(0));
	TenantInfo	info;

	if (!cm_sync_worker_running())
		PG_RETURN_BOOL(false);
	SPI_connect();
	clone_tenant_info(tenant, &info);
	SPI_finish();
	PG_RETURN_BOOL(info.exists &&
				   (strcmp(info.state, "copied") == 0 || strcmp(info.state, "cut_over") == 0));
}
