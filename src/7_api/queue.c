/*-------------------------------------------------------------------------
 * queue.c
 *	  The job queue's SQL functions: enqueue, enqueue_pending, cancel, wait,
 *	  pause_queue and resume_queue.  The job rows themselves, and what a
 *	  worker records of the job it ran, are 6_run/jobs.c's.
 *	  Floor 7 (the SQL surface).  May call: every floor below.
 *
 * A job is a row of clinic_migrate.job_queue: one tenant, one action.  At
 * most one job per tenant is queued or running (a unique index), and the
 * worker that runs it holds the tenant's migration lock, so a tenant never
 * has two actions at once.  The scheduler (launcher.c) claims queued jobs
 * and starts a worker for each, up to clinic_migrate.max_workers.  The
 * worker records the outcome (cm_job_finish): done; failed; queued again
 * after a back-off (5 s, 20 s, 60 s, 5 min) for a transient error while
 * attempts are left; queued again at once when shutdown interrupted it.
 * A job left 'running' by a worker that died is found by the scheduler and
 * queued again; the action resumes from its checkpoints.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "access/tupdesc.h"
#include "utils/tuplestore.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "catalog/namespace.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "settings.h"
#include "util.h"
#include "locks.h"
#include "runstate.h"
#include "clone.h"
#include "launcher.h"
#include "plan.h"
#include "jobs.h"
#include "state.h"
#include "worker.h"

static CmAction
action_arg(text *t)
{
	char	   *name = text_to_cstring(t);
	CmAction	a = cm_action_from_name(name);

	if (a == 0 || a == CMA_SCHEMA_CHANGE)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown action \"%s\"", name),
				 errhint("Use migrate, validate, cutover, rollback, finalize or index.")));
	return a;
}

/* a set-returning function of bigint, materialized */
static void
init_job_srf(FunctionCallInfo fcinfo)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	MemoryContext old;
	TupleDesc	tupdesc;

	if (rsinfo == NULL || !IsA(rsinfo, ReturnSetInfo) ||
		!(rsinfo->allowedModes & SFRM_Materialize))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("set-valued function called in context that cannot accept a set")));
	old = MemoryContextSwitchTo(rsinfo->econtext->ecxt_per_query_memory);
	tupdesc = CreateTemplateTupleDesc(1);
	TupleDescInitEntry(tupdesc, (AttrNumber) 1, "job", INT8OID, -1, 0);
	rsinfo->returnMode = SFRM_Materialize;
	rsinfo->setResult = tuplestore_begin_heap(true, false, work_mem);
	rsinfo->setDesc = tupdesc;
	MemoryContextSwitchTo(old);
}

/*
 * clinic_migrate.enqueue(tenants, action, priority, not_before, archive):
 * one job per tenant, all or none; the job ids.
 */
PG_FUNCTION_INFO_V1(cm_enqueue);
Datum
cm_enqueue(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	ArrayType  *arr;
	Datum	   *elems;
	bool	   *elnulls;
	int			n;
	CmAction	action;
	int			priority = PG_ARGISNULL(2) ? 0 : PG_GETARG_INT32(2);
	TimestampTz not_before = PG_ARGISNULL(3) ? GetCurrentTimestamp() : PG_GETARG_TIMESTAMPTZ(3);
	bool		archive = PG_ARGISNULL(4) ? true : PG_GETARG_BOOL(4);
	CmSettings	s;
	TenantPlan *plan;
	List	   *seen = NIL;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("tenants must not be null"),
				 errhint("Pass an array of tenant ids, for example ARRAY['t1', 't2'].")));
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("action must not be null"),
				 errhint("Use migrate, validate, cutover, rollback, finalize or index.")));
	action = action_arg(PG_GETARG_TEXT_PP(1));
	arr = PG_GETARG_ARRAYTYPE_P(0);
	deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &elems, &elnulls, &n);
	init_job_srf(fcinfo);
	SPI_connect();
	cm_current_settings(&s);
	plan = plan_build(&s, CurrentMemoryContext);
	for (int i = 0; i < n; i++)
	{
		char	   *tenant;
		ListCell   *lc;
		Datum		id;
		bool		isnull = false;

		if (elnulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("tenant id must not be null"),
					 errdetail("Element %d of the array is null.", i + 1),
					 errhint("Pass the value of the tenant column, for example '%s'.", "t1")));
		tenant = TextDatumGetCString(elems[i]);
		if (tenant[0] == '\0' || strlen(tenant) > CM_MAX_TENANT_LEN)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("tenant id must not be empty or longer than %d bytes", CM_MAX_TENANT_LEN),
					 errdetail("Element %d of the array.", i + 1)));
		tenant = plan_canonical_tenant(plan, tenant);
		foreach(lc, seen)
			if (strcmp((char *) lfirst(lc), tenant) == 0)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("tenant \"%s\" is in the array twice", tenant),
						 errhint("A tenant has at most one job queued or running.")));
		seen = lappend(seen, tenant);
		id = Int64GetDatum(cm_job_insert(tenant, action, priority, not_before, archive, GetUserId(),
										 GetSessionUserId()));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, &id, &isnull);
	}
	SPI_finish();
	cm_scheduler_wake_at_commit();
	return (Datum) 0;
}

