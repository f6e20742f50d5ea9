/*-------------------------------------------------------------------------
 * rollback.h
 *	  Dropping a tenant's schema and state (rollback_tenant).
 *-------------------------------------------------------------------------
 */
#ifndef CM_ROLLBACK_H
#define CM_ROLLBACK_H

#include "postgres.h"

/*
 * Drop the tenant's schema (if it is still the one clinic_migrate made)
 * and its state, forget its captured changes; the caller holds the
 * tenant's migration lock.  SPI connected.  False if nothing was there.
 */
extern bool cm_rollback_drop(const char *tenant);

#endif
