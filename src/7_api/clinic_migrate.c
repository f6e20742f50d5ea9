/*-------------------------------------------------------------------------
 * clinic_migrate.c
 *	  Floor 7 (the top): the module's entry point.  _PG_init calls one init
 *	  per module that has one, bottom to top, and nothing else.
 *
 * The source tree is in floors, one folder each, bottom to top:
 *	  1_base	  settings, helpers, locks, the state of a run, the state tables
 *	  2_catalog	  the plan: which tables hold a tenant's rows, and how
 *	  3_tenant	  the tenant's schema: its faithful clone, its records
 *	  4_capture	  change capture (triggers, logs) and replay
 *	  5_actions	  copy, validate, cutover, rollback, finalize, sync: plain
 *				  functions that know nothing of workers or jobs
 *	  6_run		  where an action runs: a dynamic worker for a session's
 *				  call, the queue's jobs and their scheduler
 *	  7_api		  the SQL-callable functions, and this file
 * A file calls and includes only files below it (the Makefile's OBJS lists
 * them bottom to top; test/layering.sh checks it).  The capture triggers
 * and their WHEN functions stay in 4_capture: the executor calls them, not
 * the SQL surface.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/guc.h"

#include "settings.h"
#include "launcher.h"
#include "policies.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

void
_PG_init(void)
{
	cm_settings_init();
	cm_policies_init();
	cm_launcher_init();
	MarkGUCPrefixReserved("clinic_migrate");
}
