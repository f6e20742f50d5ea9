/*-------------------------------------------------------------------------
 * apply.c
 *	  Brings a tenant's copy up to date from the captured keys, and, after
 *	  cutover, its shared rows from the changes made in its schema.
 *	  Floor 4 (capture and replay).  May call: floors 1 to 3, capture.
 *
 * Replay is idempotent and order-free: for each logged key it re-reads the
 * row where the tenant lives now (the "source" of the round: the shared
 * tables before cutover, the tenant's schema after); if the row exists and
 * belongs to the tenant it is upserted into the other copy (the "target"),
 * otherwise the key is deleted from it.  A batch copy spread over many
 * transactions has no single snapshot, and transactions commit out of
 * order; re-reading by key makes both harmless.
 *
 * One round is one transaction (repeatable read in the worker, so every
 * statement sees the same data):
 *   1. parents first, the logged keys of each table move from its log into
 *      a temporary key table with DELETE ... RETURNING: exactly the entries
 *      this round applies are deleted, and an entry committed after the
 *      round's snapshot stays for the next round (the trap of deleting
 *      "id <= N" when ids commit out of order);
 *   2. children first, the keys that are no longer the tenant's are
 *      deleted from the target, as a replica (no foreign key action fires:
 *      the rows that pointed at them are replayed too).  Deleting first
 *      frees the unique values those rows held for the rows that took them;
 *   3. parents first, the rows of the keys are upserted.  Rows that swapped
 *      a unique value outside the key still collide: the table's upsert
 *      is then done again as a replica, as a delete and an insert of the
 *      logged keys.
 *
 * Who runs what: the logs and key tables are clinic_migrate's, read and
 * written as the extension owner; every statement that reads or writes
 * the application's tables runs as the target table's owner, inside a
 * security-restricted operation, with search_path pinned (state.h), so
 * that the owner's triggers, CHECKs and index expressions run with the
 * owner's rights and no more.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "access/htup_details.h"
#include "catalog/pg_class.h"
#include "utils/syscache.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/resowner.h"

#include "apply.h"
#include "capture.h"
#include "settings.h"
#include "util.h"
#include "locks.h"
#include "runstate.h"
#include "clone.h"
#include "plan.h"
#include "state.h"

/* one round's direction and tenant */
typedef struct Replay
{
	const char *tenant;
	TenantPlan *plan;
	const char *schema;
	bool		reverse;		/* after cutover: from the schema to the shared tables */
} Replay;

static char *
log_relname(PlanTable *pt)
{
	Oid			log = capture_log_relid(pt->relid);

	if (!OidIsValid(log))
		elog(ERROR, "clinic_migrate: table %s has no capture log", get_rel_name(pt->relid));
	return cm_qualified_relname(log);
}

static char *
keys_relname(PlanTable *pt)
{
	return psprintf("pg_temp.%s", quote_identifier(psprintf("cm_keys_%u", pt->relid)));
}

/*
 * A temporary table for the keys a round applies, emptied at commit: the
 * extension owner's, readable by the roles the round's statements run as
 * (no other session can see a temporary table).
 */
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
	cm_state_exec(sql.data, 0, NULL, NULL, NULL, 0);
	cm_state_exec(psprintf("GRANT SELECT ON %s TO PUBLIC", keys_relname(pt)), 0, NULL, NULL, NULL, 0);
}

/* "a.k1 OPERATOR(pg_catalog.=) b.k1 AND ..." over the key columns */
static void
append_key_match(StringInfo sql, PlanTable *pt, const char *a, const char *b)
{
	for (int k = 0; k < pt->nkey; k++)
	{
		const char *col = quote_identifier(get_attname(pt->relid, pt->key_att[k], false));
		Oid			type = get_atttype(pt->relid, pt->key_att[k]);

		if (k)
			appendStringInfoString(sql, " AND ");
		cm_append_eq(sql, psprintf("%s.%s", a, col), type, psprintf("%s.%s", b, col), type);
	}
}

/* "(k1, k2)" */
static char *
key_tuple(List *keys)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '(');
	cm_append_quoted_list(&buf, keys, NULL);
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

	/*
	 * Emptied at commit, but two rounds may share a transaction (SELECT
	 * sync_now(t) FROM ... for several tenants): the keys of the round
	 * before would be taken for this tenant's.
	 */
	cm_state_exec(psprintf("DELETE FROM %s", keys_relname(pt)), 0, NULL, NULL, NULL, 0);
	initStringInfo(&sql);
	appendStringInfo(&sql, "WITH d AS (DELETE FROM %s WHERE _cm_tenant OPERATOR(pg_catalog.=) $1 RETURNING ",
					 log_relname(pt));
	cm_append_quoted_list(&sql, plan_key_columns(pt), NULL);
	appendStringInfo(&sql, ") INSERT INTO %s SELECT DISTINCT * FROM d", keys_relname(pt));
	cm_state_exec(sql.data, 1, &ttype, &tval, NULL, 0);
	return SPI_processed;
}

