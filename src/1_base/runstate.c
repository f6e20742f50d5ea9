/*-------------------------------------------------------------------------
 * runstate.c
 *	  Floor 1 (base): the state of the run this process does (see
 *	  runstate.h), the names of the actions, and the pause points of the
 *	  tests.  May call: settings, util.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_collation.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/lock.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "utils/builtins.h"
#include "utils/varlena.h"

#include "runstate.h"

volatile sig_atomic_t cm_got_sigterm = false;
CmWorkerShared *cm_worker_shared = NULL;

const char *
cm_action_name(CmAction action)
{
	switch (action)
	{
		case CMA_MIGRATE:
			return "migrate";
		case CMA_VALIDATE:
			return "validate";
		case CMA_CUTOVER:
			return "cutover";
		case CMA_ROLLBACK:
			return "rollback";
		case CMA_FINALIZE:
			return "finalize";
		case CMA_SCHEMA_CHANGE:
			return "schema_change";
		case CMA_INDEX:
			return "index";
	}
	return "?";
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
