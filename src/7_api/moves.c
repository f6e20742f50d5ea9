/*-------------------------------------------------------------------------
 * moves.c
 *	  Floor 7 (the SQL surface): the functions that move a tenant, as SQL
 *	  calls them: plan, create_tenant_schema, migrate_tenant,
 *	  validate_migration, cutover, rollback_tenant, finalize_tenant,
 *	  sync_now, and the functions the views call.  Each checks its
 *	  arguments in the calling session, then runs the action: here and now
 *	  (plan, validation, a rollback before cutover, one replay round), or
 *	  through the machinery of floor 6 (a worker, or the queue's scheduler)
 *	  for the actions that commit as they go.
 *	  May call: every floor below.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"
#include "access/transam.h"
#include "access/xlog.h"
#include "utils/snapmgr.h"

#include <math.h>

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "parser/parse_func.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/timestamp.h"

#include "settings.h"
#include "util.h"
#include "runstate.h"
#include "locks.h"
#include "state.h"
#include "plan.h"
#include "clone.h"
#include "capture.h"
#include "decode.h"
#include "apply.h"
#include "sync.h"
#include "validate.h"
#include "rollback.h"
#include "copy.h"
#include "cutover.h"
#include "worker.h"
#include "launcher.h"
#include "policies.h"

/*
 * clinic_migrate.plan(): the plan as a table, every table of the source
 * schema with its kind, key, path to the tenant column and warnings.
 */