/*
 * clinic_migrate.enqueue_pending(how_many, action): jobs for the next tenants
 * of the registry, in its order, that the action is due for: migrate, those
 * never migrated (and with no failed migrate job to look at first);
 * validate and cutover, the copied ones; finalize, the cut-over ones.
 */
PG_FUNCTION_INFO_V1(cm_enqueue_pending);
Datum
cm_enqueue_pending(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int			how_many = PG_GETARG_INT32(0);
	CmAction	action = action_arg(PG_GETARG_TEXT_PP(1));
	CmSettings	s;
	TenantPlan *plan;
	PlanTable  *reg;
	StringInfoData sql;
	const char *due;
	SPITupleTable *tt;
	uint64		n;
	Oid			types[2] = {INT4OID, TEXTOID};
	Datum		values[2];

	if (how_many < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("how_many must not be negative")));
	init_job_srf(fcinfo);
	SPI_connect();
	cm_current_settings(&s);
	plan = plan_build(&s, CurrentMemoryContext);
	reg = OidIsValid(plan->registry) ? plan_find(plan, plan->registry) : NULL;
	if (reg == NULL || reg->tenant_att == InvalidAttrNumber)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("enqueue_pending needs the tenant registry"),
				 errdetail("There is no table \"%s\" with a column %s in schema \"%s\".",
						   s.registry_table, quote_identifier(s.tenant_column), s.source_schema),
				 errhint("Set clinic_migrate.registry_table, or list the tenants with clinic_migrate.enqueue().")));
	switch (action)
	{
		case CMA_MIGRATE:
			due = "(t.tenant_id IS NULL OR t.state = 'schema_created') "
				"AND NOT EXISTS (SELECT 1 FROM clinic_migrate.job_queue j "
				"WHERE j.tenant_id = r.id AND j.action = 'migrate' AND j.state = 'failed')";
			break;
		case CMA_VALIDATE:
		case CMA_CUTOVER:
			due = "t.state = 'copied'";
			break;
		case CMA_FINALIZE:
			due = "t.state = 'cut_over'";
			break;
		default:
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("enqueue_pending does not queue %s jobs", cm_action_name(action)),
					 errhint("Queue rollbacks tenant by tenant with clinic_migrate.enqueue().")));
	}
	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "SELECT r.id FROM (SELECT %s::text AS id, %s AS k FROM %s) r "
					 "LEFT JOIN clinic_migrate.tenants t ON t.tenant_id = r.id "
					 "WHERE %s AND NOT EXISTS (SELECT 1 FROM clinic_migrate.job_queue j "
					 "  WHERE j.tenant_id = r.id AND j.state IN ('queued', 'running')) "
					 "ORDER BY r.k LIMIT $1",
					 quote_identifier(s.tenant_column), quote_identifier(s.tenant_column),
					 cm_qualified_relname(reg->relid), due);
	values[0] = Int32GetDatum(how_many);
	values[1] = (Datum) 0;
	if (SPI_execute_with_args(sql.data, 1, types, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "clinic_migrate: registry query failed");
	tt = SPI_tuptable;
	n = SPI_processed;
	for (uint64 i = 0; i < n; i++)
	{
		Datum		id;
		bool		isnull = false;

		id = Int64GetDatum(cm_job_insert(SPI_getvalue(tt->vals[i], tt->tupdesc, 1), action, 0,
										 GetCurrentTimestamp(), true, GetUserId(),
										 GetSessionUserId()));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, &id, &isnull);
	}
	SPI_finish();
	cm_scheduler_wake_at_commit();
	return (Datum) 0;
}

