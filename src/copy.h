/*-------------------------------------------------------------------------
 * copy.h
 *	  The resumable, batched copy of one tenant's rows (runs in a worker).
 *-------------------------------------------------------------------------
 */
#ifndef CM_COPY_H
#define CM_COPY_H

#include "worker.h"

/* copy the tenant of sh; errors propagate; *run_id is set once recorded */
extern void cm_copy_tenant(CmWorkerShared *sh, int64 *run_id);
extern void cm_bound_from_spi(int nb, const Oid *types, Datum *values, char **out,
							  MemoryContext cxt);

#endif