PG_FUNCTION_INFO_V1(cm_plan);
Datum
cm_plan(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	CmSettings	s;
	TenantPlan *plan;

	InitMaterializedSRF(fcinfo, 0);
	cm_current_settings(&s);
	SPI_connect();
	plan = plan_build(&s, rsinfo->econtext->ecxt_per_query_memory);
	for (int i = 0; i < plan->ntables; i++)
	{
		PlanTable  *pt = &plan->tables[i];
		Datum		values[7];
		bool		nulls[7] = {0};

		values[0] = Int32GetDatum(pt->position);
		nulls[0] = pt->position == 0;
		values[1] = ObjectIdGetDatum(pt->relid);
		if (pt->nkey > 0)
		{
			Datum	   *names = palloc(sizeof(Datum) * pt->nkey);

			for (int k = 0; k < pt->nkey; k++)
				names[k] = DirectFunctionCall1(namein,
											   CStringGetDatum(plan_attname(pt->relid, pt->key_att[k])));
			values[3] = PointerGetDatum(construct_array(names, pt->nkey, NAMEOID,
														NAMEDATALEN, false, TYPALIGN_CHAR));
		}
		else
			nulls[3] = true;
		if (pt->kind == PLAN_TENANT)
			values[4] = CStringGetTextDatum(quote_identifier(plan->tenant_column));
		else if (pt->kind == PLAN_CHILD)
		{
			StringInfoData path;
			Oid			child = pt->relid;

			/* notes(appointment_id) -> appointments(id) -> appointments.tenant_id */
			initStringInfo(&path);
			for (int h = 0; h < pt->nhops; h++)
			{
				PlanHop    *hop = &pt->hops[h];

				if (h == 0)
					appendStringInfo(&path, "%s(%s)", quote_identifier(get_rel_name(child)),
									 plan_att_list_text(child, hop->child_att, hop->nkeys));
				else
					appendStringInfo(&path, ", %s(%s)", quote_identifier(get_rel_name(child)),
									 plan_att_list_text(child, hop->child_att, hop->nkeys));
				appendStringInfo(&path, " -> %s(%s)", quote_identifier(get_rel_name(hop->parent)),
								 plan_att_list_text(hop->parent, hop->parent_att, hop->nkeys));
				child = hop->parent;
			}
			appendStringInfo(&path, " -> %s.%s", quote_identifier(get_rel_name(child)),
							 quote_identifier(plan->tenant_column));
			values[4] = CStringGetTextDatum(path.data);
		}
		else
			nulls[4] = true;
		values[2] = CStringGetTextDatum(plan_kind_name(pt->kind));
		{
			PlanTable  *root = (pt->kind == PLAN_CHILD) ? plan_find(plan, pt->root) : pt;

			if ((pt->kind == PLAN_TENANT || pt->kind == PLAN_CHILD) && root &&
				OidIsValid(root->batch_index))
				values[5] = ObjectIdGetDatum(root->batch_index);
			else
				nulls[5] = true;
		}
		if (pt->note)
			values[6] = CStringGetTextDatum(pt->note);
		else
			nulls[6] = true;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	SPI_finish();
	return (Datum) 0;
}

/*
 * clinic_migrate.create_tenant_schema(tenant): the tenant's schema with the
 * full structure (indexes, keys, foreign keys), empty.  Idempotent.
 */
PG_FUNCTION_INFO_V1(cm_create_tenant_schema);
Datum
cm_create_tenant_schema(PG_FUNCTION_ARGS)
{
	char	   *tenant = cm_tenant_arg(fcinfo, 0);
	char	   *schema;
	Name		result = palloc0(NAMEDATALEN);

	SPI_connect();
	schema = clone_create_schema(&tenant);
	{
		CmSettings	s;

		/* the tenant policies of the shared tables, on the tenant's own */
		cm_current_settings(&s);
		cm_rls_cover_tenant(plan_build(&s, CurrentMemoryContext), tenant);
	}
	namestrcpy(result, schema);	/* before SPI_finish frees schema */
	SPI_finish();
	PG_RETURN_NAME(result);
}

/*
 * Check what can be checked in the caller, read-only, so that bad input
 * fails here with nothing started: the plan, the tenant, the privileges.
 * In a subtransaction that is rolled back afterwards: the checks only read,
 * and rolling back releases the locks they took, which the worker may need
 * (we wait for it while holding our locks).  Returns the canonical id.
 */
static char *
check_migration(char *tenant)
{
	CmSettings	s;
	TenantPlan *plan;
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		cm_current_settings(&s);
		SPI_connect();
		plan = clone_plan_for_tenant(&tenant, &s, CurrentMemoryContext);
		tenant = MemoryContextStrdup(cxt, tenant);
		clone_check_movable(tenant);
		plan_check_copyable(plan);
		clone_check_privileges(plan, tenant);
		clone_check_tenant_exists(plan, tenant);
		for (int i = 0; i < plan->ntables; i++)
		{
			PlanTable  *pt = &plan->tables[i];
			char	   *qname = quote_qualified_identifier(pt->nspname, pt->relname);

			if (pt->position > 0 && pt->note)
				ereport(WARNING, (errmsg("table %s: %s", qname, pt->note)));
			if (pt->kind == PLAN_UNSUPPORTED &&
				(pt->tenant_att != InvalidAttrNumber || pt->nhops > 0))
				ereport(WARNING,
						(errmsg("table %s holds tenant rows but is not migrated: %s", qname,
								pt->note ? pt->note : "unsupported"),
						 errhint("Its rows of tenant \"%s\" stay in the shared table.", tenant)));
		}

		/*
		 * What the copy does not carry (0.5: uncarried()), said before
		 * anything moves.
		 */
		{
			Oid			argtype = REGCLASSARRAYOID;
			bool		with_tables = OidIsValid(LookupFuncName(list_make2(makeString(CM_SCHEMA),
																			makeString("uncarried_in")),
																 1, &argtype, true));
			bool		without = !with_tables &&
				OidIsValid(LookupFuncName(list_make2(makeString(CM_SCHEMA), makeString("uncarried")),
										  0, NULL, true));
			Datum	   *relids = palloc(sizeof(Datum) * Max(plan->ntables, 1));
			int			nrel = 0;
			Datum		arg;
			int			nun = 0;

			/* the plan's tables (0.9): the plan is not built again for it */
			for (int i = 0; i < plan->ntables; i++)
				if (plan->tables[i].position > 0)
					relids[nrel++] = ObjectIdGetDatum(plan->tables[i].relid);
			arg = PointerGetDatum(construct_array(relids, nrel, REGCLASSOID, sizeof(Oid), true,
												  TYPALIGN_INT));
			if (with_tables || without)
				cm_state_exec(with_tables ?
						  "SELECT count(*), string_agg(object, '; ' ORDER BY object) FILTER (WHERE n <= 5) "
						  "FROM (SELECT object, row_number() OVER (ORDER BY object) AS n "
						  "      FROM (SELECT DISTINCT object FROM clinic_migrate.uncarried_in($1)) d) u" :
						  "SELECT count(*), string_agg(object, '; ' ORDER BY object) FILTER (WHERE n <= 5) "
						  "FROM (SELECT object, row_number() OVER (ORDER BY object) AS n "
						  "      FROM (SELECT DISTINCT object FROM clinic_migrate.uncarried()) d) u",
							  with_tables ? 1 : 0, &argtype, &arg, NULL, 0);
			if (with_tables || without)
				nun = atoi(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1));
			if (nun > 0)
				ereport(WARNING,
						(errmsg_plural("%d object of the shared tables is not carried to the tenant's schema",
									   "%d objects of the shared tables are not carried to the tenant's schema",
									   nun, nun),
						 errdetail("%s", SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2)),
						 errhint("SELECT * FROM clinic_migrate.uncarried() lists them, with what each means for the tenant.")));
		}
		SPI_finish();
	}
	PG_CATCH();
	{
		/* an error must not leave the subtransaction open */
		MemoryContextSwitchTo(cxt);
		RollbackAndReleaseCurrentSubTransaction();
		CurrentResourceOwner = owner;
		PG_RE_THROW();
	}
	PG_END_TRY();
	RollbackAndReleaseCurrentSubTransaction();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
	return tenant;
}

