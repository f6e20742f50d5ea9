/*-------------------------------------------------------------------------
 * clinic_migrate.c
 *	  Module entry point: settings, and the helpers every part shares
 *	  (tenant arguments, schema names, the per-tenant lock, stable output
 *	  settings, identifier quoting).
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_collation.h"
#include "common/hashfn.h"
#include "utils/resowner.h"
#include "utils/memutils.h"
#include "pgstat.h"
#include "executor/spi.h"
#include "access/xact.h"
#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "nodes/params.h"
#include "miscadmin.h"
#include "storage/lock.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/varlena.h"
#include "utils/typcache.h"
#include <signal.h>
#include "storage/lwlock.h"
#include "storage/sinvaladt.h"
#include "utils/backend_status.h"
#include "utils/timestamp.h"
#include "storage/lmgr.h"
#include "common/pg_prng.h"

#include "clinic_migrate.h"
#include "launcher.h"
#include "worker.h"

PG_MODULE_MAGIC;

char	   *cm_source_schema = NULL;
char	   *cm_tenant_column = NULL;
char	   *cm_schema_template = NULL;
char	   *cm_registry_table = NULL;
int			cm_batch_size = 50000;
int			cm_progress_interval = 10;
int			cm_batch_delay = 0;
int			cm_sync_interval = 1000;
int			cm_cutover_max_lag = 1000;
int			cm_cutover_max_pause = 200;
bool		cm_shared_foreign_keys = true;
int			cm_cutover_attempts = 10;
int			cm_cutover_wait = 300;
int			cm_archive_batch_size = 10000;
int			cm_lock_timeout = 50;
int			cm_lock_retry_time = 60;
char	   *cm_archive_schema = NULL;
char	   *cm_registry_schema_column = NULL;
char	   *cm_registry_status_column = NULL;
char	   *cm_pause_points = NULL;
int			cm_max_rows_per_second = 0;
int			cm_max_replication_lag = 0;
int			cm_alert_migration_time = 3600;
int			cm_alert_lag_seconds = 60;
int			cm_alert_lag_changes = 100000;

void		_PG_init(void);

/* A schema template must hold exactly one %s and no other % sequence. */
static bool
check_schema_template(char **newval, void **extra, GucSource source)
{
	const char *p = *newval;
	int			n = 0;

	for (; p && *p; p++)
	{
		if (*p != '%')
			continue;
		if (p[1] == 's')
		{
			n++;
			p++;
			continue;
		}
		GUC_check_errdetail("Only %%s may follow a %% sign.");
		GUC_check_errhint("Use a pattern such as 'tenant_%%s'.");
		return false;
	}
	if (n != 1)
	{
		GUC_check_errdetail("The template must contain %%s exactly once.");
		GUC_check_errhint("Use a pattern such as 'tenant_%%s'.");
		return false;
	}
	if (strlen(*newval) > NAMEDATALEN - 10)
	{
		GUC_check_errdetail("The template leaves too little room for the tenant id.");
		GUC_check_errhint("Keep the template under %d bytes.", NAMEDATALEN - 10);
		return false;
	}
	return true;
}