static Oid
source_rel(Replay *r, PlanTable *pt)
{
	return r->reverse ? clone_target_relid(r->schema, pt->relname) : pt->relid;
}

static Oid
target_rel(Replay *r, PlanTable *pt)
{
	return r->reverse ? pt->relid : clone_target_relid(r->schema, pt->relname);
}

/* " FROM <source> s ... WHERE <the row is the tenant's>" ($1: the tenant) */
static void
append_source_rows(StringInfo sql, Replay *r, PlanTable *pt)
{
	if (r->reverse)
		appendStringInfo(sql, " FROM %s%s s WHERE true", cm_only(source_rel(r, pt)),
						 cm_qualified_relname(source_rel(r, pt)));
	else
		plan_append_tenant_rows(sql, r->plan, pt, 0, 0);
}

/* run one statement of a round ($1: the tenant) as the target table's owner; returns SPI_processed */
static uint64
run_as_target_owner(Replay *r, PlanTable *pt, const char *sql, int expect)
{
	PlanTable  *root = plan_root(r->plan, pt);
	Oid			rtype = root->tenant_type;
	Datum		rval = plan_tenant_datum(root, r->tenant);
	CmRoleSave	save;
	int			ret;

	cm_table_owner_begin(target_rel(r, pt), &save);
	ret = SPI_execute_with_args(sql, 1, &rtype, &rval, NULL, false, 0);
	cm_role_end(&save);
	if (ret != expect)
		elog(ERROR, "clinic_migrate: replay into %s failed (SPI %d)",
			 cm_qualified_relname(target_rel(r, pt)), ret);
	return SPI_processed;
}

/*
 * Reverse only: a key that another tenant's shared row already has (a key
 * the application chose itself) must not take that row over: name it and
 * stop.
 */
static void
check_foreign_keys_taken(Replay *r, PlanTable *pt)
{
	StringInfoData sql;
	PlanTable  *root = plan_root(r->plan, pt);
	Oid			rtype = root->tenant_type;
	Datum		rval = plan_tenant_datum(root, r->tenant);
	CmRoleSave	save;
	int			ret;

	initStringInfo(&sql);
	appendStringInfoString(&sql, "SELECT ");
	cm_append_quoted_list(&sql, plan_key_columns(pt), "t");
	appendStringInfo(&sql, " FROM %s%s t JOIN %s k ON (", cm_only(pt->relid),
					 cm_qualified_relname(pt->relid), keys_relname(pt));
	append_key_match(&sql, pt, "t", "k");
	appendStringInfoString(&sql, ") WHERE (");
	plan_append_belongs(&sql, r->plan, pt, "t", 1);
	appendStringInfoString(&sql, ") IS NOT TRUE LIMIT 1");
	cm_table_owner_begin(pt->relid, &save);
	ret = SPI_execute_with_args(sql.data, 1, &rtype, &rval, NULL, false, 1);
	cm_role_end(&save);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "clinic_migrate: key check of %s failed", cm_qualified_relname(pt->relid));
	if (SPI_processed > 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNIQUE_VIOLATION),
				 errmsg("key %s of %s.%s belongs to another tenant in %s",
						SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1),
						quote_identifier(r->schema), quote_identifier(pt->relname),
						cm_qualified_relname(pt->relid)),
				 errdetail("The row was written in the schema of tenant \"%s\" after its cutover; replaying it would overwrite another tenant's row.",
						   r->tenant),
				 errhint("Change the key of that row in schema \"%s\"; keys generated by its defaults never collide.",
						 r->schema)));
}

/* step 2: the logged keys that are no longer the tenant's go from the target */
static void
delete_gone(Replay *r, PlanTable *pt)
{
	StringInfoData sql;

	initStringInfo(&sql);
	appendStringInfo(&sql, "DELETE FROM %s%s t USING %s k WHERE ", cm_only(target_rel(r, pt)),
					 cm_qualified_relname(target_rel(r, pt)), keys_relname(pt));
	append_key_match(&sql, pt, "t", "k");
	appendStringInfoString(&sql, " AND NOT EXISTS (SELECT 1");
	append_source_rows(&sql, r, pt);
	appendStringInfoString(&sql, " AND ");
	append_key_match(&sql, pt, "s", "k");
	appendStringInfoChar(&sql, ')');
	if (r->reverse)
	{
		appendStringInfoString(&sql, " AND ");
		plan_append_belongs(&sql, r->plan, pt, "t", 1);
	}
	(void) run_as_target_owner(r, pt, sql.data, SPI_OK_DELETE);
}

