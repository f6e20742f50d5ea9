/*-------------------------------------------------------------------------
 * rollback.h
 *	  Dropping a tenant's schema and state (rollback_tenant).
 *	  Floor 5 (the actions).  May include: floors 1 to 4.
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

/*
 * rollback_tenant of a tenant that is not cut over, here and now, under a
 * transaction-level migration lock; true if there was something to roll
 * back.  SPI connected.
 */
extern bool cm_rollback_in_session(const char *tenant);

#endif
