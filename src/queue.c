/*-------------------------------------------------------------------------
 * queue.c
 *	  The job queue of clinic_migrate: enqueue, enqueue_pending, cancel,
 *	  wait, pause_queue and resume_queue; what a worker records of the job
 *	  it ran; and how the SQL functions that run an action go through the
 *	  queue when the database's scheduler runs.
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

#include "clinic_migrate.h"
#include "clone.h"
#include "launcher.h"
#include "plan.h"
#include "queue.h"
#include "state.h"
#include "worker.h"

CmAction
cm_action_from_name(const char *name)
{
	static const CmAction all[] = {CMA_MIGRATE, CMA_VALIDATE, CMA_CUTOVER, CMA_ROLLBACK, CMA_FINALIZE};

	for (int i = 0; i < lengthof(all); i++)
		if (strcmp(name, cm_action_name(all[i])) == 0)
			return all[i];
	return 0;
}

static CmAction
action_arg(text *t)
{
	char	   *name = text_to_cstring(t);
	CmAction	a = cm_action_from_name(name);

	if (a == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown action \"%s\"", name),
				 errhint("Use migrate, validate, cutover, rollback or finalize.")));
	return a;
}

/* the job a tenant has queued or running, or 0; its action and state in *what */
static int64
active_job(const char *tenant, char **what)
{
	Oid			t = TEXTOID;
	Datum		v = CStringGetTextDatum(tenant);
	bool		isnull;

	cm_state_exec("SELECT job_id, action || ', ' || state FROM clinic_migrate.job_queue "
				  "WHERE tenant_id = $1 AND state IN ('queued', 'running')", 1, &t, &v, NULL, 0);
	if (SPI_processed == 0)
		return 0;
	if (what)
		*what = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
	return DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

bool
cm_job_queue_has_session_role(void)
{
	Oid			nsp = get_namespace_oid(CM_SCHEMA, true);
	Oid			rel = OidIsValid(nsp) ? get_relname_relid("job_queue", nsp) : InvalidOid;

	return OidIsValid(rel) && get_attnum(rel, "session_role") != InvalidAttrNumber;
}

/*
 * A job runs as run_as (the current role of whoever queued it) in a worker
 * connected as session_role (their session user), as a session's own
 * worker does: RESET ROLE in a job's code leads back to no more than the
 * session that queued it had.
 */
int64
cm_job_insert(const char *tenant, CmAction action, int priority, TimestampTz not_before,
			  bool archive, Oid run_as, Oid session_role)
{
	Oid			types[7] = {TEXTOID, TEXTOID, INT4OID, TIMESTAMPTZOID, BOOLOID, OIDOID, NAMEOID};
	Datum		values[7];
	char	   *what;
	int64		busy = active_job(tenant, &what);
	bool		isnull;
	bool		with_session = cm_job_queue_has_session_role();

	cm_refuse_in_restricted_operation();

	if (busy > 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNIQUE_VIOLATION),
				 errmsg("tenant \"%s\" already has job " INT64_FORMAT " (%s)", tenant, busy, what),
				 errdetail("A tenant has at most one job queued or running."),
				 errhint("Wait for it with SELECT clinic_migrate.wait(" INT64_FORMAT "), or cancel it.",
						 busy)));
	values[0] = CStringGetTextDatum(tenant);
	values[1] = CStringGetTextDatum(cm_action_name(action));
	values[2] = Int32GetDatum(priority);
	values[3] = TimestampTzGetDatum(not_before);
	values[4] = BoolGetDatum(archive);
	values[5] = ObjectIdGetDatum(run_as);
	values[6] = DirectFunctionCall1(namein, CStringGetDatum(GetUserNameFromId(session_role, false)));
	if (with_session)
		cm_state_exec("INSERT INTO clinic_migrate.job_queue (tenant_id, action, priority, not_before, "
					  "archive, run_as, session_role, enqueued_by) VALUES ($1, $2, $3, $4, $5, $6, $7, "
					  "(SELECT rolname FROM pg_catalog.pg_roles WHERE oid OPERATOR(pg_catalog.=) $6)) "
					  "RETURNING job_id",
					  7, types, values, NULL, 0);
	else
		cm_state_exec("INSERT INTO clinic_migrate.job_queue (tenant_id, action, priority, not_before, "
					  "archive, run_as, enqueued_by) VALUES ($1, $2, $3, $4, $5, $6, "
					  "(SELECT rolname FROM pg_catalog.pg_roles WHERE oid OPERATOR(pg_catalog.=) $6)) "
					  "RETURNING job_id",
					  6, types, values, NULL, 0);
	return DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
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
				 errhint("Use migrate, validate, cutover, rollback or finalize.")));
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

