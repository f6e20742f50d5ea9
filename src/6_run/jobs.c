/*-------------------------------------------------------------------------
 * jobs.c
 *	  Floor 6 (where actions run), its bottom: the rows of the job queue.
 *	  Inserting a job, reading its state, whether the queue is paused, and
 *	  what a worker records of the job it ran (cm_job_finish).
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
 *	  May call: floors 1 to 5.
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
#include "plan.h"
#include "jobs.h"
#include "state.h"

CmAction
cm_action_from_name(const char *name)
{
	static const CmAction all[] = {CMA_MIGRATE, CMA_VALIDATE, CMA_CUTOVER, CMA_ROLLBACK, CMA_FINALIZE,
	CMA_SCHEMA_CHANGE, CMA_INDEX};

	for (int i = 0; i < lengthof(all); i++)
		if (strcmp(name, cm_action_name(all[i])) == 0)
			return all[i];
	return 0;
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

/* a job's state, read with the latest snapshot (committed by other sessions now) */
char *
cm_job_state(int64 job)
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

bool
cm_job_over(const char *state)
{
	return strcmp(state, "done") == 0 || strcmp(state, "failed") == 0 ||
		strcmp(state, "cancelled") == 0;
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
	/*
	 * Read committed: the scheduler sets the job's worker_pid just after the
	 * worker starts, and a job that ends within milliseconds would find its
	 * row updated since a repeatable read snapshot (a serialization failure,
	 * and the job retried after a back-off although it was done).
	 */
	cm_begin_txn_read_committed();
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
