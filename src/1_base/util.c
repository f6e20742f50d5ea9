/*-------------------------------------------------------------------------
 * util.c
 *	  Floor 1 (base): the helpers every floor shares: tenant arguments,
 *	  schema names, identifier quoting and qualified operators, stable
 *	  output and planner settings, subtransactions.  May call: settings.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_class.h"
#include "catalog/pg_inherits.h"
#include "catalog/pg_collation.h"
#include "common/hashfn.h"
#include "utils/resowner.h"
#include "utils/memutils.h"
#include "pgstat.h"
#include "executor/spi.h"
#include "access/xact.h"
#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "nodes/params.h"
#include "miscadmin.h"
#include "storage/lock.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/varlena.h"
#include "utils/typcache.h"
#include <signal.h>
#include "storage/lwlock.h"
#include "storage/sinvaladt.h"
#include "utils/backend_status.h"
#include "utils/timestamp.h"
#include "storage/lmgr.h"
#include "common/pg_prng.h"

#include "settings.h"
#include "util.h"


/*
 * Fetch and check a tenant id argument.  Everything that is not a usable id
 * fails here, before anything is touched.
 */
char *
cm_tenant_arg(FunctionCallInfo fcinfo, int argno)
{
	char	   *tenant;

	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("tenant id must not be null"),
				 errhint("Pass the value of the tenant column, for example '%s'.", "t1")));
	tenant = text_to_cstring(PG_GETARG_TEXT_PP(argno));
	if (tenant[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("tenant id must not be empty"),
				 errhint("Pass the value of the tenant column, for example '%s'.", "t1")));
	if (strlen(tenant) > CM_MAX_TENANT_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("tenant id is too long"),
				 errdetail("The id has %zu bytes; at most %d are accepted.",
						   strlen(tenant), CM_MAX_TENANT_LEN),
				 errhint("Check that the right value was passed as the tenant id.")));
	return tenant;
}

/*
 * The schema name of a tenant: the template with the id in place of %s.
 * An id that is not already a plain lower-case identifier is folded to
 * [a-z0-9_] and given a hash suffix of the original bytes, so that distinct
 * ids never share a name however they fold; the result always fits in
 * NAMEDATALEN - 1 bytes.
 */
char *
cm_schema_name_for(const char *tenant, const char *template)
{
	const char *pct = strstr(template, "%s");
	int			prefix_len = pct - template;
	const char *suffix = pct + 2;
	int			fixed = prefix_len + strlen(suffix);
	int			room = NAMEDATALEN - 1 - fixed;
	StringInfoData id;
	StringInfoData name;
	bool		plain = true;
	const char *p;

	initStringInfo(&id);
	for (p = tenant; *p; p++)
	{
		unsigned char c = (unsigned char) *p;

		if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')
			appendStringInfoChar(&id, c);
		else
		{
			plain = false;
			appendStringInfoChar(&id, (c >= 'A' && c <= 'Z') ? c + ('a' - 'A') : '_');
		}
	}
	if (id.len > room)
		plain = false;
	if (!plain)
	{
		uint64		h = hash_bytes_extended((const unsigned char *) tenant,
										   strlen(tenant), 0);
		int			keep = Min(id.len, room - 9);

		id.data[keep] = '\0';
		id.len = keep;
		appendStringInfo(&id, "_%08x", (uint32) (h ^ (h >> 32)));
	}
	initStringInfo(&name);
	appendBinaryStringInfo(&name, template, prefix_len);
	appendStringInfoString(&name, id.data);
	appendStringInfoString(&name, suffix);
	Assert(name.len < NAMEDATALEN);
	return name.data;
}

/*
 * Text output of dates, times, floats, bytea and money depends on session
 * settings; checksums and checkpoints must not.  Pin them for the current
 * (sub)transaction; cm_restore_output_settings puts them back.
 */