/*
 * clinic_migrate.migrate_tenant(tenant): copy the tenant into its schema
 * in a background worker and wait for it.
 */
PG_FUNCTION_INFO_V1(cm_migrate_tenant);
Datum
cm_migrate_tenant(PG_FUNCTION_ARGS)
{
	char	   *tenant = cm_tenant_arg(fcinfo, 0);
	TupleDesc	tupdesc;
	CmWorkerShared *req = palloc0(sizeof(CmWorkerShared));
	CmWorkerShared *result = palloc0(sizeof(CmWorkerShared));
	Datum		values[4];
	bool		nulls[4] = {0};

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	tupdesc = BlessTupleDesc(tupdesc);
	cm_require_no_transaction_block("migrate_tenant");
	tenant = check_migration(tenant);
	if (!cm_tenant_lock_free(tenant))
		ereport(ERROR,
				(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
				 errmsg("tenant \"%s\" is already being migrated or rolled back by another session", tenant),
				 errhint("Wait for it to finish; clinic_migrate.status shows its progress.")));

	cm_worker_request_init(req, CMA_MIGRATE, tenant);
	cm_run_action(req, result);

	values[0] = DirectFunctionCall1(namein, CStringGetDatum(result->schema));
	values[1] = Int32GetDatum(result->tables_total);
	values[2] = Int64GetDatum(result->rows_done);
	values[3] = BoolGetDatum(result->resumed);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/* clinic_migrate.migration_active(tenant): is a session working on it? */
PG_FUNCTION_INFO_V1(cm_migration_active);
Datum
cm_migration_active(PG_FUNCTION_ARGS)
{
	char	   *tenant = text_to_cstring(PG_GETARG_TEXT_PP(0));

	PG_RETURN_BOOL(!cm_tenant_lock_free(tenant));
}

/* clinic_migrate.schema_name_for(tenant): the name the tenant's schema gets */
PG_FUNCTION_INFO_V1(cm_schema_name_for_sql);
Datum
cm_schema_name_for_sql(PG_FUNCTION_ARGS)
{
	char	   *tenant = cm_tenant_arg(fcinfo, 0);
	Name		result = palloc0(NAMEDATALEN);
	TenantInfo	info;

	SPI_connect();
	{
		CmSettings	s;

		cm_current_settings(&s);
		(void) clone_plan_for_tenant(&tenant, &s, CurrentMemoryContext);
	}
	clone_tenant_info(tenant, &info);	/* copies into our struct */
	SPI_finish();
	namestrcpy(result, info.exists ? info.schema_name
			   : cm_schema_name_for(tenant, cm_schema_template));
	PG_RETURN_NAME(result);
}

/* clinic_migrate.start_sync(): start the database's sync worker if none runs */
PG_FUNCTION_INFO_V1(cm_start_sync);
Datum
cm_start_sync(PG_FUNCTION_ARGS)
{
	if (!cm_start_sync_worker())
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("could not start the clinic_migrate sync worker"),
				 errdetail("All background worker slots are in use."),
				 errhint("Raise max_worker_processes, or wait for other workers to finish.")));
	PG_RETURN_BOOL(true);
}

/* clinic_migrate.validate_migration(tenant, max_keys) */
PG_FUNCTION_INFO_V1(cm_validate_migration);
Datum
cm_validate_migration(PG_FUNCTION_ARGS)
{
	char	   *tenant = cm_tenant_arg(fcinfo, 0);
	int			max_keys = PG_ARGISNULL(1) ? 10 : PG_GETARG_INT32(1);
	if (max_keys < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_keys must not be negative"),
				 errhint("Use clinic_migrate.validate_differences() to list every differing key.")));
	InitMaterializedSRF(fcinfo, 0);
	cm_validate_summary(tenant, max_keys, (ReturnSetInfo *) fcinfo->resultinfo);
	return (Datum) 0;
}