/* a job's state, read with the latest snapshot (committed by other sessions now) */
static char *
job_state_now(int64 job)
{
	Oid			t = INT8OID;
	Datum		v = Int64GetDatum(job);
	char	   *state = NULL;
	CmRoleSave	save;

	PushActiveSnapshot(GetLatestSnapshot());
	cm_owner_begin(&save);
	if (SPI_execute_with_args("SELECT state FROM clinic_migrate.job_queue WHERE job_id = $1",
							  1, &t, &v, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "clinic_migrate: job lookup failed");
	cm_role_end(&save);
	if (SPI_processed > 0)
		state = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	PopActiveSnapshot();
	return state;
}

static bool
job_over(const char *state)
{
	return strcmp(state, "done") == 0 || strcmp(state, "failed") == 0 ||
		strcmp(state, "cancelled") == 0;
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
		state = job_state_now(job);
		if (state == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("job " INT64_FORMAT " does not exist", job),
					 errhint("clinic_migrate.jobs lists the jobs.")));
		if (job_over(state) || (deadline != 0 && GetCurrentTimestamp() >= deadline))
			break;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 100L, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
	state = pstrdup(state);
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

bool
cm_queue_paused(void)
{
	bool		paused = false;
	bool		isnull;

	cm_state_exec("SELECT paused FROM clinic_migrate.queue_control", 0, NULL, NULL, NULL, 0);
	if (SPI_processed > 0)
		paused = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	return paused;
}

/* ---- what a worker records of its job ---- */

/* the action's results as JSON */
static char *
result_json(CmWorkerShared *sh, ErrorData *edata)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"schema\": ");
	escape_json(&buf, sh->schema);
	appendStringInfo(&buf, ", \"tables\": %d, \"rows\": " INT64_FORMAT ", \"resumed\": %s, "
					 "\"attempts\": %d, \"pause_ms\": %.3f, \"keys_drained\": " INT64_FORMAT
					 ", \"rows_validated\": " INT64_FORMAT ", \"did\": %s",
					 sh->tables_total, sh->rows_done, sh->resumed ? "true" : "false",
					 sh->attempts, sh->pause_ms, sh->keys_drained, sh->rows_validated,
					 sh->did ? "true" : "false");
	if (edata)
	{
		appendStringInfoString(&buf, ", \"detail\": ");
		escape_json(&buf, edata->detail ? edata->detail : "");
		appendStringInfoString(&buf, ", \"hint\": ");
		escape_json(&buf, edata->hint ? edata->hint : "");
	}
	appendStringInfoChar(&buf, '}');
	return buf.data;
}

/* errors worth another attempt: locks, deadlocks, serialization, catch-up timeouts */
static bool
transient(int sqlerrcode)
{
	return ERRCODE_TO_CATEGORY(sqlerrcode) == ERRCODE_TRANSACTION_ROLLBACK ||
		sqlerrcode == ERRCODE_LOCK_NOT_AVAILABLE ||
		sqlerrcode == ERRCODE_QUERY_CANCELED ||
		sqlerrcode == ERRCODE_CONFIGURATION_LIMIT_EXCEEDED;
}

