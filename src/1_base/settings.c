/*-------------------------------------------------------------------------
 * settings.c
 *	  Floor 1 (base): the clinic_migrate.* settings of a migration, and the
 *	  snapshot of them (CmSettings) that a worker runs with.  Calls nothing
 *	  of clinic_migrate's.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "utils/guc.h"

#include "settings.h"

char	   *cm_source_schema = NULL;
char	   *cm_tenant_column = NULL;
char	   *cm_schema_template = NULL;
char	   *cm_registry_table = NULL;
int			cm_batch_size = 50000;
int			cm_progress_interval = 10;
int			cm_batch_delay = 0;
int			cm_sync_interval = 1000;
int			cm_drain_max_changes = 100000;
int			cm_cutover_max_lag = 1000;
int			cm_cutover_max_pause = 200;
bool		cm_follow_ddl_on = true;
bool		cm_shared_foreign_keys = true;
bool		cm_keep_partitions = true;
int			cm_capture_method = 0;
int			cm_alert_slot_wal = 1024 * 1024;

static const struct config_enum_entry capture_method_options[] = {
	{"auto", 0, false},
	{"trigger", 1, false},
	{"wal", 2, false},
	{NULL, 0, false}
};
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

/* Define the settings (from _PG_init, before MarkGUCPrefixReserved). */
void
cm_settings_init(void)
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
	DefineCustomBoolVariable("clinic_migrate.keep_partitions",
							 "Whether a tenant's copy of a partitioned table is partitioned the same way, with the same partitions.",
							 "Off: the copy is one plain table holding all the tenant's rows. Read when the copy is made "
							 "(migrate_tenant passes it to its worker; a queued job takes the database's setting).",
							 &cm_keep_partitions, true, PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomEnumVariable("clinic_migrate.capture_method",
							 "How a moving tenant's changes are captured while it copies and syncs: auto, trigger or wal.",
							 "wal: logical decoding through clinic_migrate's replication slot, no trigger on the shared "
							 "tables' write path (needs wal_level = logical and a replica identity holding each table's key); "
							 "trigger: capture triggers; auto: wal when it can. Read when a move starts.",
							 &cm_capture_method, 0, capture_method_options,
							 PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("clinic_migrate.drain_max_changes",
							"Most changes the sync worker reads from the replication slot of capture from the WAL in one transaction (0: no limit).",
							"The worker reads the rest at once, in the next transaction; cutover, sync_now and a copy read all.",
							&cm_drain_max_changes, 100000, 0, INT_MAX,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("clinic_migrate.alert_slot_wal",
							"alerts(): the replication slot of capture from the WAL keeping more WAL than this.",
							NULL, &cm_alert_slot_wal, 1024 * 1024, 1, INT_MAX,
							PGC_USERSET, GUC_UNIT_KB, NULL, NULL, NULL);
	DefineCustomBoolVariable("clinic_migrate.follow_ddl",
							 "Whether ALTER TABLE, RENAME and CREATE INDEX of a shared table run again on the copies of the tenants moving.",
							 "Off in a session: its schema changes reach the shared tables only, and the copies must be changed by hand before cutover.",
							 &cm_follow_ddl_on, true, PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("clinic_migrate.lock_retry_time",
							"How long a step waits for the application's transactions (to lock its tables, or for those older than a tenant's capture) before it fails with 55P03.",
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
	s->keep_partitions = cm_keep_partitions;
	s->capture_method = cm_capture_method;
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
	SET_STR("keep_partitions", s->keep_partitions ? "on" : "off");
	SET_STR("capture_method", s->capture_method == 2 ? "wal" : s->capture_method == 1 ? "trigger" : "auto");
	SET_STR("archive_schema", s->archive_schema);
	SET_STR("registry_schema_column", s->registry_schema_column);
	SET_STR("registry_status_column", s->registry_status_column);
	SET_STR("pause_points", s->pause_points);
#undef SET_INT
#undef SET_STR
}

