/*-------------------------------------------------------------------------
 * cutover.h
 *	  Switching where a tenant lives: cutover, rollback after cutover, and
 *	  finalize, which ends the rollback window.
 *-------------------------------------------------------------------------
 */
#ifndef CM_CUTOVER_H
#define CM_CUTOVER_H

#include "worker.h"

/* the actions, run in a worker (worker.c); *run_id is set once recorded */
extern void cm_cutover_tenant(CmWorkerShared *sh, int64 *run_id);
extern void cm_rollback_cutover(CmWorkerShared *sh, int64 *run_id);
extern void cm_finalize_tenant(CmWorkerShared *sh, int64 *run_id);

/*
 * Set a tenant's state and tell every backend (the capture triggers read
 * it); the registry columns, if configured, follow.  SPI connected.
 */
extern void cm_tenant_set_state(const char *tenant, const char *state);

/* keep the application's registry columns in step, if configured (never fails) */
extern void cm_registry_sync(const char *tenant, const char *state, const char *location);

#endif
