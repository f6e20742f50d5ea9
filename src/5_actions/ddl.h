/*-------------------------------------------------------------------------
 * ddl.h
 *	  The application's schema changes follow the tenants that are moving:
 *	  clinic_migrate.follow_ddl(), an event trigger (see ddl.c).
 *	  Floor 5 (actions).
 *-------------------------------------------------------------------------
 */
#ifndef CM_DDL_H
#define CM_DDL_H

#include "fmgr.h"

extern Datum cm_follow_ddl(PG_FUNCTION_ARGS);

#endif