void
cm_job_finish(CmWorkerShared *sh, ErrorData *edata)
{
	Oid			types[5] = {INT8OID, TEXTOID, TEXTOID, TEXTOID, TEXTOID};
	Datum		values[5];
	char		nulls[5] = {' ', ' ', ' ', ' ', ' '};

	if (sh->job_id <= 0)
		return;
	cm_begin_txn();
	values[0] = Int64GetDatum(sh->job_id);
	values[1] = CStringGetTextDatum(result_json(sh, edata));
	if (edata == NULL)
	{
		nulls[2] = nulls[3] = nulls[4] = 'n';
		cm_state_exec("UPDATE clinic_migrate.job_queue SET state = 'done', finished_at = clock_timestamp(), "
					  "error = NULL, sqlstate = NULL, result = $2::jsonb WHERE job_id = $1",
					  2, types, values, nulls, 0);
	}
	else
	{
		bool		stopped = cm_got_sigterm && edata->sqlerrcode == ERRCODE_ADMIN_SHUTDOWN;

		values[2] = CStringGetTextDatum(edata->message ? edata->message : "unknown error");
		values[3] = CStringGetTextDatum(unpack_sql_state(edata->sqlerrcode));
		values[4] = BoolGetDatum(stopped || transient(edata->sqlerrcode));
		types[4] = BOOLOID;

		/*
		 * Asked to stop: cancelled.  Stopped otherwise (shutdown): queued
		 * again at once, the attempt not counted.  A transient error with
		 * attempts left: queued again after a back-off.  Else: failed.
		 */
		cm_state_exec("UPDATE clinic_migrate.job_queue SET "
					  "state = CASE WHEN cancel_requested THEN 'cancelled' "
					  "             WHEN $5 AND (attempts < max_attempts OR $4 = '57P01') THEN 'queued' "
					  "             ELSE 'failed' END, "
					  "attempts = CASE WHEN $4 = '57P01' AND NOT cancel_requested THEN attempts - 1 "
					  "                ELSE attempts END, "
					  "not_before = CASE WHEN $4 = '57P01' THEN clock_timestamp() "
					  "  ELSE clock_timestamp() + (ARRAY[5, 20, 60, 300])[least(attempts, 4)] "
					  "                          * interval '1 second' END, "
					  "finished_at = CASE WHEN cancel_requested OR NOT ($5 AND (attempts < max_attempts "
					  "                    OR $4 = '57P01')) THEN clock_timestamp() END, "
					  "worker_pid = NULL, error = $3, sqlstate = $4, result = $2::jsonb "
					  "WHERE job_id = $1",
					  5, types, values, nulls, 0);
	}
	cm_end_txn();
}

/* ---- actions of the SQL functions, through the queue ---- */

/* the job's row as the action's results, with the latest snapshot */
static char *
job_result(int64 job, CmWorkerShared *result, int *sqlerrcode, char **error,
		   char **detail, char **hint)
{
	Oid			t = INT8OID;
	Datum		v = Int64GetDatum(job);
	char	   *state = NULL;
	CmRoleSave	save;

	PushActiveSnapshot(GetLatestSnapshot());
	cm_owner_begin(&save);
	if (SPI_execute_with_args("SELECT state, result->>'schema', (result->>'tables')::int, "
							  "(result->>'rows')::bigint, (result->>'resumed')::boolean, "
							  "(result->>'attempts')::int, (result->>'pause_ms')::float8, "
							  "(result->>'keys_drained')::bigint, (result->>'rows_validated')::bigint, "
							  "(result->>'did')::boolean, sqlstate, error, "
							  "result->>'detail', result->>'hint' "
							  "FROM clinic_migrate.job_queue WHERE job_id = $1",
							  1, &t, &v, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "clinic_migrate: job lookup failed");
	cm_role_end(&save);
	if (SPI_processed > 0)
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	td = SPI_tuptable->tupdesc;
		bool		isnull;
		char	   *s;

		state = SPI_getvalue(tup, td, 1);
		s = SPI_getvalue(tup, td, 2);
		if (s)
			strlcpy(result->schema, s, NAMEDATALEN);
#define GETNUM(col, field, conv) \
		do { Datum d = SPI_getbinval(tup, td, col, &isnull); if (!isnull) result->field = conv(d); } while (0)
		GETNUM(3, tables_total, DatumGetInt32);
		GETNUM(4, rows_done, DatumGetInt64);
		GETNUM(5, resumed, DatumGetBool);
		GETNUM(6, attempts, DatumGetInt32);
		GETNUM(7, pause_ms, DatumGetFloat8);
		GETNUM(8, keys_drained, DatumGetInt64);
		GETNUM(9, rows_validated, DatumGetInt64);
		GETNUM(10, did, DatumGetBool);
#undef GETNUM
		s = SPI_getvalue(tup, td, 11);
		*sqlerrcode = s ? MAKE_SQLSTATE(s[0], s[1], s[2], s[3], s[4]) : ERRCODE_INTERNAL_ERROR;
		*error = SPI_getvalue(tup, td, 12);
		*detail = SPI_getvalue(tup, td, 13);
		*hint = SPI_getvalue(tup, td, 14);
	}
	PopActiveSnapshot();
	return state;
}

