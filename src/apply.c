/*-------------------------------------------------------------------------
 * apply.c
 *	  Brings a tenant's copy up to date from the captured keys.
 *
 * Replay is idempotent and order-free: for each logged key it re-reads the
 * shared row now; if the row exists and belongs to the tenant it is
 * upserted into the copy, otherwise the key is deleted from the copy.  A
 * batch copy spread over many transactions has no single snapshot, and
 * transactions commit out of order; re-reading by key makes both harmless.
 *
 * One round is one transaction (repeatable read in the worker, so every
 * statement sees the same data).  In plan order, the logged keys of each
 * table move from its log into a temporary key table with DELETE ...
 * RETURNING: exactly the entries this round applies are deleted, and an
 * entry committed after the round's snapshot stays for the next round (the
 * trap of deleting "id <= N" when ids commit out of order).  The rows of
 * those keys are then upserted, parents first; afterwards, children first,
 * keys that no longer belong to the tenant are deleted from the copy.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"

#include "apply.h"
#include "capture.h"
#include "clinic_migrate.h"
#include "clone.h"
#include "plan.h"
#include "state.h"

static char *
log_relname(PlanTable *pt)
{
	return quote_qualified_identifier(CM_SCHEMA, capture_log_name(pt->relid));
}

static char *
keys_relname(PlanTable *pt)
{
	return psprintf("pg_temp.%s", quote_identifier(psprintf("cm_keys_%u", pt->relid)));
}

/* a temporary table for the keys a round applies, emptied at commit */
static void
ensure_keys_table(PlanTable *pt)
{
	StringInfoData sql;
	List	   *keys;
	char	   *name = psprintf("cm_keys_%u", pt->relid);

	/* made already in this session (no "already exists" NOTICE for the caller) */
	if (apply_keys_table(pt) != NULL)
		return;
	keys = plan_key_columns(pt);
	initStringInfo(&sql);
	appendStringInfo(&sql, "CREATE TEMP TABLE %s ON COMMIT DELETE ROWS AS SELECT ",
					 quote_identifier(name));
	cm_append_quoted_list(&sql, keys, "l");
	appendStringInfo(&sql, " FROM %s l WITH NO DATA", log_relname(pt));
	if (SPI_execute(sql.data, false, 0) < 0)
		elog(ERROR, "clinic_migrate: could not create %s", keys_relname(pt));
}

/* "(s.a, s.b)" */
static char *
key_tuple(List *keys, const char *alias)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '(');
	cm_append_quoted_list(&buf, keys, alias);
	appendStringInfoChar(&buf, ')');
	return buf.data;
}

static bool
is_key_column(List *keys, const char *col)
{
	ListCell   *lc;

	foreach(lc, keys)
		if (strcmp((char *) lfirst(lc), col) == 0)
			return true;
	return false;
}

/*
 * The action of an upsert by key: "UPDATE SET c = EXCLUDED.c, ..." for the
 * columns outside the key; true if there is one, else "NOTHING" and false.
 */
static bool
append_upsert_action(StringInfo sql, List *cols, List *keys)
{
	ListCell   *lc;
	bool		any = false;

	foreach(lc, cols)
	{
		char	   *col = lfirst(lc);

		if (is_key_column(keys, col))
			continue;
		appendStringInfo(sql, "%s%s = EXCLUDED.%s", any ? ", " : "UPDATE SET ",
						 quote_identifier(col), quote_identifier(col));
		any = true;
	}
	if (!any)
		appendStringInfoString(sql, "NOTHING");
	return any;
}

/* move the tenant's logged keys of a table into its key table; returns how many */
static uint64
take_logged_keys(PlanTable *pt, const char *tenant)
{
	Oid			ttype = TEXTOID;
	Datum		tval = CStringGetTextDatum(tenant);
	StringInfoData sql;

	ensure_keys_table(pt);
	initStringInfo(&sql);
	appendStringInfo(&sql, "WITH d AS (DELETE FROM %s WHERE _cm_tenant = $1 RETURNING ",
					 log_relname(pt));
	cm_append_quoted_list(&sql, plan_key_columns(pt), NULL);
	appendStringInfo(&sql, ") INSERT INTO %s SELECT DISTINCT * FROM d", keys_relname(pt));
	cm_state_exec(sql.data, 1, &ttype, &tval, NULL, 0);
	return SPI_processed;
}