/* clinic_migrate.validate_differences(tenant): every differing key */
PG_FUNCTION_INFO_V1(cm_validate_differences);
Datum
cm_validate_differences(PG_FUNCTION_ARGS)
{
	char	   *tenant = cm_tenant_arg(fcinfo, 0);

	InitMaterializedSRF(fcinfo, 0);
	cm_validate_keys(tenant, (ReturnSetInfo *) fcinfo->resultinfo);
	return (Datum) 0;
}

/* the tenant's canonical id, for functions that take it from the user */
static char *
canonical_tenant(FunctionCallInfo fcinfo)
{
	char	   *tenant = cm_tenant_arg(fcinfo, 0);
	CmSettings	s;
	MemoryContext cxt = CurrentMemoryContext;

	cm_current_settings(&s);
	SPI_connect();
	(void) clone_plan_for_tenant(&tenant, &s, cxt);
	SPI_finish();
	return tenant;
}

/*
 * clinic_migrate.cutover(tenant): switch the tenant to its schema, pausing
 * only its writes, briefly.
 */
PG_FUNCTION_INFO_V1(cm_cutover);
Datum
cm_cutover(PG_FUNCTION_ARGS)
{
	char	   *tenant;
	TupleDesc	tupdesc;
	CmWorkerShared *req = palloc0(sizeof(CmWorkerShared));
	CmWorkerShared *result = palloc0(sizeof(CmWorkerShared));
	Datum		values[5];
	bool		nulls[5] = {0};

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	tupdesc = BlessTupleDesc(tupdesc);
	cm_require_no_transaction_block("cutover");
	tenant = canonical_tenant(fcinfo);
	cm_worker_request_init(req, CMA_CUTOVER, tenant);
	cm_run_action(req, result);
	values[0] = DirectFunctionCall1(namein, CStringGetDatum(result->schema));
	values[1] = Int32GetDatum(result->attempts);
	values[2] = DirectFunctionCall1(float8_numeric, Float8GetDatum(round(result->pause_ms * 1000.0) / 1000.0));
	values[3] = Int64GetDatum(result->keys_drained);
	values[4] = Int64GetDatum(result->rows_validated);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/*
 * clinic_migrate.finalize_tenant(tenant, archive): end the rollback window:
 * the shared rows go into the archive tables (or away).
 */
PG_FUNCTION_INFO_V1(cm_finalize);
Datum
cm_finalize(PG_FUNCTION_ARGS)
{
	char	   *tenant;
	TupleDesc	tupdesc;
	CmWorkerShared *req = palloc0(sizeof(CmWorkerShared));
	CmWorkerShared *result = palloc0(sizeof(CmWorkerShared));
	Datum		values[3];
	bool		nulls[3] = {0};

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	tupdesc = BlessTupleDesc(tupdesc);
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("archive must not be null"),
				 errhint("Pass true to keep the shared rows in archive tables, false to delete them.")));
	cm_require_no_transaction_block("finalize_tenant");
	tenant = canonical_tenant(fcinfo);
	cm_worker_request_init(req, CMA_FINALIZE, tenant);
	req->archive = PG_GETARG_BOOL(1);
	cm_run_action(req, result);
	values[0] = DirectFunctionCall1(namein, CStringGetDatum(result->schema));
	values[1] = Int64GetDatum(result->rows_done);
	values[2] = BoolGetDatum(result->did);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/*
 * clinic_migrate.rollback_tenant(tenant): true if there was something to
 * roll back.  Idempotent; every call is recorded in runs.  Before cutover
 * it drops the schema here and now; after cutover a worker first switches
 * the tenant back with a pause, as cutover does, replaying every change
 * made in the schema into the shared rows.
 */