/*
 * clinic_migrate.cancel(job): a queued job is cancelled at once; a running
 * one is asked to stop, which its worker does at its next batch boundary.
 * False if the job is over or does not exist.
 */
PG_FUNCTION_INFO_V1(cm_cancel);
Datum
cm_cancel(PG_FUNCTION_ARGS)
{
	Oid			t = INT8OID;
	Datum		v = PG_GETARG_DATUM(0);
	bool		did;

	SPI_connect();
	cm_state_exec("UPDATE clinic_migrate.job_queue SET state = 'cancelled', finished_at = clock_timestamp(), "
				  "error = 'cancelled before it started' WHERE job_id = $1 AND state = 'queued'",
				  1, &t, &v, NULL, 0);
	did = SPI_processed > 0;
	if (!did)
	{
		cm_state_exec("UPDATE clinic_migrate.job_queue SET cancel_requested = true "
					  "WHERE job_id = $1 AND state = 'running'", 1, &t, &v, NULL, 0);
		did = SPI_processed > 0;
	}
	SPI_finish();
	if (did)
		cm_scheduler_wake_at_commit();
	PG_RETURN_BOOL(did);
}

/*
 * clinic_migrate.wait(job, timeout): wait until the job is done, failed or
 * cancelled (or the timeout passes); its state.
 */
PG_FUNCTION_INFO_V1(cm_wait);
Datum
cm_wait(PG_FUNCTION_ARGS)
{
	int64		job;
	TimestampTz deadline = 0;
	char	   *state;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("job must not be null")));
	job = PG_GETARG_INT64(0);
	if (!PG_ARGISNULL(1))
	{
		Interval   *iv = PG_GETARG_INTERVAL_P(1);
		int64		usecs = iv->time + (int64) iv->day * USECS_PER_DAY +
			(int64) iv->month * 30 * USECS_PER_DAY;

		deadline = GetCurrentTimestamp() + Max(usecs, 0);
	}
	SPI_connect();
	for (;;)
	{
		state = cm_job_state(job);
		if (state == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("job " INT64_FORMAT " does not exist", job),
					 errhint("clinic_migrate.jobs lists the jobs.")));
		if (cm_job_over(state) || (deadline != 0 && GetCurrentTimestamp() >= deadline))
			break;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 100L, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
	/* SPI_palloc: in the caller's memory, which SPI_finish leaves alone */
	state = strcpy(SPI_palloc(strlen(state) + 1), state);
	SPI_finish();
	PG_RETURN_TEXT_P(cstring_to_text(state));
}

/* true if it changed the queue's state */
static Datum
set_paused(bool paused)
{
	Oid			t = BOOLOID;
	Datum		v = BoolGetDatum(paused);
	bool		changed;

	SPI_connect();
	cm_state_exec("UPDATE clinic_migrate.queue_control SET paused = $1, "
				  "paused_by = CASE WHEN $1 THEN session_user END, "
				  "paused_at = CASE WHEN $1 THEN clock_timestamp() END WHERE paused <> $1",
				  1, &t, &v, NULL, 0);
	changed = SPI_processed > 0;
	SPI_finish();
	cm_scheduler_wake_at_commit();
	PG_RETURN_BOOL(changed);
}

/* clinic_migrate.pause_queue(): no job starts until resume_queue (running ones go on) */
PG_FUNCTION_INFO_V1(cm_pause_queue);
Datum
cm_pause_queue(PG_FUNCTION_ARGS)
{
	return set_paused(true);
}

PG_FUNCTION_INFO_V1(cm_resume_queue);
Datum
cm_resume_queue(PG_FUNCTION_ARGS)
{
	return set_paused(false);
}

/* ---- what a worker records of its job ---- */

/* ---- actions of the SQL functions, through the queue ---- */

/*
 * clinic_migrate.fan_out(version, ddl): one schema change for every tenant
 * of the source schema.  Now, in the caller's transaction and with
 * search_path = the source schema: the shared tables (the event trigger
 * carries it to the copies of the tenants moving).  Then one
 * schema_change job per finalized tenant that lacks the version, run as the
 * caller with search_path = that tenant's schema, recorded per tenant.
 * Called again with the version (ddl NULL or the same), it queues the
 * tenants that still lack it: a failed one after its cause is fixed, or
 * one finalized since.  Returns the jobs queued.
 */