int64
apply_round(const char *tenant, TenantPlan *plan, const char *schema)
{
	volatile int64 applied = 0;
	bool		save_applying = cm_applying;
	Oid			save_userid;
	int			save_sec;

	/*
	 * As the extension owner: the round reads clinic_migrate's logs and its
	 * own key tables, and writes the tenant's tables whoever owns them.
	 */
	cm_owner_begin(&save_userid, &save_sec);
	cm_applying = true;
	PG_TRY();
	{
		int			nest = cm_replay_plan_settings();

		/* 1. take the logged keys, parents first, and upsert their rows */
		for (int i = 0; i < plan->ncopied; i++)
		{
			PlanTable  *pt = &plan->tables[i];
			PlanTable  *root = plan_root(plan, pt);
			List	   *keys = plan_key_columns(pt);
			Oid			target = clone_target_relid(schema, pt->relname);
			StringInfoData sql;
			bool		always;
			List	   *cols = plan_copy_columns(pt->relid, &always);
			Oid			rtype = root->tenant_type;
			Datum		rval = plan_tenant_datum(root, tenant);

			if (take_logged_keys(pt, tenant) == 0)
				continue;
			applied += SPI_processed;
			pt->applied += SPI_processed;

			initStringInfo(&sql);
			appendStringInfo(&sql, "INSERT INTO %s (", cm_qualified_relname(target));
			cm_append_quoted_list(&sql, cols, NULL);
			appendStringInfo(&sql, ")%s SELECT ", always ? " OVERRIDING SYSTEM VALUE" : "");
			cm_append_quoted_list(&sql, cols, "s");
			plan_append_tenant_rows(&sql, plan, pt, 0, 0);
			appendStringInfo(&sql, " AND %s IN (SELECT * FROM %s) ON CONFLICT %s DO ",
							 key_tuple(keys, "s"), keys_relname(pt), key_tuple(keys, NULL));
			(void) append_upsert_action(&sql, cols, keys);
			if (SPI_execute_with_args(sql.data, 1, &rtype, &rval, NULL, false, 0) != SPI_OK_INSERT)
				elog(ERROR, "clinic_migrate: replay into %s failed", cm_qualified_relname(target));
			/* rows created meanwhile took new keys: keep the sequences past them */
			clone_set_sequences(target);
		}

		/* 2. children first: keys that are no longer the tenant's go */
		for (int i = plan->ncopied - 1; i >= 0; i--)
		{
			PlanTable  *pt = &plan->tables[i];
			PlanTable  *root = plan_root(plan, pt);
			List	   *keys = plan_key_columns(pt);
			Oid			target = clone_target_relid(schema, pt->relname);
			StringInfoData sql;
			Oid			rtype = root->tenant_type;
			Datum		rval = plan_tenant_datum(root, tenant);

			/* driven by the keys: an index probe per key on each side, whatever the sizes */
			initStringInfo(&sql);
			appendStringInfo(&sql, "DELETE FROM %s t USING (SELECT DISTINCT * FROM %s) k "
							 "WHERE %s = %s AND NOT EXISTS (SELECT 1",
							 cm_qualified_relname(target), keys_relname(pt),
							 key_tuple(keys, "t"), key_tuple(keys, "k"));
			plan_append_tenant_rows(&sql, plan, pt, 0, 0);
			appendStringInfo(&sql, " AND %s = %s)", key_tuple(keys, "s"), key_tuple(keys, "k"));
			if (SPI_execute_with_args(sql.data, 1, &rtype, &rval, NULL, false, 0) != SPI_OK_DELETE)
				elog(ERROR, "clinic_migrate: replay of deletes into %s failed",
					 cm_qualified_relname(target));
		}
		AtEOXact_GUC(true, nest);
	}
	PG_FINALLY();
	{
		cm_applying = save_applying;
		cm_owner_end(save_userid, save_sec);
	}
	PG_END_TRY();
	return applied;
}