PG_FUNCTION_INFO_V1(cm_rollback_tenant);
Datum
cm_rollback_tenant(PG_FUNCTION_ARGS)
{
	char	   *tenant = cm_tenant_arg(fcinfo, 0);
	TenantInfo	info;
	bool		did = false;

	SPI_connect();

	/*
	 * '01' rolls back tenant 1 of an integer column; the plan is needed for
	 * that only when the id is not known as given, and only if the source
	 * schema still exists (a rollback must work without it).
	 */
	clone_tenant_info(tenant, &info);
	if (!info.exists)
	{
		CmSettings	s;

		cm_current_settings(&s);
		if (OidIsValid(get_namespace_oid(s.source_schema, true)))
			(void) clone_plan_for_tenant(&tenant, &s, CurrentMemoryContext);
		clone_tenant_info(tenant, &info);
	}
	if (info.exists && (strcmp(info.state, "finalizing") == 0 || strcmp(info.state, "finalized") == 0))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("tenant \"%s\" has been finalized and can no longer be rolled back", tenant),
				 errdetail("Its rows live in schema \"%s\"; its shared rows were archived or deleted.",
						   info.schema_name),
				 errhint("The archive tables in schema \"%s\" hold the shared rows if they were archived.",
						 cm_archive_schema)));
	if (info.exists && (strcmp(info.state, "cut_over") == 0 || strcmp(info.state, "rolling_back") == 0))
	{
		CmWorkerShared *req;
		CmWorkerShared *result;
		char	   *t;

		/* after SPI_finish: what is allocated before it goes with SPI's memory */
		t = MemoryContextStrdup(fcinfo->flinfo->fn_mcxt, tenant);
		SPI_finish();
		t = pstrdup(t);
		req = palloc0(sizeof(CmWorkerShared));
		result = palloc0(sizeof(CmWorkerShared));
		cm_require_no_transaction_block("rollback_tenant of a cut-over tenant");
		cm_worker_request_init(req, CMA_ROLLBACK, t);
		cm_run_action(req, result);
		PG_RETURN_BOOL(result->did);
	}

	did = cm_rollback_in_session(tenant);
	SPI_finish();

	/*
	 * Not here, in the caller's transaction, which could hold every shared
	 * table's lock for as long as it stays open: the database's sync worker
	 * takes the capture triggers off when it finds no tenant that needs
	 * them (cm_capture_cleanup).
	 */
	if (did)
		(void) cm_start_sync_worker();
	PG_RETURN_BOOL(did);
}

/*
 * clinic_migrate.sync_now(tenant): one replay round now, in this session,
 * in whichever direction the tenant's state calls for.  Returns the keys
 * applied.
 */
/* what this session's last sync_now read from the slot, and in which transaction */
static TransactionId sync_now_xid = InvalidTransactionId;
static XLogRecPtr sync_now_upto = InvalidXLogRecPtr;

PG_FUNCTION_INFO_V1(cm_sync_now);
Datum
cm_sync_now(PG_FUNCTION_ARGS)
{
	char	   *tenant = cm_tenant_arg(fcinfo, 0);
	int64		applied;

	SPI_connect();
	/*
	 * What the WAL has, logged in this transaction.  The slot cannot be
	 * moved past it before this transaction commits: the next call does
	 * that once it has (or the sync worker's next drain).  Until then a
	 * call reads it again, and one in the same transaction passes over
	 * what an earlier one logged.
	 */
	{
		int64		n;
		TransactionId me = GetTopTransactionIdIfAny();

		if (TransactionIdIsValid(sync_now_xid) && sync_now_xid != me &&
			TransactionIdDidCommit(sync_now_xid))
		{
			/* the keys an earlier call logged are committed: on disk, then the slot moves */
			XLogFlush(XactLastCommitEnd);
			capture_wal_confirm(sync_now_upto);
		}
		if (!TransactionIdIsValid(sync_now_xid) || sync_now_xid != me)
		{
			sync_now_xid = InvalidTransactionId;
			sync_now_upto = InvalidXLogRecPtr;
		}
		{
			XLogRecPtr	upto = capture_wal_read(&n, sync_now_xid == me ? sync_now_upto : InvalidXLogRecPtr);

			if (!XLogRecPtrIsInvalid(upto) && n == 0 && !TransactionIdIsValid(sync_now_xid))
				capture_wal_confirm(upto);	/* nothing logged: nothing to wait for */
			else if (!XLogRecPtrIsInvalid(upto))
			{
				sync_now_xid = GetTopTransactionId();
				sync_now_upto = upto;
			}
		}
		CommandCounterIncrement();
	}
	/* a snapshot that sees what was just logged (the statement's is older) */
	PushActiveSnapshot(GetTransactionSnapshot());
	applied = cm_sync_tenant_once(tenant);
	PopActiveSnapshot();
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

/*
 * clinic_migrate.capture_lag_seconds(tenant): how long the oldest change of
 * the tenant not yet applied has waited (0 when none).
 */
PG_FUNCTION_INFO_V1(cm_capture_lag_seconds);
Datum
cm_capture_lag_seconds(PG_FUNCTION_ARGS)
{
	int64		count;
	double		age;

	apply_backlog(text_to_cstring(PG_GETARG_TEXT_PP(0)), &count, &age);
	PG_RETURN_FLOAT8(age);
}

/* clinic_migrate.capture_lag(tenant): changes captured, not yet applied */
PG_FUNCTION_INFO_V1(cm_capture_lag);
Datum
cm_capture_lag(PG_FUNCTION_ARGS)
{
	int64		count;
	double		age;

	apply_backlog(text_to_cstring(PG_GETARG_TEXT_PP(0)), &count, &age);
	PG_RETURN_INT64(count);
}