PG_FUNCTION_INFO_V1(cm_fan_out);
Datum
cm_fan_out(PG_FUNCTION_ARGS)
{
	char	   *version;
	char	   *ddl = PG_ARGISNULL(1) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(1));
	char	   *stored;
	CmSettings	s;
	Oid			types[2] = {TEXTOID, TEXTOID};
	Datum		values[2];
	int64		queued = 0;
	int64		busy = 0;
	SPITupleTable *tt;
	uint64		n;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("version must not be null"),
				 errhint("Name the change as your migration tool does, for example 'V42__add_phone'.")));
	version = text_to_cstring(PG_GETARG_TEXT_PP(0));
	if (version[0] == '\0' || strlen(version) > 200)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("version must not be empty or longer than 200 bytes")));
	cm_current_settings(&s);
	SPI_connect();
	values[0] = CStringGetTextDatum(version);
	cm_state_exec("SELECT ddl FROM clinic_migrate.schema_changes WHERE version = $1",
				  1, types, values, NULL, 0);
	stored = SPI_processed ? SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1) : NULL;
	if (stored && ddl && strcmp(stored, ddl) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNIQUE_VIOLATION),
				 errmsg("schema version \"%s\" exists with another change", version),
				 errhint("Give the new change a new version, or pass NULL to queue the tenants that lack \"%s\".",
						 version)));
	if (stored == NULL)
	{
		int			nest;

		if (ddl == NULL || ddl[0] == '\0')
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("schema version \"%s\" is new: its change must not be empty", version),
					 errhint("Pass the statements, for example 'ALTER TABLE patients ADD COLUMN phone text'.")));
		values[1] = CStringGetTextDatum(ddl);
		cm_state_exec("INSERT INTO clinic_migrate.schema_changes (version, ddl, created_by) "
					  "VALUES ($1, $2, session_user)", 2, types, values, NULL, 0);
		CommandCounterIncrement();

		/* the shared tables, as the caller, in this transaction */
		nest = NewGUCNestLevel();
		(void) set_config_option("search_path", quote_identifier(s.source_schema), PGC_USERSET,
								 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
		cm_ddl_with_retry(ddl);
		AtEOXact_GUC(true, nest);
		CommandCounterIncrement();
		cm_state_exec("UPDATE clinic_migrate.schema_changes SET shared_done_at = clock_timestamp() "
					  "WHERE version = $1", 1, types, values, NULL, 0);
	}

	/* the finalized tenants of this source schema that lack it */
	values[1] = CStringGetTextDatum(s.source_schema);
	cm_state_exec("SELECT t.tenant_id, EXISTS (SELECT FROM clinic_migrate.job_queue j "
				  "  WHERE j.tenant_id = t.tenant_id AND j.state IN ('queued', 'running')) "
				  "FROM clinic_migrate.tenants t "
				  "WHERE t.state = 'finalized' AND t.source_schema::text = $2 "
				  "AND NOT EXISTS (SELECT FROM clinic_migrate.tenant_schema_versions v "
				  "                WHERE v.tenant_id = t.tenant_id AND v.version = $1) "
				  "ORDER BY t.tenant_id", 2, types, values, NULL, 0);
	tt = SPI_tuptable;
	n = SPI_processed;
	for (uint64 i = 0; i < n; i++)
	{
		char	   *tenant = SPI_getvalue(tt->vals[i], tt->tupdesc, 1);
		int64		job;
		Oid			jtypes[2] = {INT8OID, TEXTOID};
		Datum		jvalues[2];

		if (strcmp(SPI_getvalue(tt->vals[i], tt->tupdesc, 2), "t") == 0)
		{
			busy++;
			continue;
		}
		job = cm_job_insert(tenant, CMA_SCHEMA_CHANGE, 0, GetCurrentTimestamp(), true, GetUserId(),
							GetSessionUserId());
		jvalues[0] = Int64GetDatum(job);
		jvalues[1] = values[0];
		cm_state_exec("UPDATE clinic_migrate.job_queue SET schema_version = $2 WHERE job_id = $1",
					  2, jtypes, jvalues, NULL, 0);
		queued++;
	}
	if (busy > 0)
		ereport(NOTICE,
				(errmsg(INT64_FORMAT " finalized tenants have a job queued or running and were not queued", busy),
				 errhint("Run clinic_migrate.fan_out('%s', NULL) again when their jobs are done.", version)));
	SPI_finish();
	cm_scheduler_wake_at_commit();
	PG_RETURN_INT64(queued);
}