int64
apply_reverse_round(const char *tenant, TenantPlan *plan, const char *schema)
{
	volatile int64 applied = 0;
	bool		save_applying = cm_applying;
	Oid			save_userid;
	int			save_sec;
	int			nest;

	/*
	 * As the extension owner, and as a replica, the way logical replication
	 * applies changes: the shared tables' own triggers (and the foreign-key
	 * checks, which the tenant's schema made already) do not fire again for
	 * rows that were written, checked and triggered in the tenant's schema.
	 * The capture triggers are ENABLE ALWAYS; cm_applying tells them that
	 * these writes are ours.
	 */
	cm_owner_begin(&save_userid, &save_sec);
	cm_applying = true;
	nest = NewGUCNestLevel();
	PG_TRY();
	{
		(void) set_config_option("session_replication_role", "replica", PGC_SUSET,
								 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
		(void) cm_replay_plan_settings();

		/* 1. parents first: the rows of the logged keys, from the schema */
		for (int i = 0; i < plan->ncopied; i++)
		{
			PlanTable  *pt = &plan->tables[i];
			PlanTable  *root = plan_root(plan, pt);
			List	   *keys = plan_key_columns(pt);
			Oid			source = clone_target_relid(schema, pt->relname);
			StringInfoData sql;
			bool		always;
			List	   *cols = plan_copy_columns(pt->relid, &always);
			bool		updates;
			Oid			rtype = root->tenant_type;
			Datum		rval = plan_tenant_datum(root, tenant);
			uint64		candidates;

			if (take_logged_keys(pt, tenant) == 0)
				continue;
			applied += SPI_processed;
			pt->applied += SPI_processed;

			/*
			 * A key that another tenant's shared row already has (a key the
			 * application chose itself, or a unique column outside the key)
			 * must not take that row over: name it and stop.
			 */
			initStringInfo(&sql);
			appendStringInfoString(&sql, "SELECT ");
			cm_append_quoted_list(&sql, keys, "t");
			appendStringInfo(&sql, " FROM %s t WHERE %s IN (SELECT * FROM %s) AND (",
							 cm_qualified_relname(pt->relid), key_tuple(keys, "t"), keys_relname(pt));
			plan_append_belongs(&sql, plan, pt, "t", 1);
			appendStringInfoString(&sql, ") IS NOT TRUE LIMIT 1");
			if (SPI_execute_with_args(sql.data, 1, &rtype, &rval, NULL, false, 0) != SPI_OK_SELECT)
				elog(ERROR, "clinic_migrate: key check of %s failed", cm_qualified_relname(pt->relid));
			if (SPI_processed > 0)
				ereport(ERROR,
						(errcode(ERRCODE_UNIQUE_VIOLATION),
						 errmsg("key %s of %s.%s belongs to another tenant in %s",
								SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1),
								quote_identifier(schema), quote_identifier(pt->relname),
								cm_qualified_relname(pt->relid)),
						 errdetail("The row was written in the schema of tenant \"%s\" after its cutover; replaying it would overwrite another tenant's row.",
								   tenant),
						 errhint("Change the key of that row in schema \"%s\"; keys generated by its defaults never collide.",
								 schema)));

			resetStringInfo(&sql);
			appendStringInfo(&sql, "SELECT count(*) FROM %s s WHERE %s IN (SELECT * FROM %s)",
							 cm_qualified_relname(source), key_tuple(keys, "s"), keys_relname(pt));
			if (SPI_execute(sql.data, false, 0) != SPI_OK_SELECT)
				elog(ERROR, "clinic_migrate: count of %s failed", cm_qualified_relname(source));
			{
				bool		isnull;

				candidates = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
														 SPI_tuptable->tupdesc, 1, &isnull));
			}
			if (candidates == 0)
				continue;

			resetStringInfo(&sql);
			appendStringInfo(&sql, "INSERT INTO %s AS t (", cm_qualified_relname(pt->relid));
			cm_append_quoted_list(&sql, cols, NULL);
			appendStringInfo(&sql, ")%s SELECT ", always ? " OVERRIDING SYSTEM VALUE" : "");
			cm_append_quoted_list(&sql, cols, "s");
			appendStringInfo(&sql, " FROM %s s WHERE %s IN (SELECT * FROM %s) ON CONFLICT %s DO ",
							 cm_qualified_relname(source), key_tuple(keys, "s"), keys_relname(pt),
							 key_tuple(keys, NULL));
			updates = append_upsert_action(&sql, cols, keys);
			if (updates)
			{
				/* and never another tenant's row, whatever happened since the check */
				appendStringInfoString(&sql, " WHERE ");
				plan_append_belongs(&sql, plan, pt, "t", 1);
			}
			if (SPI_execute_with_args(sql.data, 1, &rtype, &rval, NULL, false, 0) != SPI_OK_INSERT)
				elog(ERROR, "clinic_migrate: reverse replay into %s failed",
					 cm_qualified_relname(pt->relid));
			if (updates && SPI_processed < candidates)
				ereport(ERROR,
						(errcode(ERRCODE_UNIQUE_VIOLATION),
						 errmsg("rows of %s.%s collide with another tenant's rows in %s",
								quote_identifier(schema), quote_identifier(pt->relname),
								cm_qualified_relname(pt->relid)),
						 errhint("See clinic_migrate.validate_differences('%s').", tenant)));
		}

		/* 2. children first: keys gone from the schema go from the shared table */
		for (int i = plan->ncopied - 1; i >= 0; i--)
		{
			PlanTable  *pt = &plan->tables[i];
			PlanTable  *root = plan_root(plan, pt);
			List	   *keys = plan_key_columns(pt);
			Oid			source = clone_target_relid(schema, pt->relname);
			StringInfoData sql;
			Oid			rtype = root->tenant_type;
			Datum		rval = plan_tenant_datum(root, tenant);

			if (apply_keys_table(pt) == NULL)
				continue;
			initStringInfo(&sql);
			appendStringInfo(&sql, "DELETE FROM %s t USING (SELECT DISTINCT * FROM %s) k "
							 "WHERE %s = %s AND NOT EXISTS (SELECT 1 FROM %s s WHERE %s = %s) AND ",
							 cm_qualified_relname(pt->relid), keys_relname(pt),
							 key_tuple(keys, "t"), key_tuple(keys, "k"),
							 cm_qualified_relname(source), key_tuple(keys, "s"), key_tuple(keys, "k"));
			plan_append_belongs(&sql, plan, pt, "t", 1);
			if (SPI_execute_with_args(sql.data, 1, &rtype, &rval, NULL, false, 0) != SPI_OK_DELETE)
				elog(ERROR, "clinic_migrate: reverse replay of deletes into %s failed",
					 cm_qualified_relname(pt->relid));
		}
		AtEOXact_GUC(true, nest);
	}
	PG_FINALLY();
	{
		cm_applying = save_applying;
		cm_owner_end(save_userid, save_sec);
	}
	PG_END_TRY();
	return applied;
}

