/*-------------------------------------------------------------------------
 * cutover.h
 *	  Switching where a tenant lives: cutover, rollback after cutover, and
 *	  finalize, which ends the rollback window.
 *	  Floor 5 (the actions).  May include: floors 1 to 4, sync, validate, rollback.
 *-------------------------------------------------------------------------
 */
#ifndef CM_CUTOVER_H
#define CM_CUTOVER_H

#include "runstate.h"


/* the actions, run in a worker (worker.c); *run_id is set once recorded */
extern void cm_cutover_tenant(CmWorkerShared *sh, int64 *run_id);
extern void cm_rollback_cutover(CmWorkerShared *sh, int64 *run_id);
extern void cm_finalize_tenant(CmWorkerShared *sh, int64 *run_id);

/*
 * Set a tenant's state and tell every backend (the capture triggers read
 * it); the registry columns, if configured, follow.  SPI connected.
 */
extern void cm_tenant_set_state(const char *tenant, const char *state);

#endif