/*
 * Before a copied table's indexes are built: its rows whose logged keys are
 * gone from the source (or no longer the tenant's) leave the copy.  A
 * batch copy spread over transactions may hold a row deleted after its
 * batch, and the row that took its unique value in a later one: the
 * unique index would refuse the pair.  The log is read, not consumed: the
 * next replay round applies every key as always.  SPI connected.
 */
void
apply_prune_before_index(const char *tenant, TenantPlan *plan, const char *schema, PlanTable *pt)
{
	Replay		r = {tenant, plan, schema, false};
	Oid			ttype = TEXTOID;
	Datum		tval = CStringGetTextDatum(tenant);
	StringInfoData sql;
	int			nest;

	if (!OidIsValid(capture_log_relid(pt->relid)) || !OidIsValid(clone_target_relid(schema, pt->relname)))
		return;
	ensure_keys_table(pt);
	cm_state_exec(psprintf("DELETE FROM %s", keys_relname(pt)), 0, NULL, NULL, NULL, 0);
	initStringInfo(&sql);
	appendStringInfo(&sql, "INSERT INTO %s SELECT DISTINCT ", keys_relname(pt));
	cm_append_quoted_list(&sql, plan_key_columns(pt), NULL);
	appendStringInfo(&sql, " FROM %s WHERE _cm_tenant OPERATOR(pg_catalog.=) $1", log_relname(pt));
	cm_state_exec(sql.data, 1, &ttype, &tval, NULL, 0);
	if (SPI_processed == 0)
		return;
	nest = cm_set_replica();
	delete_gone(&r, pt);
	cm_restore_output_settings(nest);
	cm_state_exec(psprintf("DELETE FROM %s", keys_relname(pt)), 0, NULL, NULL, NULL, 0);
}

/* the INSERT ... SELECT of the logged keys' rows, with or without the upsert */
static char *
insert_sql(Replay *r, PlanTable *pt, bool upsert, bool *updates)
{
	StringInfoData sql;
	bool		always;
	List	   *cols = plan_copy_columns(pt->relid, &always);
	List	   *keys = plan_key_columns(pt);

	initStringInfo(&sql);
	appendStringInfo(&sql, "INSERT INTO %s AS t (", cm_qualified_relname(target_rel(r, pt)));
	cm_append_quoted_list(&sql, cols, NULL);
	appendStringInfo(&sql, ")%s SELECT ", always ? " OVERRIDING SYSTEM VALUE" : "");
	cm_append_quoted_list(&sql, cols, "s");
	append_source_rows(&sql, r, pt);
	appendStringInfo(&sql, " AND EXISTS (SELECT 1 FROM %s k WHERE ", keys_relname(pt));
	append_key_match(&sql, pt, "s", "k");
	appendStringInfoChar(&sql, ')');
	*updates = false;
	if (upsert)
	{
		appendStringInfo(&sql, " ON CONFLICT %s DO ", key_tuple(keys));
		*updates = append_upsert_action(&sql, cols, keys);
		if (*updates && r->reverse)
		{
			/* and never another tenant's row, whatever happened since the check */
			appendStringInfoString(&sql, " WHERE ");
			plan_append_belongs(&sql, r->plan, pt, "t", 1);
		}
	}
	return sql.data;
}

/* how many of the logged keys' rows the source has */
static uint64
count_candidates(Replay *r, PlanTable *pt)
{
	StringInfoData sql;
	bool		isnull;
	CmRoleSave	save;
	PlanTable  *root = plan_root(r->plan, pt);
	Oid			rtype = root->tenant_type;
	Datum		rval = plan_tenant_datum(root, r->tenant);
	int			ret;

	initStringInfo(&sql);
	appendStringInfoString(&sql, "SELECT pg_catalog.count(*)");
	append_source_rows(&sql, r, pt);
	appendStringInfo(&sql, " AND EXISTS (SELECT 1 FROM %s k WHERE ", keys_relname(pt));
	append_key_match(&sql, pt, "s", "k");
	appendStringInfoChar(&sql, ')');
	cm_table_owner_begin(target_rel(r, pt), &save);
	ret = SPI_execute_with_args(sql.data, 1, &rtype, &rval, NULL, false, 0);
	cm_role_end(&save);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "clinic_migrate: count of %s failed", cm_qualified_relname(source_rel(r, pt)));
	return DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