char *
apply_keys_table(PlanTable *pt)
{
	Oid			relid;

	relid = RelnameGetRelid(psprintf("cm_keys_%u", pt->relid));
	if (!OidIsValid(relid) || !isTempNamespace(get_rel_namespace(relid)))
		return NULL;
	return keys_relname(pt);
}

/* every log table there is, whatever the plan is now (quoted names) */
static SPITupleTable *
log_tables(uint64 *n)
{
	cm_state_exec("SELECT quote_ident(relname) FROM pg_class "
				  "WHERE relnamespace = 'clinic_migrate'::regnamespace AND relname LIKE 'log\\_%' "
				  "AND relkind = 'r'", 0, NULL, NULL, NULL, 0);
	*n = SPI_processed;
	return SPI_tuptable;
}

void
apply_forget(const char *tenant)
{
	Oid			ttype = TEXTOID;
	Datum		tval = CStringGetTextDatum(tenant);
	SPITupleTable *tt;
	uint64		n;

	tt = log_tables(&n);
	for (uint64 i = 0; i < n; i++)
		cm_state_exec(psprintf("DELETE FROM %s.%s WHERE _cm_tenant = $1", CM_SCHEMA,
							   SPI_getvalue(tt->vals[i], tt->tupdesc, 1)),
					  1, &ttype, &tval, NULL, 0);
}

/*
 * The changes of a tenant captured and not yet applied, in every log table:
 * how many, and how long the oldest has waited (seconds; 0 when none).
 */
void
apply_backlog(const char *tenant, int64 *count, double *age)
{
	Oid			ttype = TEXTOID;
	Datum		tval = CStringGetTextDatum(tenant);
	SPITupleTable *tt;
	uint64		n;
	StringInfoData sql;
	bool		isnull;
	Datum		d;

	*count = 0;
	*age = 0;
	SPI_connect();
	tt = log_tables(&n);
	if (n > 0)
	{
		initStringInfo(&sql);
		appendStringInfoString(&sql, "SELECT count(*), extract(epoch FROM now() - min(_cm_at))::float8 FROM (");
		for (uint64 i = 0; i < n; i++)
			appendStringInfo(&sql, "%sSELECT _cm_at FROM %s.%s WHERE _cm_tenant = $1",
							 i ? " UNION ALL " : "", CM_SCHEMA, SPI_getvalue(tt->vals[i], tt->tupdesc, 1));
		appendStringInfoString(&sql, ") l");
		cm_state_exec(sql.data, 1, &ttype, &tval, NULL, 0);
		*count = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
		if (!isnull)
			*age = Max(DatumGetFloat8(d), 0);
	}
	SPI_finish();
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
