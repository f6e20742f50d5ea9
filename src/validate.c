/* placeholder, replaced below */
#include "postgres.h"
#include "fmgr.h"
PG_FUNCTION_INFO_V1(cm_validate_migration);
Datum cm_validate_migration(PG_FUNCTION_ARGS) { elog(ERROR, "not yet"); }
PG_FUNCTION_INFO_V1(cm_validate_differences);
Datum cm_validate_differences(PG_FUNCTION_ARGS) { elog(ERROR, "not yet"); }