/* progress of the tenant for the waiting session, as migrate_tenant reports it */
static void
queue_progress_notice(const char *tenant)
{
	Oid			t = TEXTOID;
	Datum		v = CStringGetTextDatum(tenant);
	CmRoleSave	save;

	PushActiveSnapshot(GetLatestSnapshot());
	cm_owner_begin(&save);
	if (SPI_execute_with_args("SELECT format('tenant %s: %s of %s rows copied (%s of %s tables done), now %s.%s', "
							  "quote_literal(tenant_id), rows_copied, rows_total, tables_copied, tables, "
							  "schema_name, current_table) FROM clinic_migrate.status "
							  "WHERE tenant_id = $1 AND state = 'copying'",
							  1, &t, &v, NULL, true, 1) == SPI_OK_SELECT && SPI_processed > 0)
		ereport(NOTICE, (errmsg("%s", SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1))));
	cm_role_end(&save);
	PopActiveSnapshot();
}

void
cm_run_action(CmWorkerShared *req, CmWorkerShared *result)
{
	int64		job;
	char	   *state;
	TimestampTz last_notice;
	int			sqlerrcode = 0;
	char	   *error = NULL,
			   *detail = NULL,
			   *hint = NULL;
	bool		paused;

	if (cm_scheduler_pid(MyDatabaseId) == 0)
	{
		cm_run_in_worker(req, result);
		return;
	}
	SPI_connect();
	paused = cm_queue_paused();
	SPI_finish();
	if (paused)
	{
		/* the queue is paused: what is run by hand is not held by it */
		cm_run_in_worker(req, result);
		return;
	}

	/*
	 * The scheduler records the job (our own insert would be invisible to
	 * it until we commit), then runs it; we wait for its row.
	 */
	job = cm_scheduler_request(MyDatabaseId, req);
	memset(result, 0, sizeof(*result));
	strlcpy(result->tenant, req->tenant, sizeof(result->tenant));
	result->job_id = job;
	last_notice = GetCurrentTimestamp();
	SPI_connect();
	PG_TRY();
	{
		for (;;)
		{
			state = job_state_now(job);
			if (state == NULL || job_over(state))
				break;
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 100L, PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
			CHECK_FOR_INTERRUPTS();
			if (req->action == CMA_MIGRATE && cm_progress_interval > 0 &&
				TimestampDifferenceExceeds(last_notice, GetCurrentTimestamp(),
										   cm_progress_interval * 1000))
			{
				queue_progress_notice(req->tenant);
				last_notice = GetCurrentTimestamp();
			}
		}
	}
	PG_CATCH();
	{
		/* cancelled: the job is too, at its worker's next boundary */
		HOLD_INTERRUPTS();
		cm_scheduler_cancel(MyDatabaseId, job);
		RESUME_INTERRUPTS();
		PG_RE_THROW();
	}
	PG_END_TRY();
	state = job_result(job, result, &sqlerrcode, &error, &detail, &hint);
	if (state == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("job " INT64_FORMAT " of tenant \"%s\" is gone", job, req->tenant)));
	state = pstrdup(state);
	error = error ? pstrdup(error) : NULL;
	detail = detail ? pstrdup(detail) : NULL;
	hint = hint ? pstrdup(hint) : NULL;
	SPI_finish();
	if (strcmp(state, "done") != 0)
		ereport(ERROR,
				(errcode(strcmp(state, "cancelled") == 0 ? ERRCODE_QUERY_CANCELED : sqlerrcode),
				 errmsg("%s", error ? error : "the job was cancelled"),
				 detail && detail[0] ? errdetail("%s", detail) : 0,
				 hint && hint[0] ? errhint("%s", hint) :
				 errhint("Job " INT64_FORMAT " in clinic_migrate.jobs has the record.", job)));
}