void
_PG_init(void)
{
	DefineCustomStringVariable("clinic_migrate.source_schema",
							   "Schema that holds the shared multi-tenant tables.",
							   NULL, &cm_source_schema, "public",
							   PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("clinic_migrate.tenant_column",
							   "Column that tells tenants apart in shared tables.",
							   NULL, &cm_tenant_column, "tenant_id",
							   PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("clinic_migrate.schema_template",
							   "Name of a tenant's schema; %s stands for the tenant id.",
							   NULL, &cm_schema_template, "tenant_%s",
							   PGC_USERSET, 0, check_schema_template, NULL, NULL);
	DefineCustomStringVariable("clinic_migrate.registry_table",
							   "Tenant registry table in the source schema (empty: none).",
							   "It is never copied; a tenant listed there may be migrated even with no rows.",
							   &cm_registry_table, "tenants",
							   PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("clinic_migrate.batch_size",
							"Rows copied per committed batch.",
							NULL, &cm_batch_size, 50000, 1, 10000000,
							PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("clinic_migrate.batch_delay",
							"Pause between committed batches of a copy.",
							"Throttles a copy on a busy server.",
							&cm_batch_delay, 0, 0, 60000,
							PGC_USERSET, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("clinic_migrate.sync_interval",
							"Pause between replay rounds of a tenant kept in sync.",
							NULL, &cm_sync_interval, 1000, 10, 600000,
							PGC_USERSET, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("clinic_migrate.progress_interval",
							"Seconds between progress notices from migrate_tenant (0: none).",
							NULL, &cm_progress_interval, 10, 0, 3600,
							PGC_USERSET, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("clinic_migrate.cutover_max_lag",
							"Captured changes pending below which cutover pauses the tenant's writes.",
							NULL, &cm_cutover_max_lag, 1000, 0, 100000000,
							PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("clinic_migrate.cutover_max_pause",
							"Longest pause of a tenant's writes in one cutover attempt.",
							"Past it the attempt is given up, the writes resume, and cutover catches up and tries again.",
							&cm_cutover_max_pause, 200, 10, 60000,
							PGC_USERSET, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("clinic_migrate.cutover_attempts",
							"Pauses cutover (or rollback after cutover) tries before it fails.",
							NULL, &cm_cutover_attempts, 10, 1, 1000,
							PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("clinic_migrate.cutover_wait",
							"How long cutover waits for the pending changes to fall below cutover_max_lag.",
							NULL, &cm_cutover_wait, 300, 0, 86400,
							PGC_USERSET, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("clinic_migrate.archive_batch_size",
							"Rows moved per committed batch when finalize_tenant archives or deletes shared rows.",
							NULL, &cm_archive_batch_size, 10000, 1, 10000000,
							PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("clinic_migrate.lock_timeout",
							"Longest wait of one attempt to lock the application's tables for a step's DDL.",
							"Writers of those tables queue behind the request meanwhile: keep it short. "
							"A failed attempt releases every lock it took and is retried with back-off.",
							&cm_lock_timeout, 50, 1, 60000,
							PGC_USERSET, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomBoolVariable("clinic_migrate.shared_foreign_keys",
							 "Whether a tenant's tables keep their foreign keys to tables that stay shared.",
							 "Each such key adds two triggers to the shared table (the registry, a reference "
							 "table), which every tenant's keys make longer to load and every delete of a "
							 "referenced row checks against every tenant's table.",
							 &cm_shared_foreign_keys, true, PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("clinic_migrate.lock_retry_time",
							"How long a step keeps retrying to lock the application's tables before it fails with 55P03.",
							NULL, &cm_lock_retry_time, 60, 0, 86400,
							PGC_USERSET, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomStringVariable("clinic_migrate.archive_schema",
							   "Schema of the archive tables that finalize_tenant moves shared rows into.",
							   NULL, &cm_archive_schema, "clinic_migrate_archive",
							   PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("clinic_migrate.registry_schema_column",
							   "Column of the registry table kept set to where the tenant's rows live (empty: none).",
							   NULL, &cm_registry_schema_column, "",
							   PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("clinic_migrate.registry_status_column",
							   "Column of the registry table kept set to the tenant's migration state (empty: none).",
							   NULL, &cm_registry_status_column, "",
							   PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("clinic_migrate.pause_points",
							   "Points where clinic_migrate stops while a session holds their advisory lock (tests only).",
							   "A comma separated list; see cm_pause_point in the source.",
							   &cm_pause_points, "",
							   PGC_SUSET, GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE, NULL, NULL, NULL);
	DefineCustomIntVariable("clinic_migrate.max_rows_per_second",
							"Rows a copy may write per second (0: no limit).",
							"A throttle for a busy server; the copy pauses between batches to keep under it.",
							&cm_max_rows_per_second, 0, 0, INT_MAX,
							PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("clinic_migrate.max_replication_lag",
							"Replay lag of a standby above which copies pause between batches and no job starts (0: never).",
							NULL, &cm_max_replication_lag, 0, 0, INT_MAX,
							PGC_USERSET, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("clinic_migrate.alert_migration_time",
							"alerts(): a migration running longer than this is slow.",
							NULL, &cm_alert_migration_time, 3600, 1, INT_MAX,
							PGC_USERSET, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("clinic_migrate.alert_lag_seconds",
							"alerts(): a tenant whose oldest change not replayed is older than this lags.",
							NULL, &cm_alert_lag_seconds, 60, 1, INT_MAX,
							PGC_USERSET, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("clinic_migrate.alert_lag_changes",
							"alerts(): a tenant with more changes than this not replayed lags.",
							NULL, &cm_alert_lag_changes, 100000, 1, INT_MAX,
							PGC_USERSET, 0, NULL, NULL, NULL);
	cm_launcher_init();
	MarkGUCPrefixReserved("clinic_migrate");

	cm_worker_init();
}

/* The settings a migration starts with; the worker runs with these. */
void
cm_current_settings(CmSettings *s)
{
	memset(s, 0, sizeof(*s));
	strlcpy(s->source_schema, cm_source_schema, sizeof(s->source_schema));
	strlcpy(s->tenant_column, cm_tenant_column, sizeof(s->tenant_column));
	strlcpy(s->schema_template, cm_schema_template, sizeof(s->schema_template));
	strlcpy(s->registry_table, cm_registry_table ? cm_registry_table : "",
			sizeof(s->registry_table));
	s->batch_size = cm_batch_size;
	s->batch_delay = cm_batch_delay;
	s->sync_interval = cm_sync_interval;
	s->cutover_max_lag = cm_cutover_max_lag;
	s->cutover_max_pause = cm_cutover_max_pause;
	s->cutover_attempts = cm_cutover_attempts;
	s->cutover_wait = cm_cutover_wait;
	s->archive_batch_size = cm_archive_batch_size;
	s->lock_timeout = cm_lock_timeout;
	s->lock_retry_time = cm_lock_retry_time;
	s->shared_foreign_keys = cm_shared_foreign_keys;
	strlcpy(s->archive_schema, cm_archive_schema ? cm_archive_schema : "", NAMEDATALEN);
	strlcpy(s->registry_schema_column, cm_registry_schema_column ? cm_registry_schema_column : "",
			NAMEDATALEN);
	strlcpy(s->registry_status_column, cm_registry_status_column ? cm_registry_status_column : "",
			NAMEDATALEN);
	strlcpy(s->pause_points, cm_pause_points ? cm_pause_points : "", sizeof(s->pause_points));
}

void
cm_apply_settings(const CmSettings *s)
{
	char		buf[32];

#define SET_STR(name, v) SetConfigOption("clinic_migrate." name, (v), PGC_SUSET, PGC_S_SESSION)
#define SET_INT(name, v) (snprintf(buf, sizeof(buf), "%d", (v)), SET_STR(name, buf))
	SET_STR("source_schema", s->source_schema);
	SET_STR("tenant_column", s->tenant_column);
	SET_STR("schema_template", s->schema_template);
	SET_STR("registry_table", s->registry_table);
	SET_INT("batch_size", s->batch_size);
	SET_INT("batch_delay", s->batch_delay);
	SET_INT("sync_interval", s->sync_interval);
	SET_INT("cutover_max_lag", s->cutover_max_lag);
	SET_INT("cutover_max_pause", s->cutover_max_pause);
	SET_INT("cutover_attempts", s->cutover_attempts);
	SET_INT("cutover_wait", s->cutover_wait);
	SET_INT("archive_batch_size", s->archive_batch_size);
	SET_INT("lock_timeout", s->lock_timeout);
	SET_INT("lock_retry_time", s->lock_retry_time);
	SET_STR("shared_foreign_keys", s->shared_foreign_keys ? "on" : "off");
	SET_STR("archive_schema", s->archive_schema);
	SET_STR("registry_schema_column", s->registry_schema_column);
	SET_STR("registry_status_column", s->registry_status_column);
	SET_STR("pause_points", s->pause_points);
#undef SET_INT
#undef SET_STR
}

void
cm_pause_point(const char *name)
{
	char	   *list;
	List	   *names;
	ListCell   *lc;
	bool		listed = false;

	if (cm_pause_points == NULL || cm_pause_points[0] == '\0')
		return;
	list = pstrdup(cm_pause_points);
	if (!SplitIdentifierString(list, ',', &names))
		return;
	foreach(lc, names)
		if (strcmp((char *) lfirst(lc), name) == 0)
			listed = true;
	if (listed)
	{
		CmWorkerShared *sh = cm_worker_shared;
		char		activity[128];

		snprintf(activity, sizeof(activity), "clinic_migrate: at pause point %s", name);
		pgstat_report_activity(STATE_RUNNING, activity);
		/* the waiting session follows us onto the lock */
		if (sh)
		{
			PGPROC	   *caller;

			SpinLockAcquire(&sh->mutex);
			strlcpy(sh->pause_point, name, sizeof(sh->pause_point));
			SpinLockRelease(&sh->mutex);
			caller = BackendPidGetProc(sh->caller_pid);
			if (caller)
				SetLatch(&caller->procLatch);
		}
		cm_pause_point_follow(name);
		if (sh)
		{
			SpinLockAcquire(&sh->mutex);
			sh->pause_point[0] = '\0';
			SpinLockRelease(&sh->mutex);
		}
	}
}

void
cm_pause_point_follow(const char *name)
{
	/* the key pg_advisory_lock(hashtext('clinic_migrate:<name>')) uses */
	char	   *keytext = psprintf("clinic_migrate:%s", name);
	int64		key = DatumGetInt32(DirectFunctionCall1Coll(hashtext, C_COLLATION_OID,
														   CStringGetTextDatum(keytext)));
	LOCKTAG		tag;

	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, (uint32) (key >> 32), (uint32) key, 1);
	(void) LockAcquire(&tag, ShareLock, false, false);
	LockRelease(&tag, ShareLock, false);
}

/*
 * Fetch and check a tenant id argument.  Everything that is not a usable id
 * fails here, before anything is touched.
 */
char *
cm_tenant_arg(FunctionCallInfo fcinfo, int argno)
{
	char	   *tenant;

	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("tenant id must not be null"),
				 errhint("Pass the value of the tenant column, for example '%s'.", "t1")));
	tenant = text_to_cstring(PG_GETARG_TEXT_PP(argno));
	if (tenant[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("tenant id must not be empty"),
				 errhint("Pass the value of the tenant column, for example '%s'.", "t1")));
	if (strlen(tenant) > CM_MAX_TENANT_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("tenant id is too long"),
				 errdetail("The id has %zu bytes; at most %d are accepted.",
						   strlen(tenant), CM_MAX_TENANT_LEN),
				 errhint("Check that the right value was passed as the tenant id.")));
	return tenant;
}

/*
 * The schema name of a tenant: the template with the id in place of %s.
 * An id that is not already a plain lower-case identifier is folded to
 * [a-z0-9_] and given a hash suffix of the original bytes, so that distinct
 * ids never share a name however they fold; the result always fits in
 * NAMEDATALEN - 1 bytes.
 */
char *
cm_schema_name_for(const char *tenant, const char *template)
{
	const char *pct = strstr(template, "%s");
	int			prefix_len = pct - template;
	const char *suffix = pct + 2;
	int			fixed = prefix_len + strlen(suffix);
	int			room = NAMEDATALEN - 1 - fixed;
	StringInfoData id;
	StringInfoData name;
	bool		plain = true;
	const char *p;

	initStringInfo(&id);
	for (p = tenant; *p; p++)
	{
		unsigned char c = (unsigned char) *p;

		if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')
			appendStringInfoChar(&id, c);
		else
		{
			plain = false;
			appendStringInfoChar(&id, (c >= 'A' && c <= 'Z') ? c + ('a' - 'A') : '_');
		}
	}
	if (id.len > room)
		plain = false;
	if (!plain)
	{
		uint64		h = hash_bytes_extended((const unsigned char *) tenant,
										   strlen(tenant), 0);
		int			keep = Min(id.len, room - 9);

		id.data[keep] = '\0';
		id.len = keep;
		appendStringInfo(&id, "_%08x", (uint32) (h ^ (h >> 32)));
	}
	initStringInfo(&name);
	appendBinaryStringInfo(&name, template, prefix_len);
	appendStringInfoString(&name, id.data);
	appendStringInfoString(&name, suffix);
	Assert(name.len < NAMEDATALEN);
	return name.data;
}

/* 64 bits of the tenant id, for the lock tag */
void
cm_tenant_lock_key(const char *tenant, uint32 *hi, uint32 *lo)
{
	uint64		h = hash_bytes_extended((const unsigned char *) tenant,
									   strlen(tenant), 0x636c696e);

	*hi = (uint32) (h >> 32);
	*lo = (uint32) h;
}

static void
tenant_locktag_kind(LOCKTAG *tag, const char *tenant, int kind)
{
	uint32		hi,
				lo;

	cm_tenant_lock_key(tenant, &hi, &lo);
	SET_LOCKTAG_ADVISORY(*tag, MyDatabaseId, hi, lo, kind);
}

static void
tenant_locktag(LOCKTAG *tag, const char *tenant)
{
	tenant_locktag_kind(tag, tenant, CM_LOCK_FIELD4);
}

bool
cm_lock_tenant_kind(const char *tenant, int kind, bool wait, bool session)
{
	LOCKTAG		tag;

	tenant_locktag_kind(&tag, tenant, kind);
	return LockAcquire(&tag, ExclusiveLock, session, !wait) != LOCKACQUIRE_NOT_AVAIL;
}

void
cm_unlock_tenant_kind(const char *tenant, int kind, bool session)
{
	LOCKTAG		tag;

	tenant_locktag_kind(&tag, tenant, kind);
	LockRelease(&tag, ExclusiveLock, session);
}

bool
cm_tenant_lock_kind_free(const char *tenant, int kind)
{
	LOCKTAG		tag;
	LockAcquireResult r;

	tenant_locktag_kind(&tag, tenant, kind);
	r = LockAcquire(&tag, ExclusiveLock, false, true);
	if (r == LOCKACQUIRE_NOT_AVAIL)
		return false;
	LockRelease(&tag, ExclusiveLock, false);
	return r == LOCKACQUIRE_OK;
}

bool
cm_tenant_write_lock(Oid schema_oid, bool exclusive)
{
	LOCKTAG		tag;

	SET_LOCKTAG_RELATION(tag, MyDatabaseId, schema_oid);
	return LockAcquire(&tag, exclusive ? ExclusiveLock : RowExclusiveLock, false, false) !=
		LOCKACQUIRE_ALREADY_HELD;
}

/* the database-wide sync lock: advisory (db, 0, 0, CM_LOCK_SYNC) */
bool
cm_lock_sync_worker(bool session)
{
	LOCKTAG		tag;

	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, 0, 0, CM_LOCK_SYNC);
	return LockAcquire(&tag, ExclusiveLock, session, true) != LOCKACQUIRE_NOT_AVAIL;
}

bool
cm_sync_worker_running(void)
{
	LOCKTAG		tag;
	LockAcquireResult r;

	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, 0, 0, CM_LOCK_SYNC);
	r = LockAcquire(&tag, ExclusiveLock, false, true);
	if (r == LOCKACQUIRE_NOT_AVAIL)
		return true;
	LockRelease(&tag, ExclusiveLock, false);
	/* held by this very session (the sync worker asking itself) */
	return r != LOCKACQUIRE_OK;
}

/* Take the tenant's migration lock for the session; false if busy. */
bool
cm_lock_tenant(const char *tenant, bool wait, bool session)
{
	LOCKTAG		tag;

	tenant_locktag(&tag, tenant);
	return LockAcquire(&tag, ExclusiveLock, session, !wait) != LOCKACQUIRE_NOT_AVAIL;
}

void
cm_unlock_tenant(const char *tenant, bool session)
{
	LOCKTAG		tag;

	tenant_locktag(&tag, tenant);
	LockRelease(&tag, ExclusiveLock, session);
}

/* Is no session holding the tenant's lock?  Probes without waiting. */
bool
cm_tenant_lock_free(const char *tenant)
{
	LOCKTAG		tag;
	LockAcquireResult r;

	tenant_locktag(&tag, tenant);
	r = LockAcquire(&tag, ExclusiveLock, true, true);
	if (r == LOCKACQUIRE_NOT_AVAIL)
		return false;
	LockRelease(&tag, ExclusiveLock, true);
	return r == LOCKACQUIRE_OK;
}

/*
 * Text output of dates, times, floats, bytea and money depends on session
 * settings; checksums and checkpoints must not.  Pin them for the current
 * (sub)transaction; cm_restore_output_settings puts them back.
 */
int
cm_stable_output_settings(void)
{
	int			nest = NewGUCNestLevel();
	static const char *const settings[][2] = {
		{"DateStyle", "ISO, YMD"},
		{"IntervalStyle", "postgres"},
		{"TimeZone", "UTC"},
		{"extra_float_digits", "3"},
		{"bytea_output", "hex"},
		{"lc_monetary", "C"},
	};

	for (int i = 0; i < lengthof(settings); i++)
		(void) set_config_option(settings[i][0], settings[i][1],
								 superuser() ? PGC_SUSET : PGC_USERSET,
								 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	return nest;
}

int
cm_replay_plan_settings(void)
{
	int			nest = NewGUCNestLevel();

	/*
	 * The key tables have no statistics, and a hash or merge join over all
	 * of a tenant's rows looks cheap to the planner for a few hundred keys:
	 * it is O(tenant) every round, and JIT-compiled too.
	 */
	(void) set_config_option("enable_hashjoin", "off", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	(void) set_config_option("enable_mergejoin", "off", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	(void) set_config_option("jit", "off", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	return nest;
}

void
cm_restore_output_settings(int nestlevel)
{
	AtEOXact_GUC(true, nestlevel);
}

char *
cm_qualified_relname(Oid relid)
{
	char	   *rel = get_rel_name(relid);
	char	   *nsp;

	if (rel == NULL)
		elog(ERROR, "cache lookup failed for relation %u", relid);
	nsp = get_namespace_name(get_rel_namespace(relid));
	return quote_qualified_identifier(nsp, rel);
}

/* append prefix."a", prefix."b", ... (prefix may be NULL) */
void
cm_append_quoted_list(StringInfo buf, List *names, const char *prefix)
{
	ListCell   *lc;
	bool		first = true;

	foreach(lc, names)
	{
		if (!first)
			appendStringInfoString(buf, ", ");
		first = false;
		if (prefix)
			appendStringInfo(buf, "%s.", prefix);
		appendStringInfoString(buf, quote_identifier((char *) lfirst(lc)));
	}
}

/*
 * Run a statement that takes a strong lock on a table the application uses
 * (a trigger, a foreign key, a drop that reaches shared tables): in a
 * subtransaction with a short lock_timeout, retried with back-off.  A lock
 * request waiting behind a long transaction would queue every writer of
 * the table behind it; a short timeout keeps that wait brief.
 */
pg_attribute_unused()
static const char *
lock_mode_sql(LOCKMODE mode)
{
	switch (mode)
	{
		case AccessShareLock:
			return "ACCESS SHARE";
		case RowShareLock:
			return "ROW SHARE";
		case RowExclusiveLock:
			return "ROW EXCLUSIVE";
		case ShareUpdateExclusiveLock:
			return "SHARE UPDATE EXCLUSIVE";
		case ShareLock:
			return "SHARE";
		case ShareRowExclusiveLock:
			return "SHARE ROW EXCLUSIVE";
		case ExclusiveLock:
			return "EXCLUSIVE";
		default:
			return "ACCESS EXCLUSIVE";
	}
}

/*
 * Autovacuum workers holding a lock on one of the relations that conflicts
 * with mode.  One that is not preventing wraparound is cancelled, as the
 * lock manager itself would do after deadlock_timeout (SIGINT; it gives its
 * locks up at once), and the server log says so; one that is preventing
 * wraparound must not be: true is returned, and the caller waits outside
 * the lock queue.
 */
static bool
clear_autovacuum(List *relids, LOCKMODE mode)
{
	ListCell   *lc;
	bool		wraparound = false;

	foreach(lc, relids)
	{
		LOCKTAG		tag;
		VirtualTransactionId *vxids;

		SET_LOCKTAG_RELATION(tag, MyDatabaseId, lfirst_oid(lc));
		vxids = GetLockConflicts(&tag, mode, NULL);
		for (; VirtualTransactionIdIsValid(*vxids); vxids++)
		{
			PGPROC	   *proc = BackendIdGetProc(vxids->backendId);
			uint8		flags;
			int			pid;

			if (proc == NULL)
				continue;
			LWLockAcquire(ProcArrayLock, LW_SHARED);
			flags = ProcGlobal->statusFlags[proc->pgxactoff];
			pid = proc->pid;
			LWLockRelease(ProcArrayLock);
			if (!(flags & PROC_IS_AUTOVACUUM) || pid == 0)
				continue;
			if (flags & PROC_VACUUM_FOR_WRAPAROUND)
			{
				wraparound = true;
				continue;
			}
			ereport(LOG,
					(errmsg("clinic_migrate: canceling autovacuum (pid %d) to lock %s", pid,
							cm_qualified_relname(lfirst_oid(lc))),
					 errdetail("A step of a migration needs the table; autovacuum will come back to it.")));
			if (kill(pid, SIGINT) < 0)
				ereport(LOG,
						(errmsg("clinic_migrate: could not send a signal to process %d: %m", pid)));
		}
	}
	return wraparound;
}

/* the sessions holding locks on the relations, and what they are doing, for an error */
static char *
lock_holders(List *relids)
{
	StringInfoData buf;
	ListCell   *lc;
	int			n = 0;

	initStringInfo(&buf);
	foreach(lc, relids)
	{
		LOCKTAG		tag;
		VirtualTransactionId *vxids;

		SET_LOCKTAG_RELATION(tag, MyDatabaseId, lfirst_oid(lc));
		vxids = GetLockConflicts(&tag, AccessExclusiveLock, NULL);
		for (; VirtualTransactionIdIsValid(*vxids) && n < 10; vxids++)
		{
			PGPROC	   *proc = BackendIdGetProc(vxids->backendId);

			if (proc == NULL)
				continue;
			appendStringInfo(&buf, "%spid %d on %s (%.80s)", n ? "; " : "", proc->pid,
							 cm_qualified_relname(lfirst_oid(lc)),
							 pgstat_get_backend_current_activity(proc->pid, true));
			n++;
		}
	}
	return n ? buf.data : NULL;
}

ErrorData *
cm_try_in_subxact(void (*fn) (void *arg), void *arg)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	ErrorData  *volatile failed = NULL;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		fn(arg);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		failed = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
	}
	PG_END_TRY();
	return failed;
}

/* one attempt of run_with_lock_retry, in its subtransaction */
typedef struct LockAttempt
{
	const char *sql;
	List	   *relids;
	LOCKMODE	mode;
	int			timeout_ms;
	int			waiting;		/* index in relids of the lock being waited for */
} LockAttempt;

static void
lock_attempt(void *arg)
{
	LockAttempt *a = arg;
	int			nest = NewGUCNestLevel();
	char		timeout[32];

	snprintf(timeout, sizeof(timeout), "%d", a->timeout_ms);
	(void) set_config_option("lock_timeout", timeout, PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	if (a->sql == NULL)
	{
		ListCell   *lc;

		/*
		 * From C, not LOCK TABLE: that would ask the caller for UPDATE or
		 * DELETE rights it need not have (the step checked what it needs,
		 * such as TRIGGER).
		 */
		TimestampTz start = GetCurrentTimestamp();

		/*
		 * One budget for the attempt, not one per table: a writer queued
		 * behind the first table waits for the whole attempt, which must
		 * stay within timeout_ms.
		 */
		foreach(lc, a->relids)
		{
			long		left;

			a->waiting = foreach_current_index(lc);
			if (ConditionalLockRelationOid(lfirst_oid(lc), a->mode))
				continue;
			left = a->timeout_ms - TimestampDifferenceMilliseconds(start, GetCurrentTimestamp());
			if (left <= 0)
				ereport(ERROR,
						(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
						 errmsg("could not obtain lock on relation \"%s\"",
								get_rel_name(lfirst_oid(lc)))));
			snprintf(timeout, sizeof(timeout), "%ld", left);
			(void) set_config_option("lock_timeout", timeout, PGC_USERSET, PGC_S_SESSION,
									 GUC_ACTION_SAVE, true, 0, false);
			LockRelationOid(lfirst_oid(lc), a->mode);
		}
	}
	else if (SPI_execute(a->sql, false, 0) < 0)
		elog(ERROR, "clinic_migrate: SPI error in \"%s\"", a->sql);
	AtEOXact_GUC(true, nest);
}

/*
 * The retry loop behind cm_ddl_with_retry and cm_lock_relations: the
 * statement runs in a subtransaction with lock_timeout at
 * clinic_migrate.lock_timeout; a lock timeout rolls the subtransaction
 * back (every lock it took goes with it), backs off with jitter and tries
 * again, for clinic_migrate.lock_retry_time in all, then fails with 55P03
 * naming who holds the tables.  With the relations known, a blocking
 * autovacuum is cancelled first (or, preventing wraparound, waited for
 * outside the lock queue).
 *
 * Relations are locked in list order, so an attempt waits for one while it
 * holds the ones before it.  A writer holding the awaited table may want
 * one of those next (a foreign key check locks the parent after the child;
 * an application takes its tables in its own order): neither can go on
 * until our lock_timeout gives up.  The table an attempt gave up on is
 * locked first in the next one, so the order learns the writers' order and
 * the same cycle does not come back.
 */
static void
run_with_lock_retry(const char *sql, List *relids, LOCKMODE mode, int timeout_ms)
{
	int			delay_ms = 10;
	TimestampTz give_up = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													   (int64) cm_lock_retry_time * 1000);
	LockAttempt attempt = {sql, list_copy(relids), mode, timeout_ms, 0};

	for (;;)
	{
		if (relids != NIL && clear_autovacuum(relids, mode))
		{
			/* an anti-wraparound vacuum: never queue behind it, wait it out */
			pgstat_report_activity(STATE_RUNNING,
								   "clinic_migrate: waiting for an autovacuum preventing wraparound");
		}
		else
		{
			ErrorData  *failed = cm_try_in_subxact(lock_attempt, &attempt);

			if (failed == NULL)
				return;
			if (failed->sqlerrcode != ERRCODE_LOCK_NOT_AVAILABLE)
				ReThrowError(failed);
			FreeErrorData(failed);
			if (attempt.waiting > 0)
			{
				Oid			first = list_nth_oid(attempt.relids, attempt.waiting);

				attempt.relids = list_delete_nth_cell(attempt.relids, attempt.waiting);
				attempt.relids = lcons_oid(first, attempt.relids);
			}
		}
		if (GetCurrentTimestamp() >= give_up)
		{
			char	   *holders = relids != NIL ? lock_holders(relids) : NULL;

			ereport(ERROR,
					(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
					 errmsg("could not lock the tables this step needs within clinic_migrate.lock_retry_time (%d s)",
							cm_lock_retry_time),
					 holders ? errdetail("Held by: %s.", holders) :
					 errdetail("Each attempt waited at most %d ms; nothing was changed.", timeout_ms),
					 errhint("A long transaction holds a lock on a table this step needs; "
							 "try again when it has finished (pg_locks shows it), or raise clinic_migrate.lock_retry_time.")));
		}
		pgstat_report_activity(STATE_RUNNING,
							   "clinic_migrate: waiting for a lock (retrying with back-off)");
		/* back off, with jitter: writers that collided with us need not collide again */
		pg_usleep((delay_ms + (long) pg_prng_uint64_range(&pg_global_prng_state, 0, delay_ms)) * 1000L);
		CHECK_FOR_INTERRUPTS();
		delay_ms = Min(delay_ms * 2, 1000);
	}
}

void
cm_ddl_with_retry(const char *sql)
{
	run_with_lock_retry(sql, NIL, NoLock, cm_lock_timeout);
}

void
cm_lock_relations(List *relids, LOCKMODE mode, bool tenant_tables)
{
	if (relids == NIL)
		return;
	run_with_lock_retry(NULL, relids, mode,
						tenant_tables ? cm_cutover_max_pause : cm_lock_timeout);
}

void
cm_append_eq(StringInfo buf, const char *left, Oid ltype, const char *right, Oid rtype)
{
	TypeCacheEntry *tc = lookup_type_cache(ltype, TYPECACHE_EQ_OPR);

	if (!OidIsValid(tc->eq_opr))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("type %s has no default equality operator", format_type_be(ltype)),
				 errhint("clinic_migrate compares keys with the type's default btree operator class.")));
	generate_operator_clause(buf, left, ltype, tc->eq_opr, right, rtype);
}

ParamListInfo
cm_param_list(int n, Oid *types, Datum *values)
{
	ParamListInfo params = makeParamList(n);

	for (int i = 0; i < n; i++)
	{
		params->params[i].value = values[i];
		params->params[i].isnull = false;
		params->params[i].pflags = PARAM_FLAG_CONST;
		params->params[i].ptype = types[i];
	}
	return params;
}