static int
set_replica(void)
{
	return cm_set_replica();
}

/*
 * Step 3 for one table: the upsert, in a subtransaction.  A unique value
 * outside the key that two logged rows swapped makes it fail; then, as a
 * replica, the logged keys' rows are deleted from the target and inserted
 * again.  Returns the rows written.
 */
/* the upsert of upsert_rows, in its subtransaction */
typedef struct UpsertAttempt
{
	Replay	   *r;
	PlanTable  *pt;
	const char *sql;
	uint64		written;
} UpsertAttempt;

static void
upsert_attempt(void *arg)
{
	UpsertAttempt *a = arg;

	a->written = run_as_target_owner(a->r, a->pt, a->sql, SPI_OK_INSERT);
}

static uint64
upsert_rows(Replay *r, PlanTable *pt, bool *updates)
{
	UpsertAttempt a = {r, pt, insert_sql(r, pt, true, updates), 0};
	ErrorData  *failed = cm_try_in_subxact(upsert_attempt, &a);
	uint64		written = a.written;
	bool		collided = false;

	if (failed != NULL)
	{
		/* a swapped unique value, or a swapped range of an exclusion constraint */
		if (failed->sqlerrcode != ERRCODE_UNIQUE_VIOLATION &&
			failed->sqlerrcode != ERRCODE_EXCLUSION_VIOLATION)
			ReThrowError(failed);
		FreeErrorData(failed);
		collided = true;
	}

	if (collided)
	{
		StringInfoData del;
		int			nest = set_replica();
		bool		ignored;

		initStringInfo(&del);
		appendStringInfo(&del, "DELETE FROM %s%s t USING %s k WHERE ", cm_only(target_rel(r, pt)),
						 cm_qualified_relname(target_rel(r, pt)), keys_relname(pt));
		append_key_match(&del, pt, "t", "k");
		if (r->reverse)
		{
			appendStringInfoString(&del, " AND ");
			plan_append_belongs(&del, r->plan, pt, "t", 1);
		}
		(void) run_as_target_owner(r, pt, del.data, SPI_OK_DELETE);
		written = run_as_target_owner(r, pt, insert_sql(r, pt, false, &ignored), SPI_OK_INSERT);
		AtEOXact_GUC(true, nest);
	}
	return written;
}

/* the relations a round of this tenant reads and writes */
List *
apply_relations(TenantPlan *plan, const char *schema, List **written)
{
	List	   *rels = NIL;

	*written = NIL;
	for (int i = 0; i < plan->ncopied; i++)
	{
		PlanTable  *pt = &plan->tables[i];

		rels = lappend_oid(rels, pt->relid);
		for (int h = 0; h < pt->nhops; h++)
			rels = list_append_unique_oid(rels, pt->hops[h].parent);
		*written = lappend_oid(*written, clone_target_relid(schema, pt->relname));
	}
	return rels;
}

