/*-------------------------------------------------------------------------
 * settings.h
 *	  Floor 1 (base): the clinic_migrate.* settings and CmSettings, the
 *	  snapshot of them that a migration runs with.  Includes nothing of ours.
 *-------------------------------------------------------------------------
 */
#ifndef CM_SETTINGS_H
#define CM_SETTINGS_H

#include "postgres.h"

/* settings (clinic_migrate.*) */
extern char *cm_source_schema;
extern char *cm_tenant_column;
extern char *cm_schema_template;
extern char *cm_registry_table;
extern int	cm_batch_size;
extern int	cm_progress_interval;
extern int	cm_batch_delay;
extern int	cm_sync_interval;
extern int	cm_drain_max_changes;
extern int	cm_cutover_max_lag;
extern int	cm_cutover_max_pause;
extern bool cm_shared_foreign_keys;
extern bool cm_keep_partitions;
extern int	cm_capture_method;	/* 0 auto, 1 trigger, 2 wal (decode.h) */
extern int	cm_alert_slot_wal;	/* kB */
extern bool cm_follow_ddl_on;
extern int	cm_cutover_attempts;
extern int	cm_cutover_wait;
extern int	cm_archive_batch_size;
extern int	cm_lock_timeout;
extern int	cm_lock_retry_time;
extern char *cm_archive_schema;
extern char *cm_registry_schema_column;
extern char *cm_registry_status_column;
extern char *cm_pause_points;
extern int	cm_max_rows_per_second;
extern int	cm_max_replication_lag;
extern int	cm_alert_migration_time;
extern int	cm_alert_lag_seconds;
extern int	cm_alert_lag_changes;

/* the longest tenant id we accept (bytes); longer ids are rejected cleanly */
#define CM_MAX_TENANT_LEN 1024

/* settings a migration runs with, fixed when it starts */
typedef struct CmSettings
{
	char		source_schema[NAMEDATALEN];
	char		tenant_column[NAMEDATALEN];
	char		schema_template[NAMEDATALEN * 2];
	char		registry_table[NAMEDATALEN];
	int			batch_size;
	int			batch_delay;
	int			sync_interval;
	int			cutover_max_lag;
	int			cutover_max_pause;
	int			cutover_attempts;
	int			cutover_wait;
	int			archive_batch_size;
	char		archive_schema[NAMEDATALEN];
	char		registry_schema_column[NAMEDATALEN];
	char		registry_status_column[NAMEDATALEN];
	char		pause_points[256];
	int			lock_timeout;
	int			lock_retry_time;
	bool		shared_foreign_keys;
	bool		keep_partitions;
	int			capture_method;
} CmSettings;

extern void cm_current_settings(CmSettings *s);

/* make a worker's clinic_migrate.* settings those of the session that started it */
extern void cm_apply_settings(const CmSettings *s);

/* define the settings; called once, from _PG_init */
extern void cm_settings_init(void);

#endif