int
cm_stable_output_settings(void)
{
	int			nest = NewGUCNestLevel();
	static const char *const settings[][2] = {
		{"DateStyle", "ISO, YMD"},
		{"IntervalStyle", "postgres"},
		{"TimeZone", "UTC"},
		{"extra_float_digits", "3"},
		{"bytea_output", "hex"},
		{"lc_monetary", "C"},
	};

	for (int i = 0; i < lengthof(settings); i++)
		(void) set_config_option(settings[i][0], settings[i][1],
								 superuser() ? PGC_SUSET : PGC_USERSET,
								 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	return nest;
}

int
cm_replay_plan_settings(void)
{
	int			nest = NewGUCNestLevel();

	/*
	 * The key tables have no statistics, and a hash or merge join over all
	 * of a tenant's rows looks cheap to the planner for a few hundred keys:
	 * it is O(tenant) every round, and JIT-compiled too.
	 */
	(void) set_config_option("enable_hashjoin", "off", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	(void) set_config_option("enable_mergejoin", "off", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	(void) set_config_option("jit", "off", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	return nest;
}

int
cm_set_replica(void)
{
	int			nest = NewGUCNestLevel();

	(void) set_config_option("session_replication_role", "replica", PGC_SUSET,
							 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	return nest;
}

void
cm_restore_output_settings(int nestlevel)
{
	AtEOXact_GUC(true, nestlevel);
}

char *
cm_qualified_relname(Oid relid)
{
	char	   *rel = get_rel_name(relid);
	char	   *nsp;

	if (rel == NULL)
		elog(ERROR, "cache lookup failed for relation %u", relid);
	nsp = get_namespace_name(get_rel_namespace(relid));
	return quote_qualified_identifier(nsp, rel);
}

const char *
cm_only(Oid relid)
{
	return get_rel_relkind(relid) == RELKIND_PARTITIONED_TABLE ? "" : "ONLY ";
}

void
cm_hide_internal_sql(ErrorData *edata)
{
	edata->internalquery = NULL;
	edata->internalpos = 0;
	if (edata->context)
	{
		StringInfoData kept;
		char	   *line = edata->context;

		initStringInfo(&kept);
		while (line && *line)
		{
			char	   *end = strchr(line, '\n');
			int			len = end ? (int) (end - line) : (int) strlen(line);

			if (strncmp(line, "SQL statement \"", 15) != 0)
				appendStringInfo(&kept, "%s%.*s", kept.len ? "\n" : "", len, line);
			line = end ? end + 1 : NULL;
		}
		edata->context = kept.len ? kept.data : NULL;
	}
}

void
cm_rethrow_without_internal_sql(MemoryContext cxt)
{
	ErrorData  *edata;

	MemoryContextSwitchTo(cxt);
	edata = CopyErrorData();
	FlushErrorState();
	cm_hide_internal_sql(edata);
	ReThrowError(edata);
}

List *
cm_partitions_of(Oid relid)
{
	if (get_rel_relkind(relid) != RELKIND_PARTITIONED_TABLE)
		return NIL;
	return list_delete_first(find_all_inheritors(relid, NoLock, NULL));
}

/* append prefix."a", prefix."b", ... (prefix may be NULL) */
void
cm_append_quoted_list(StringInfo buf, List *names, const char *prefix)
{
	ListCell   *lc;
	bool		first = true;

	foreach(lc, names)
	{
		if (!first)
			appendStringInfoString(buf, ", ");
		first = false;
		if (prefix)
			appendStringInfo(buf, "%s.", prefix);
		appendStringInfoString(buf, quote_identifier((char *) lfirst(lc)));
	}
}

void
cm_append_eq(StringInfo buf, const char *left, Oid ltype, const char *right, Oid rtype)
{
	TypeCacheEntry *tc = lookup_type_cache(ltype, TYPECACHE_EQ_OPR);

	if (!OidIsValid(tc->eq_opr))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("type %s has no default equality operator", format_type_be(ltype)),
				 errhint("clinic_migrate compares keys with the type's default btree operator class.")));
	generate_operator_clause(buf, left, ltype, tc->eq_opr, right, rtype);
}

ParamListInfo
cm_param_list(int n, Oid *types, Datum *values)
{
	ParamListInfo params = makeParamList(n);

	for (int i = 0; i < n; i++)
	{
		params->params[i].value = values[i];
		params->params[i].isnull = false;
		params->params[i].pflags = PARAM_FLAG_CONST;
		params->params[i].ptype = types[i];
	}
	return params;
}

ErrorData *
cm_try_in_subxact(void (*fn) (void *arg), void *arg)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	ErrorData  *volatile failed = NULL;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		fn(arg);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		failed = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
	}
	PG_END_TRY();
	return failed;
}

/*
 * The first row of SPI_tuptable is a batch's upper bound (nb key columns of
 * the given types): its values into values[], as text into out[] (allocated
 * in cxt), for the checkpoint.
 */
void
cm_bound_from_spi(int nb, const Oid *types, Datum *values, char **out, MemoryContext cxt)
{
	for (int i = 0; i < nb; i++)
	{
		bool		isnull;
		Oid			typout;
		bool		varlena;

		values[i] = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, i + 1, &isnull);
		getTypeOutputInfo(types[i], &typout, &varlena);
		out[i] = MemoryContextStrdup(cxt, OidOutputFunctionCall(typout, values[i]));
	}
}