static int64
replay_round(Replay *r)
{
	volatile int64 applied = 0;
	bool		save_applying = cm_applying;
	TenantPlan *plan = r->plan;
	bool	   *has = palloc0(sizeof(bool) * Max(plan->ncopied, 1));

	/*
	 * cm_applying tells the capture triggers (ENABLE ALWAYS) that these
	 * writes are ours.
	 */
	cm_applying = true;
	PG_TRY();
	{
		int			nest = cm_replay_plan_settings();

		/*
		 * The whole round is a replica's, the way logical replication
		 * applies changes: the application's triggers (ENABLE, cloned onto
		 * the tenant's tables too) and the foreign-key checks do not fire
		 * again for rows that were written, checked and triggered where the
		 * tenant lived: before cutover the shared tables, after it the
		 * tenant's schema.
		 */
		(void) set_replica();

		/* 1. parents first: take the logged keys */
		for (int i = 0; i < plan->ncopied; i++)
		{
			PlanTable  *pt = &plan->tables[i];
			uint64		n;

			/*
			 * A table the plan has now but the move did not start with (made
			 * since): it has no log and no copy; its rows are the
			 * validation's to report.
			 */
			if (!OidIsValid(capture_log_relid(pt->relid)) ||
				!OidIsValid(clone_target_relid(r->schema, pt->relname)))
			{
				has[i] = false;
				continue;
			}
			n = take_logged_keys(pt, r->tenant);

			has[i] = n > 0;
			applied += n;
			pt->applied += n;
			if (n > 0 && r->reverse)
				check_foreign_keys_taken(r, pt);
		}

		/*
		 * A table rewritten since this round's snapshot looks empty to it:
		 * its logged rows would be taken for deleted.  Looked at for the
		 * tables this round is about to read and write; the next round
		 * replays them.
		 */
		{
			List	   *rels = NIL;
			List	   *written = NIL;

			for (int i = 0; i < plan->ncopied; i++)
			{
				PlanTable  *pt = &plan->tables[i];

				if (!has[i])
					continue;
				rels = lappend_oid(rels, source_rel(r, pt));
				for (int h = 0; h < pt->nhops; h++)
					rels = list_append_unique_oid(rels, pt->hops[h].parent);
				written = lappend_oid(written, target_rel(r, pt));
			}
			if (rels != NIL && cm_relations_changed_since_snapshot(rels, written))
				ereport(ERROR,
						(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
						 errmsg("a table of tenant \"%s\" was changed by a schema change since this replay round began",
								r->tenant),
						 errdetail("A rewritten table looks empty to an older snapshot."),
						 errhint("Nothing was applied; the next round replays it.")));
		}

		/* 2. children first, as a replica: keys that are no longer the tenant's go */
		{
			int			rnest = set_replica();

			for (int i = plan->ncopied - 1; i >= 0; i--)
				if (has[i])
					delete_gone(r, &plan->tables[i]);
			AtEOXact_GUC(true, rnest);
		}

		/* 3. parents first: the rows of the logged keys */
		for (int i = 0; i < plan->ncopied; i++)
		{
			PlanTable  *pt = &plan->tables[i];
			uint64		candidates;
			uint64		written;
			bool		updates;

			if (!has[i])
				continue;
			candidates = r->reverse ? count_candidates(r, pt) : 0;
			if (r->reverse && candidates == 0)
				continue;
			written = upsert_rows(r, pt, &updates);
			if (r->reverse && updates && written < candidates)
				ereport(ERROR,
						(errcode(ERRCODE_UNIQUE_VIOLATION),
						 errmsg("rows of %s.%s collide with another tenant's rows in %s",
								quote_identifier(r->schema), quote_identifier(pt->relname),
								cm_qualified_relname(pt->relid)),
						 errhint("See clinic_migrate.validate_differences('%s').", r->tenant)));
			if (!r->reverse)
			{
				CmRoleSave	save;

				/* rows created meanwhile took new keys: keep the sequences past them */
				cm_table_owner_begin(target_rel(r, pt), &save);
				clone_set_sequences(target_rel(r, pt));
				cm_role_end(&save);
			}
		}
		AtEOXact_GUC(true, nest);
	}
	PG_FINALLY();
	{
		cm_applying = save_applying;
	}
	PG_END_TRY();
	return applied;
}

int64
apply_round(const char *tenant, TenantPlan *plan, const char *schema)
{
	Replay		r = {tenant, plan, schema, false};

	return replay_round(&r);
}

int64
apply_reverse_round(const char *tenant, TenantPlan *plan, const char *schema)
{
	Replay		r = {tenant, plan, schema, true};

	return replay_round(&r);
}

char *
apply_keys_table(PlanTable *pt)
{
	Oid			relid;

	HeapTuple	tup;
	bool		ours;

	/* in this session's temporary schema only, whatever the search_path */
	if (!OidIsValid(LookupExplicitNamespace("pg_temp", true)))
		return NULL;
	relid = get_relname_relid(psprintf("cm_keys_%u", pt->relid), LookupExplicitNamespace("pg_temp", true));
	if (!OidIsValid(relid))
		return NULL;

	/*
	 * The extension owner writes it: it must be the plain table we made,
	 * never one a caller of sync_now prepared with triggers or rules of its
	 * own.
	 */
	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tup))
		return NULL;
	{
		Form_pg_class c = (Form_pg_class) GETSTRUCT(tup);

		ours = c->relkind == RELKIND_RELATION && c->relowner == cm_extension_owner() &&
			!c->relhastriggers && !c->relhasrules && !c->relrowsecurity;
	}
	ReleaseSysCache(tup);
	if (!ours)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("temporary table %s was not made by clinic_migrate", keys_relname(pt)),
				 errhint("Drop it, or call clinic_migrate functions from another session.")));
	return keys_relname(pt);
}

/* every log table there is, whatever the plan is now (quoted names) */
static SPITupleTable *
log_tables(uint64 *n)
{
	cm_state_exec("SELECT quote_ident(relname) FROM pg_class "
				  "WHERE oid IN " CM_RELS_OF_NAMESPACE("'clinic_migrate'::pg_catalog.regnamespace") " "
				  "AND relname LIKE 'log\\_%' "
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
