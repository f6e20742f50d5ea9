/*-------------------------------------------------------------------------
 * copy.h
 *	  The resumable, batched copy of one tenant's rows (runs in a worker).
 *	  Floor 5 (the actions).  May include: floors 1 to 4.
 *-------------------------------------------------------------------------
 */
#ifndef CM_COPY_H
#define CM_COPY_H

#include "runstate.h"


/* copy the tenant of sh; errors propagate; *run_id is set once recorded */
extern void cm_copy_tenant(CmWorkerShared *sh, int64 *run_id);

#endif
