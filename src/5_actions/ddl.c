/*-------------------------------------------------------------------------
 * ddl.c
 *	  The application's schema changes follow the tenants that are moving.
 *	  Floor 5 (actions).  May call: floors 1 to 4.
 *
 * clinic_migrate.follow_ddl() is an event trigger at ddl_command_end (from
 * 0.5).  When a statement changed a shared table of which some tenant has a
 * copy in its schema (any state from schema_created to finalizing), the same
 * statement runs again on each copy, in the same transaction, as the same
 * role: the copies keep the shared table's shape, so capture, replay,
 * validation and cutover go on with the new one.  What it carries:
 *
 *   ALTER TABLE: ADD and DROP COLUMN, ALTER COLUMN TYPE, SET and DROP
 *	   DEFAULT, SET and DROP NOT NULL, SET STATISTICS, ADD, VALIDATE and DROP
 *	   CONSTRAINT (a foreign key to a table the tenant has a copy of points
 *	   at the copy; to another, at that table, schema-qualified);
 *   ALTER TABLE ... RENAME COLUMN, RENAME CONSTRAINT;
 *   CREATE INDEX (not CONCURRENTLY: a WARNING says the copies lack it).
 *
 * An ADD COLUMN whose default is volatile gave the copy's rows their own
 * values: a tenant not cut over gets the shared rows' values (joined on the
 * primary key), so that validation compares equal rows.
 *
 * Refused (the whole statement, before it commits), while a tenant has a
 * copy: a change of the tenant column or of a column the capture logs
 * (the key) - the logged keys would stop matching -; RENAME of the table
 * (the copies are found by name).  Anything else ALTER TABLE does (storage
 * parameters, triggers, row level security, ownership) is the shared
 * table's own and is not carried.
 *
 * A copy owned by another role than the one running the statement may
 * refuse it: PostgreSQL's error then names the copy, and nothing commits.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_constraint.h"
#include "utils/relcache.h"
#include "access/sysattr.h"

#include "access/xact.h"
#include "parser/parser.h"
#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/dependency.h"
#include "catalog/index.h"
#include "catalog/namespace.h"
#include "catalog/partition.h"
#include "catalog/pg_attrdef.h"
#include "catalog/pg_class.h"
#include "catalog/pg_index.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_inherits.h"
#include "catalog/pg_type.h"
#include "commands/event_trigger.h"
#include "commands/extension.h"
#include "catalog/pg_trigger.h"
#include "commands/tablecmds.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "nodes/makefuncs.h"
#include "nodes/parsenodes.h"
#include "optimizer/optimizer.h"
#include "storage/lmgr.h"
#include "storage/proc.h"
#include "tcop/utility.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

#include "capture.h"
#include "decode.h"
#include "clone.h"
#include "locks.h"
#include "policies.h"
#include "ddl.h"
#include "settings.h"
#include "state.h"
#include "util.h"

/* a tenant's copy of the shared table a statement changed */
typedef struct TenantCopy
{
	char	   *tenant;
	char	   *state;
	char	   *tenant_column;
	Oid			target;
} TenantCopy;

/* set while a statement runs again on a copy: its own event is not ours */
static bool following = false;

/*
 * Set in a migration's worker: every statement it runs makes the tenant's
 * copy or clinic_migrate's own objects, none is the application's to follow
 * (following them took 11 ms of a small tenant's 105).
 */
static bool own_statements_only = false;

void
ddl_ignore_this_process(void)
{
	own_statements_only = true;
}

static void adopt_table(Oid relid);
static void follow_new_partition(Oid part, bool attached);
static void refuse_detach(Oid relid, Oid part);
static void refuse_in_transition(TenantCopy *c, const char *what);
static void drop_tenant_views(const char *nsp, const char *name);
static void queue_concurrent_index(Oid relid, List *copies);
static void refuse_change_of_copy(Oid relid, const char *what);

/*
 * A restore (pg_restore, or a script of pg_dump, which empties search_path)
 * brings each copy back with its own definition: carried again, the shared
 * table's indexes and constraints would be there twice.
 */
static bool
restoring(void)
{
	const char *app = GetConfigOption("application_name", true, false);

	return (app && strcmp(app, "pg_restore") == 0) ||
		(namespace_search_path && namespace_search_path[0] == '\0');
}

/* the copies of relid, every state but finalized (SPI connected) */
static List *copies_recorded(Oid relid);

static List *
copies_of(Oid relid)
{
	Oid			nsp = get_namespace_oid(CM_SCHEMA, true);

	/* only a plain table outside our schema can have copies */
	if (!OidIsValid(nsp) || !OidIsValid(get_relname_relid("tenant_tables", nsp)) ||
		!OidIsValid(relid) ||
		(get_rel_relkind(relid) != RELKIND_RELATION && get_rel_relkind(relid) != RELKIND_PARTITIONED_TABLE) ||
		get_rel_namespace(relid) == nsp)
		return NIL;
	return copies_recorded(relid);
}

/* the copies of relid as recorded, even when relid was just dropped */
static List *
copies_recorded(Oid relid)
{
	Oid			type = OIDOID;
	Datum		value = ObjectIdGetDatum(relid);
	List	   *copies = NIL;

	cm_state_exec("SELECT t.tenant_id, t.state, t.tenant_column, tt.target_table "
				  "FROM clinic_migrate.tenants t JOIN clinic_migrate.tenant_tables tt "
				  "ON tt.tenant_id OPERATOR(pg_catalog.=) t.tenant_id "
				  "WHERE tt.source_table OPERATOR(pg_catalog.=) $1 "
				  "AND t.state OPERATOR(pg_catalog.<>) 'finalized' ORDER BY t.tenant_id",
				  1, &type, &value, NULL, 0);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		TenantCopy *c;
		Oid			target = DatumGetObjectId(SPI_getbinval(tup, desc, 4, &isnull));

		if (!SearchSysCacheExists1(RELOID, ObjectIdGetDatum(target)))
			continue;
		c = palloc0(sizeof(TenantCopy));
		c->tenant = SPI_getvalue(tup, desc, 1);
		c->state = SPI_getvalue(tup, desc, 2);
		c->tenant_column = SPI_getvalue(tup, desc, 3);
		c->target = target;
		copies = lappend(copies, c);
	}
	return copies;
}

/* the statement's tag, while the event trigger runs */
static const char *follow_tag = NULL;

/*
 * The relation the statement changed, as PostgreSQL collected it (its OID,
 * not its name looked up again: a search_path changed by a function the
 * statement called, or a temporary table that now shadows the name, would
 * find another).  For CREATE INDEX, the index.  InvalidOid if none.
 */
static Oid
collected_relid(void)
{
	Oid			relid = InvalidOid;

	if (follow_tag == NULL ||
		SPI_execute("SELECT c.objid, c.command_tag FROM pg_catalog.pg_event_trigger_ddl_commands() c "
					"WHERE c.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass",
					true, 0) != SPI_OK_SELECT)
		return InvalidOid;
	for (uint64 i = 0; i < SPI_processed && !OidIsValid(relid); i++)
	{
		bool		isnull;
		char	   *tag = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2);

		if (tag && strcmp(tag, follow_tag) == 0)
			relid = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
	}
	return relid;
}

/* the relation the statement changed: as collected, else by its name now */
static Oid
changed_relid(RangeVar *rv)
{
	Oid			relid = collected_relid();

	if (!OidIsValid(relid) && rv)
		relid = RangeVarGetRelid(rv, NoLock, true);
	return relid;
}

/* does the capture log of relid hold column name (a key column)? */
static bool
logged_column(Oid relid, const char *name)
{
	Oid			log = capture_log_relid(relid);

	return OidIsValid(log) && name != NULL && name[0] != '_' &&
		get_attnum(log, name) != InvalidAttrNumber;
}

/* what: the change, naming the table (errmsg "cannot <what> while ...") */
static void
refuse(TenantCopy *c, const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_IN_USE),
			 errmsg("cannot %s while tenant \"%s\" has a copy of it", what, c->tenant),
			 errdetail("The tenant's state is %s; its copy is kept in step by the table's key and tenant column.",
					   c->state),
			 errhint("Finish the tenant's move (finalize_tenant) or roll it back (rollback_tenant) first, then run the statement again.")));
}

/*
 * ALTER TABLE ... REPLICA IDENTITY of a table whose copies are kept in step
 * from the WAL (0.8): a DELETE's old row holds only the replica identity's
 * columns, which must hold the key the capture logs.  Refused at the
 * command's end (the change is undone with it) while such a tenant is
 * copying or copied.
 */
static void
check_replica_identity(Oid relid, List *copies)
{
	ListCell   *lc;

	foreach(lc, copies)
	{
		TenantCopy *c = lfirst(lc);
		Oid			t = TEXTOID;
		Datum		v = CStringGetTextDatum(c->tenant);
		Relation	rel;
		Bitmapset  *ident;
		bool		full;
		TupleDesc	desc;

		cm_state_exec("SELECT 1 FROM clinic_migrate.tenants WHERE tenant_id OPERATOR(pg_catalog.=) $1 "
					  "AND capture_method OPERATOR(pg_catalog.=) 'wal' "
					  "AND state IN ('copying', 'copied', 'failed')", 1, &t, &v, NULL, 1);
		if (SPI_processed == 0)
			continue;
		rel = table_open(relid, AccessShareLock);
		ident = RelationGetIndexAttrBitmap(rel, INDEX_ATTR_BITMAP_IDENTITY_KEY);
		full = rel->rd_rel->relreplident == REPLICA_IDENTITY_FULL;
		desc = RelationGetDescr(rel);
		for (int a = 0; !full && a < desc->natts; a++)
		{
			Form_pg_attribute att = TupleDescAttr(desc, a);

			/* (logged_column would skip a key column named _x: only _cm_ columns are the log's own) */
			if (att->attisdropped || strncmp(NameStr(att->attname), "_cm_", 4) == 0 ||
				!OidIsValid(capture_log_relid(relid)) ||
				get_attnum(capture_log_relid(relid), NameStr(att->attname)) == InvalidAttrNumber ||
				bms_is_member(att->attnum - FirstLowInvalidHeapAttributeNumber, ident))
				continue;
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_IN_USE),
					 errmsg("cannot change the replica identity of %s while tenant \"%s\" is captured from the WAL",
							cm_qualified_relname(relid), c->tenant),
					 errdetail("The WAL's old row of a DELETE would not hold key column %s, which the capture needs.",
							   quote_identifier(NameStr(att->attname))),
					 errhint("Keep a replica identity that holds the key (the primary key, USING INDEX of a unique index on it, or FULL), "
							 "or finish or roll back the tenant's move first.")));
		}
		table_close(rel, AccessShareLock);
		return;
	}
}

/* a key or tenant column changes: refused while a copy exists */
static void
check_column(Oid relid, List *copies, const char *column, const char *what)
{
	ListCell   *lc;

	foreach(lc, copies)
	{
		TenantCopy *c = lfirst(lc);

		if (column && (strcmp(column, c->tenant_column) == 0 || logged_column(relid, column)))
			refuse(c, psprintf("%s column \"%s\" of %s", what, column, cm_qualified_relname(relid)));
	}
}

/*
 * A foreign key's referenced table, for the copy of tenant c: its own copy
 * when it has one, else the table itself, schema-qualified.
 */
static void
retarget_reference(Constraint *con, TenantCopy *c)
{
	Oid			pk;
	List	   *copies;
	ListCell   *lc;

	if (con == NULL || con->contype != CONSTR_FOREIGN || con->pktable == NULL)
		return;
	pk = RangeVarGetRelid(con->pktable, NoLock, true);
	if (!OidIsValid(pk))
		return;
	copies = copies_of(pk);
	foreach(lc, copies)
	{
		TenantCopy *other = lfirst(lc);

		if (strcmp(other->tenant, c->tenant) == 0)
		{
			pk = other->target;
			break;
		}
	}
	con->pktable = makeRangeVar(get_namespace_name(get_rel_namespace(pk)), get_rel_name(pk), -1);
}

static RangeVar *
copy_rangevar(TenantCopy *c)
{
	return makeRangeVar(get_namespace_name(get_rel_namespace(c->target)), get_rel_name(c->target), -1);
}

typedef struct FollowContext
{
	TenantCopy *copy;
} FollowContext;

static void
follow_error_context(void *arg)
{
	FollowContext *fc = arg;

	errcontext("clinic_migrate: the same change on tenant \"%s\"'s copy %s",
			   fc->copy->tenant, cm_qualified_relname(fc->copy->target));
}

/*
 * Run stmt (a copy made for this tenant) as a part of the statement: as the
 * copy's owner, inside a security-restricted operation, when that is not
 * the role running the statement (a superuser's deploy must not evaluate a
 * CHECK or index expression that the copy's owner put there with the
 * superuser's rights); refused when that role is not a member of the
 * owner, as PostgreSQL would refuse it on the copy.
 */
static void
run_on_copy(Node *stmt, const char *query, TenantCopy *c)
{
	PlannedStmt *ps = makeNode(PlannedStmt);
	ErrorContextCallback errcb;
	FollowContext fc = {c};
	Oid			owner = cm_rel_owner(c->target);
	Oid			save_user;
	int			save_sec;

	if (owner != GetUserId() && !has_privs_of_role(GetUserId(), owner))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to change tenant \"%s\"'s copy %s", c->tenant,
						cm_qualified_relname(c->target)),
				 errdetail("The change of the shared table runs again on each copy, which role \"%s\" owns.",
						   GetUserNameFromId(owner, false)),
				 errhint("Run the change as a member of role \"%s\".", GetUserNameFromId(owner, false))));
	ps->commandType = CMD_UTILITY;
	ps->canSetTag = false;
	ps->utilityStmt = stmt;
	ps->stmt_location = -1;
	ps->stmt_len = 0;

	/*
	 * The copy's lock, taken first, with a longer deadlock_timeout than
	 * everyone else's: the deploy holds the shared table already, and a
	 * session that holds the copy (a capture trigger that looked a row up
	 * there, a step of the move) and waits for the shared table is then the
	 * one PostgreSQL's deadlock check stops (it runs in the session that
	 * has waited deadlock_timeout first): an application's transaction is
	 * retried, a step of the move resumes; the application's deploy goes
	 * through.
	 */
	{
		LOCKMODE	mode = NoLock;

		if (IsA(stmt, AlterTableStmt))
			mode = AlterTableGetLockLevel(((AlterTableStmt *) stmt)->cmds);
		else if (IsA(stmt, DropStmt))
			mode = AccessExclusiveLock;
		if (mode != NoLock && OidIsValid(c->target))
		{
			int			nest = NewGUCNestLevel();

			ListCell   *pl;

			(void) set_config_option("deadlock_timeout", psprintf("%d", Min(DeadlockTimeout, INT_MAX / 5) * 5),
									 PGC_SUSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
			LockRelationOid(c->target, mode);
			/* an ALTER of a partitioned copy reaches its partitions: theirs too */
			foreach(pl, cm_partitions_of(c->target))
				LockRelationOid(lfirst_oid(pl), mode);
			AtEOXact_GUC(true, nest);
		}
	}
	GetUserIdAndSecContext(&save_user, &save_sec);
	following = true;
	EventTriggerInhibitCommandCollection();
	PG_TRY();
	{
		/* pushed inside the PG_TRY: PG_END_TRY restores the stack from before */
		errcb.callback = follow_error_context;
		errcb.arg = &fc;
		errcb.previous = error_context_stack;
		error_context_stack = &errcb;
		if (owner != save_user)
			SetUserIdAndSecContext(owner, save_sec | SECURITY_RESTRICTED_OPERATION);
		ProcessUtility(ps, query, true, PROCESS_UTILITY_SUBCOMMAND, NULL, NULL, None_Receiver, NULL);
		SetUserIdAndSecContext(save_user, save_sec);
		error_context_stack = errcb.previous;
	}
	PG_FINALLY();
	{
		following = false;
		SetUserIdAndSecContext(save_user, save_sec);
		EventTriggerUndoInhibitCommandCollection();
	}
	PG_END_TRY();
	CommandCounterIncrement();
}

/*
 * A column added with a volatile default: the copy of a tenant not cut
 * over takes the shared rows' values, joined on the primary key.
 */
static void
copy_volatile_default(Oid relid, const char *column, TenantCopy *c)
{
	AttrNumber	att = get_attnum(relid, column);
	Relation	rel;
	Oid			pkindex;
	List	   *keys = NIL;
	StringInfoData sql;
	CmRoleSave	save;
	bool		isnull;
	HeapTuple	tup;
	Node	   *expr = NULL;
	bool		volatile_default;

	if (att == InvalidAttrNumber || cm_state_after_cutover(c->state))
		return;
	tup = SearchSysCache2(ATTNUM, ObjectIdGetDatum(relid), Int16GetDatum(att));
	if (!HeapTupleIsValid(tup))
		return;
	ReleaseSysCache(tup);
	{
		Relation	attrdef = table_open(AttrDefaultRelationId, AccessShareLock);
		Datum		adbin = (Datum) 0;
		ScanKeyData key[2];
		SysScanDesc scan;
		HeapTuple	dt;

		ScanKeyInit(&key[0], Anum_pg_attrdef_adrelid, BTEqualStrategyNumber, F_OIDEQ,
					ObjectIdGetDatum(relid));
		ScanKeyInit(&key[1], Anum_pg_attrdef_adnum, BTEqualStrategyNumber, F_INT2EQ,
					Int16GetDatum(att));
		scan = systable_beginscan(attrdef, AttrDefaultIndexId, true, NULL, 2, key);
		isnull = true;
		if (HeapTupleIsValid(dt = systable_getnext(scan)))
			adbin = heap_getattr(dt, Anum_pg_attrdef_adbin, RelationGetDescr(attrdef), &isnull);
		expr = isnull ? NULL : stringToNode(TextDatumGetCString(adbin));
		systable_endscan(scan);
		table_close(attrdef, AccessShareLock);
	}
	volatile_default = expr != NULL && contain_volatile_functions(expr);
	if (!volatile_default)
		return;

	rel = table_open(relid, NoLock);
	pkindex = RelationGetPrimaryKeyIndex(rel);
	table_close(rel, NoLock);
	if (!OidIsValid(pkindex))
	{
		ereport(WARNING,
				(errmsg("the rows of tenant \"%s\"'s copy got their own values of column \"%s\"", c->tenant, column),
				 errdetail("Its default is volatile, and %s has no primary key to take the shared rows' values by.",
						   cm_qualified_relname(relid)),
				 errhint("Set the column's values in the copy as in the shared rows before cutover; validate_migration shows the differences.")));
		return;
	}
	{
		HeapTuple	it = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(pkindex));
		Form_pg_index ind = (Form_pg_index) GETSTRUCT(it);

		for (int k = 0; k < ind->indnkeyatts; k++)
			keys = lappend(keys, get_attname(relid, ind->indkey.values[k], false));
		ReleaseSysCache(it);
	}
	initStringInfo(&sql);
	appendStringInfo(&sql, "UPDATE %s t SET %s = s.%s FROM %s s WHERE (",
					 cm_qualified_relname(c->target), quote_identifier(column), quote_identifier(column),
					 cm_qualified_relname(relid));
	cm_append_quoted_list(&sql, keys, "t");
	appendStringInfoString(&sql, ") OPERATOR(pg_catalog.=) (");
	cm_append_quoted_list(&sql, keys, "s");
	appendStringInfoChar(&sql, ')');
	/* as a replica: the application's triggers saw these rows already */
	{
		int			nest = cm_set_replica();

		cm_table_owner_begin(c->target, &save);
		if (SPI_execute(sql.data, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "clinic_migrate: could not copy the new column's values");
		cm_role_end(&save);
		cm_restore_output_settings(nest);
	}
}

static void
follow_alter_table(AlterTableStmt *stmt, const char *query)
{
	Oid			relid;
	List	   *copies;
	ListCell   *lc;
	List	   *carried = NIL;
	List	   *added = NIL;

	if (stmt->relation == NULL)
		return;
	relid = changed_relid(stmt->relation);
	foreach(lc, stmt->cmds)
	{
		AlterTableCmd *cmd = lfirst(lc);

		if (cmd->subtype == AT_AttachPartition || cmd->subtype == AT_DetachPartition)
		{
			PartitionCmd *pc = (PartitionCmd *) cmd->def;
			Oid			part = RangeVarGetRelid(pc->name, NoLock, true);

			if (cmd->subtype == AT_AttachPartition)
				follow_new_partition(part, true);
			else
				refuse_detach(relid, part);	/* refused at the start already, unless follow_ddl changed */
		}
	}
	copies = copies_of(relid);
	if (copies == NIL)
	{
		foreach(lc, stmt->cmds)
		{
			AlterTableType t = ((AlterTableCmd *) lfirst(lc))->subtype;

			if (t == AT_AddColumn || t == AT_DropColumn || t == AT_AlterColumnType)
				refuse_change_of_copy(relid, "change the columns of");
		}
		/* a table the plan takes once it has a key: its copies now */
		foreach(lc, stmt->cmds)
		{
			AlterTableType t = ((AlterTableCmd *) lfirst(lc))->subtype;

			if (t == AT_AddConstraint || t == AT_AddIndex || t == AT_AddIndexConstraint ||
				t == AT_SetNotNull)
			{
				adopt_table(relid);
				break;
			}
		}
		return;
	}

	foreach(lc, stmt->cmds)
	{
		AlterTableCmd *cmd = lfirst(lc);

		switch (cmd->subtype)
		{
			case AT_AddColumn:
				carried = lappend(carried, cmd);
				added = lappend(added, ((ColumnDef *) cmd->def)->colname);
				break;
			case AT_DropColumn:
				check_column(relid, copies, cmd->name, "drop");
				carried = lappend(carried, cmd);
				break;
			case AT_AlterColumnType:
				check_column(relid, copies, cmd->name, "change the type of");
				carried = lappend(carried, cmd);
				break;
			case AT_ReplicaIdentity:
				check_replica_identity(relid, copies);
				break;
			case AT_ColumnDefault:
			case AT_DropNotNull:
			case AT_SetNotNull:
			case AT_SetStatistics:
			case AT_AddConstraint:
			case AT_ValidateConstraint:
			case AT_DropConstraint:
				carried = lappend(carried, cmd);
				break;
			default:
				/* the shared table's own (storage, triggers, security, owner) */
				break;
		}
	}
	if (carried == NIL)
		return;

	/*
	 * Recursing into inheritance children: each child's copy would need the
	 * change too, which this does not carry.  ALTER TABLE ONLY the parent,
	 * then each child, is carried table by table.
	 */
	if (stmt->relation->inh && get_rel_relkind(relid) == RELKIND_RELATION && has_subclass(relid) &&
		find_inheritance_children(relid, NoLock) != NIL)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot change %s and its inheritance children while tenant \"%s\" has a copy of it",
						cm_qualified_relname(relid), ((TenantCopy *) linitial(copies))->tenant),
				 errhint("Run ALTER TABLE ONLY %s, then the same for each child table: each is carried to the copies.",
						 cm_qualified_relname(relid))));

	foreach(lc, copies)
	{
		TenantCopy *c = lfirst(lc);
		AlterTableStmt *s = makeNode(AlterTableStmt);
		ListCell   *cl;

		s->relation = copy_rangevar(c);
		s->objtype = OBJECT_TABLE;
		s->missing_ok = false;
		foreach(cl, carried)
		{
			AlterTableCmd *cmd = copyObject((AlterTableCmd *) lfirst(cl));

			cmd->recurse = false;

			/*
			 * A copy changed by hand already: a column there, a column or
			 * constraint gone, is not an error (IF [NOT] EXISTS).
			 */
			if (cmd->subtype == AT_AddColumn || cmd->subtype == AT_DropColumn ||
				cmd->subtype == AT_DropConstraint)
				cmd->missing_ok = true;
			/* a key the copy does not have (see follow_rename) */
			if (cmd->subtype == AT_ValidateConstraint &&
				!OidIsValid(get_relation_constraint_oid(c->target, cmd->name, true)))
				continue;
			if (cmd->subtype == AT_AddConstraint)
				retarget_reference((Constraint *) cmd->def, c);
			else if (cmd->subtype == AT_AddColumn)
			{
				ListCell   *k;

				foreach(k, ((ColumnDef *) cmd->def)->constraints)
					retarget_reference((Constraint *) lfirst(k), c);
			}
			s->cmds = lappend(s->cmds, cmd);
		}
		if (s->cmds == NIL)
			continue;
		run_on_copy((Node *) s, query, c);
		foreach(cl, added)
			copy_volatile_default(relid, (char *) lfirst(cl), c);
	}
}

/* ---- a table the plan would take, created while tenants move ---- */

typedef struct AdoptArgs
{
	const char *tenant;
	const char *state;
	TenantPlan *plan;
	PlanTable  *pt;
	CmSettings *settings;
} AdoptArgs;

/*
 * The catalog lookups of plan and clone read with the active snapshot: it
 * must see what this statement, and each step before, made.
 */
static void
see_own_changes(void)
{
	CommandCounterIncrement();
	UpdateActiveSnapshotCommandId();
}

/* a plan of pt alone (for the steps that must touch no other table) */
static TenantPlan *
plan_of_one(TenantPlan *plan, PlanTable *pt)
{
	TenantPlan *one = palloc(sizeof(TenantPlan));

	*one = *plan;
	one->tables = pt;
	one->ntables = one->ncopied = 1;
	return one;
}

/* the tenant's rows of the new table into its copy: the rows a CREATE TABLE AS made */
static int64
adopt_rows(TenantPlan *plan, PlanTable *pt, const char *tenant, Oid target)
{
	bool		always;
	List	   *cols = plan_copy_columns(pt->relid, &always);
	Oid			type = plan_root(plan, pt)->tenant_type;
	Datum		value = plan_tenant_datum(plan_root(plan, pt), tenant);
	StringInfoData sql;
	int			nest;
	bool		save_applying = cm_applying;
	int64		n;
	CmRoleSave	save;
	MemoryContext cxt = CurrentMemoryContext;

	initStringInfo(&sql);
	appendStringInfo(&sql, "INSERT INTO %s (", cm_qualified_relname(target));
	cm_append_quoted_list(&sql, cols, NULL);
	appendStringInfo(&sql, ")%s SELECT ", always ? " OVERRIDING SYSTEM VALUE" : "");
	cm_append_quoted_list(&sql, cols, "s");
	plan_append_tenant_rows(&sql, plan, pt, 0, 0);
	/*
	 * As the table's owner, in a security-restricted operation, past any
	 * row security (the tenant's policies would hide rows without a current
	 * tenant), with a snapshot taken now: after the capture's lock.
	 */
	cm_table_owner_begin(pt->relid, &save);
	nest = cm_set_replica();
	cm_applying = true;
	PushActiveSnapshot(GetLatestSnapshot());
	UpdateActiveSnapshotCommandId();
	PG_TRY();
	{
		if (SPI_execute_with_args(sql.data, 1, &type, &value, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "clinic_migrate: copy of a new table failed");
		n = (int64) SPI_processed;
	}
	PG_CATCH();
	{
		/* the application's error (a CHECK the rows fail), without our statement */
		cm_applying = save_applying;
		cm_rethrow_without_internal_sql(cxt);
	}
	PG_END_TRY();
	cm_applying = save_applying;
	PopActiveSnapshot();
	cm_restore_output_settings(nest);
	cm_role_end(&save);
	return n;
}


/*
 * The tenant's copy of a new table, made as the role running the statement
 * (the new table's owner), which may create in the tenant's schema when the
 * clone handed it its copies.  When it may not (a schema made by a
 * migrating role that could not hand its copies over), nothing is made
 * here and NULL returned: the tenant's cutover makes the copy, as that
 * role.  No right on the schema is granted to anyone.
 */
static char *
clone_as_creator(const char *tenant, TenantPlan *one, CmSettings *s)
{
	TenantInfo	info;

	clone_tenant_info(tenant, &info);
	if (info.exists && OidIsValid(info.schema_oid) && get_namespace_name(info.schema_oid) != NULL &&
		pg_namespace_aclcheck(info.schema_oid, GetUserId(), ACL_CREATE) != ACLCHECK_OK)
	{
		ereport(WARNING,
				(errmsg("table %s has no copy in tenant \"%s\"'s schema yet: role \"%s\" may not create in \"%s\"",
						cm_qualified_relname(one->tables[0].relid), tenant,
						GetUserNameFromId(GetUserId(), false), info.schema_name),
				 errhint("The tenant's cutover makes it, as the role that runs it.")));
		return NULL;
	}
	return clone_prepare_schema(tenant, one, s, false);
}

/*
 * Give one tenant its copy of the new table pt, as the state of its move
 * needs it: cloned (with indexes, and its foreign keys unless a copy is
 * loading, whose keys to tables still without indexes cutover adds), the
 * tenant's rows copied, recorded as copied, captured; once cut over, the
 * reverse capture and the shared sequences too.  Runs with following set:
 * the statements it makes are not followed again.
 */
static void
adopt_for_tenant(void *arg)
{
	AdoptArgs  *a = arg;
	TenantPlan *one = plan_of_one(a->plan, a->pt);
	char	   *schema;
	Oid			target;
	int64		n = 0;
	bool		loading = strcmp(a->state, "copying") == 0 || strcmp(a->state, "failed") == 0;
	bool		started = strcmp(a->state, "schema_created") != 0;
	CmRoleSave	save;

	/* the table alone: no other table of the plan is made or recorded here */
	schema = clone_as_creator(a->tenant, one, a->settings);
	if (schema == NULL)
		return;
	see_own_changes();
	target = clone_target_relid(schema, a->pt->relname);
	if (!loading)
		clone_table_foreign_keys(a->plan, schema, a->pt);
	see_own_changes();
	if (started)
	{
		Oid			types[3] = {TEXTOID, OIDOID, INT8OID};
		Datum		values[3];

		/*
		 * Capture first, then the rows: under the capture's lock, with a
		 * snapshot taken after it, every row is either read here or
		 * written after and captured.
		 */
		cm_owner_begin(&save);
		capture_install(one, capture_full_triggers_needed());
		if (strcmp(a->state, "copied") == 0 || strcmp(a->state, "cut_over") == 0)
			capture_install_reverse(one, schema, a->tenant);
		cm_role_end(&save);
		LockRelationOid(a->pt->relid, ShareRowExclusiveLock);
		see_own_changes();
		n = adopt_rows(a->plan, a->pt, a->tenant, target);
		values[0] = CStringGetTextDatum(a->tenant);
		values[1] = ObjectIdGetDatum(a->pt->relid);
		values[2] = Int64GetDatum(n);
		cm_state_exec("UPDATE clinic_migrate.tenant_tables SET copied = true, indexed = true, "
					  "rows_total = $3, rows_copied = $3 "
					  "WHERE tenant_id = $1 AND source_table = $2", 3, types, values, NULL, 0);
	}
	see_own_changes();
	if (strcmp(a->state, "cut_over") == 0)
		clone_switch_sequences(one, schema);
	see_own_changes();
}

/* fn(arg), its own statements not followed again (the event triggers return at once) */
static void
run_following(void (*fn) (void *arg), void *arg)
{
	following = true;
	PG_TRY();
	{
		fn(arg);
	}
	PG_FINALLY();
	{
		following = false;
	}
	PG_END_TRY();
}

void
ddl_adopt_missing(const char *tenant, const char *state, Oid schema_oid)
{
	CmSettings	s;
	char	   *t = (char *) tenant;
	TenantPlan *plan;
	List	   *recorded = NIL;

	PushActiveSnapshot(GetTransactionSnapshot());
	UpdateActiveSnapshotCommandId();
	cm_current_settings(&s);
	plan = clone_catalog_plan_for_tenant(&t, &s, CurrentMemoryContext);

	recorded = clone_recorded_tables(tenant, CurrentMemoryContext);
	for (int i = 0; i < plan->ncopied; i++)
	{
		PlanTable  *pt = &plan->tables[i];
		AdoptArgs	a;

		if (list_member_oid(recorded, pt->relid))
			continue;
		if (pt->nkey == 0 || plan_root(plan, pt)->nkey == 0)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("tenant \"%s\" cannot cut over: table %s has no copy in its schema",
							tenant, cm_qualified_relname(pt->relid)),
					 errdetail("The table was created while the tenant moved, without a primary key: its rows cannot be captured or validated."),
					 errhint("Add a primary key to %s (the copies are made with it), or keep the table shared with SELECT clinic_migrate.exclude_table('%s').",
							 cm_qualified_relname(pt->relid), cm_qualified_relname(pt->relid))));
		a.tenant = tenant;
		a.state = state;
		a.plan = plan;
		a.pt = pt;
		a.settings = &s;
		(void) cm_tenant_write_lock(schema_oid, false);
		run_following(adopt_for_tenant, &a);
	}
	PopActiveSnapshot();
}

/*
 * A table created (or given a key) in the source schema of tenants that
 * are moving, which their plan takes: each of them gets its copy in the
 * same transaction, so that none can cut over, or roll back, without it.
 * A table without a key is left until it has one (ALTER TABLE ... ADD
 * PRIMARY KEY comes back here), with a WARNING.
 */
static void adopt_table_for_tenants(Oid relid);

static void
adopt_table(Oid relid)
{
	Oid			nsp = get_namespace_oid(CM_SCHEMA, true);

	if (!OidIsValid(nsp) || !OidIsValid(relid) ||
		(get_rel_relkind(relid) != RELKIND_RELATION && get_rel_relkind(relid) != RELKIND_PARTITIONED_TABLE) ||
		get_rel_persistence(relid) == RELPERSISTENCE_TEMP || get_rel_namespace(relid) == nsp)
		return;
	/* the statement's last part (a CREATE TABLE's primary key) is not visible yet */
	CommandCounterIncrement();
	if (get_rel_relispartition(relid))
	{
		follow_new_partition(relid, false);
		return;
	}

	CommandCounterIncrement();
	PushCopiedSnapshot(GetActiveSnapshot());
	UpdateActiveSnapshotCommandId();
	adopt_table_for_tenants(relid);
	PopActiveSnapshot();
}

static void
adopt_table_for_tenants(Oid relid)
{
	Oid			types[2] = {NAMEOID, OIDOID};
	Datum		values[2];
	SPITupleTable *tt;
	uint64		n;
	bool		warned = false;

	values[0] = DirectFunctionCall1(namein, CStringGetDatum(get_namespace_name(get_rel_namespace(relid))));
	values[1] = ObjectIdGetDatum(relid);
	cm_state_exec("SELECT t.tenant_id, t.state, t.schema_oid FROM clinic_migrate.tenants t "
				  "WHERE t.source_schema OPERATOR(pg_catalog.=) $1 "
				  "AND t.state OPERATOR(pg_catalog.<>) 'finalized' "
				  "AND NOT EXISTS (SELECT FROM clinic_migrate.tenant_tables tt "
				  "  WHERE tt.tenant_id OPERATOR(pg_catalog.=) t.tenant_id "
				  "  AND tt.source_table OPERATOR(pg_catalog.=) $2) "
				  "ORDER BY t.tenant_id", 2, types, values, NULL, 0);
	tt = SPI_tuptable;
	n = SPI_processed;
	if (n > 0)
	{
		/*
		 * An inheritance child (or parent): the shared scans of the tree would
		 * count its rows where a copy of its own would not.  Left shared.
		 */
		if (get_rel_relkind(relid) == RELKIND_RELATION && (has_superclass(relid) || has_subclass(relid)))
		{
			ereport(WARNING,
					(errmsg("table %s is part of an inheritance tree: the moving tenants get no copy of it",
							cm_qualified_relname(relid)),
					 errhint("Keep it shared with SELECT clinic_migrate.exclude_table('%s'), or make it a table of its own.",
							 cm_qualified_relname(relid))));
			return;
		}
	}
	for (uint64 i = 0; i < n; i++)
	{
		char	   *tenant = SPI_getvalue(tt->vals[i], tt->tupdesc, 1);
		char	   *state = SPI_getvalue(tt->vals[i], tt->tupdesc, 2);
		bool		isnull;
		Oid			schema_oid = DatumGetObjectId(SPI_getbinval(tt->vals[i], tt->tupdesc, 3, &isnull));
		CmSettings	s;
		AdoptArgs	a;
		char	   *t = tenant;

		cm_current_settings(&s);
		a.plan = clone_catalog_plan_for_tenant(&t, &s, CurrentMemoryContext);
		a.pt = plan_find(a.plan, relid);
		if (a.pt == NULL || a.pt->position == 0)
			continue;			/* the plan keeps it shared */
		if (strcmp(state, "finalizing") == 0 || strcmp(state, "rolling_back") == 0)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_IN_USE),
					 errmsg("cannot create table %s while tenant \"%s\" is %s",
							cm_qualified_relname(relid), tenant,
							strcmp(state, "finalizing") == 0 ? "being finalized" : "being rolled back"),
					 errdetail("The tenant's copy of a new table with tenant rows is made with the table; in this state it cannot be."),
					 errhint("Run the statement again when clinic_migrate.status shows the tenant finalized or rolled back.")));
		if (a.pt->nkey == 0 || plan_root(a.plan, a.pt)->nkey == 0)
		{
			if (!warned)
				ereport(WARNING,
					(errmsg("table %s has no copy in the schemas of %d moving tenants yet: it has no primary key",
							cm_qualified_relname(relid), (int) (n - i)),
					 errdetail("Its rows cannot be captured or validated without a key; the tenant cannot cut over until it has one."),
					 errhint("Add a primary key (or a unique key on NOT NULL columns): the copies are made then.")));
			warned = true;
			continue;
		}
		a.tenant = tenant;
		a.state = state;
		a.settings = &s;

		/* as a writer of the tenant: a cutover's pause waits for this transaction */
		(void) cm_tenant_write_lock(schema_oid, false);

		/*
		 * The state again, read after the lock: a cutover (or its rollback)
		 * that committed while this waited for it changed what the copy
		 * needs (the reverse capture, the shared sequence).
		 */
		{
			Oid			ttype = TEXTOID;
			Datum		tvalue = CStringGetTextDatum(tenant);

			cm_state_exec("SELECT t.state FROM clinic_migrate.tenants t WHERE t.tenant_id OPERATOR(pg_catalog.=) $1",
						  1, &ttype, &tvalue, NULL, 0);
			if (SPI_processed != 1)
				continue;
			a.state = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
			if (strcmp(a.state, "finalized") == 0 || strcmp(a.state, "rolled_back") == 0)
				continue;
			if (strcmp(a.state, "finalizing") == 0 || strcmp(a.state, "rolling_back") == 0)
				ereport(ERROR,
						(errcode(ERRCODE_OBJECT_IN_USE),
						 errmsg("cannot create table %s while tenant \"%s\" is %s",
								cm_qualified_relname(relid), tenant,
								strcmp(a.state, "finalizing") == 0 ? "being finalized" : "being rolled back"),
						 errhint("Run the statement again when clinic_migrate.status shows the tenant finalized or rolled back.")));
		}
		run_following(adopt_for_tenant, &a);
	}
}

/*
 * A column change run on a tenant's copy itself (the application's
 * migration reaching it through set_tenant's search_path) before the move
 * is finalized: the copy would stop matching the shared table that its
 * rows are replayed from, or back into.  Refused, pointing at the shared
 * table, whose changes reach every copy.
 */
static void
refuse_change_of_copy(Oid relid, const char *what)
{
	Oid			type = OIDOID;
	Datum		value = ObjectIdGetDatum(relid);
	Oid			nsp = get_namespace_oid(CM_SCHEMA, true);
	bool		isnull;

	if (!OidIsValid(nsp) || !OidIsValid(relid) || get_rel_namespace(relid) == nsp ||
		!OidIsValid(get_relname_relid("tenant_tables", nsp)))
		return;
	cm_state_exec("SELECT t.tenant_id, t.state, tt.source_table FROM clinic_migrate.tenant_tables tt "
				  "JOIN clinic_migrate.tenants t ON t.tenant_id OPERATOR(pg_catalog.=) tt.tenant_id "
				  "WHERE tt.target_table OPERATOR(pg_catalog.=) $1 "
				  "AND t.state OPERATOR(pg_catalog.<>) 'finalized' LIMIT 1",
				  1, &type, &value, NULL, 0);
	if (SPI_processed == 0)
		return;
	{
		char	   *tenant = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
		char	   *state = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
		Oid			source = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull));
		char	   *shared = get_rel_name(source) ? cm_qualified_relname(source) : "the shared table";

		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_IN_USE),
				 errmsg("cannot %s tenant \"%s\"'s table %s until its move is finalized",
						what, tenant, cm_qualified_relname(relid)),
				 errdetail("The tenant's state is %s; the table keeps the shape of %s, from which its rows are replayed, or back into which a rollback replays them.",
						   state, shared),
				 errhint("Run the change on %s: it reaches every tenant's copy. After finalize_tenant, clinic_migrate.fan_out runs a change in every tenant's schema.",
						 shared)));
	}
}

/* ---- partitions of a planned partitioned table ---- */

typedef struct PartitionArgs
{
	Oid			part;			/* the shared partition */
	Oid			parent_copy;	/* the tenant's copy of its parent */
	const char *schema;
} PartitionArgs;

static void
make_partition(void *arg)
{
	PartitionArgs *pa = arg;
	Oid			type = OIDOID;
	Datum		value = ObjectIdGetDatum(pa->part);
	char	   *bound;
	/* the bound rendered and read back in one fixed style: no zone abbreviation to misread */
	int			nest = cm_stable_output_settings();

	cm_state_exec("SELECT pg_catalog.pg_get_expr(c.relpartbound, c.oid) FROM pg_catalog.pg_class c "
				  "WHERE c.oid OPERATOR(pg_catalog.=) $1", 1, &type, &value, NULL, 0);
	if (SPI_processed != 1)
		elog(ERROR, "clinic_migrate: a partition of %s has no bound", cm_qualified_relname(pa->parent_copy));
	bound = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	clone_one_partition(pa->part, pa->schema, cm_qualified_relname(pa->parent_copy),
						quote_qualified_identifier(pa->schema, get_rel_name(pa->part)), bound);
	cm_restore_output_settings(nest);
}

/*
 * Does the shared partition part hold rows of tenant c (read as the
 * shared table's owner)?
 */
static bool
partition_has_rows_of(Oid root, Oid part, TenantCopy *c)
{
	CmSettings	s;
	char	   *t = c->tenant;
	TenantPlan *plan;
	PlanTable  *pt;
	StringInfoData sql;
	Oid			types[2];
	Datum		values[2];
	CmRoleSave	save;
	int			ret;

	cm_current_settings(&s);
	plan = clone_catalog_plan_for_tenant(&t, &s, CurrentMemoryContext);
	pt = plan_find(plan, root);
	if (pt == NULL || pt->position == 0)
		return false;
	initStringInfo(&sql);
	appendStringInfoString(&sql, "SELECT 1");
	plan_append_tenant_rows(&sql, plan, pt, 0, 0);
	appendStringInfoString(&sql, " AND s.tableoid OPERATOR(pg_catalog.=) ANY "
						   "(SELECT p.relid FROM pg_catalog.pg_partition_tree($2) p) LIMIT 1");
	types[0] = plan_root(plan, pt)->tenant_type;
	values[0] = plan_tenant_datum(plan_root(plan, pt), c->tenant);
	types[1] = REGCLASSOID;
	values[1] = ObjectIdGetDatum(part);
	cm_table_owner_begin(root, &save);
	ret = SPI_execute_with_args(sql.data, 2, types, values, NULL, true, 1);
	cm_role_end(&save);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "clinic_migrate: could not read partition %s", cm_qualified_relname(part));
	return SPI_processed > 0;
}

static void
cover_new_partition(void *arg)
{
	cm_rls_cover_new_partition(*(Oid *) arg);
}

/*
 * A partition made (CREATE TABLE ... PARTITION OF) or attached under a
 * planned partitioned table, or under one of its partitions, while tenants
 * have copies: each partitioned copy gets the same partition, as the
 * copy's owner, in the same transaction (rows routed to the shared
 * partition are captured, and replayed into the copy's).  A one-table
 * copy (keep_partitions off) takes rows of any partition as they are.
 * Rows an attached table brings come with no trigger: if a moving tenant
 * has some there, the ATTACH is refused.
 */
static void
follow_new_partition(Oid part, bool attached)
{
	List	   *up;
	Oid			parent;
	Oid			root;
	List	   *copies;
	ListCell   *lc;

	if (!OidIsValid(part) || !get_rel_relispartition(part))
		return;
	up = get_partition_ancestors(part);
	if (up == NIL)
		return;

	/*
	 * The tenant policy of enable_tenant_rls, when its partitioned table has
	 * it: a query may name the new partition itself (tenants that stay, moving
	 * or not).
	 */
	run_following(cover_new_partition, &part);
	parent = linitial_oid(up);
	root = llast_oid(up);
	copies = copies_of(root);
	foreach(lc, copies)
	{
		TenantCopy *c = lfirst(lc);
		Oid			nsp = get_rel_namespace(c->target);
		Oid			parent_copy;
		Oid			mine;
		Oid			owner = cm_rel_owner(c->target);
		PartitionArgs pa;
		CmRoleSave	save;

		if (attached && partition_has_rows_of(root, part, c))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_IN_USE),
					 errmsg("cannot attach %s while it holds rows of tenant \"%s\", which has a copy of %s",
							cm_qualified_relname(part), c->tenant, cm_qualified_relname(root)),
					 errdetail("The tenant's state is %s. Rows an ATTACH brings fire no trigger: they would not reach the tenant's copy.",
							   c->state),
					 errhint("Attach the table without those rows and insert them through %s, or attach it after the tenant's move is finalized or rolled back.",
							 cm_qualified_relname(root))));
		/* a one-table copy takes the rows of every partition as they come */
		if (get_rel_relkind(c->target) != RELKIND_PARTITIONED_TABLE)
			continue;
		parent_copy = parent == root ? c->target : get_relname_relid(get_rel_name(parent), nsp);
		mine = get_relname_relid(get_rel_name(part), nsp);
		/* there already (made by hand, or an ALTER of a partition the copy has) */
		if (OidIsValid(mine) && get_rel_relispartition(mine) &&
			get_partition_parent(mine, true) == parent_copy)
			continue;
		refuse_in_transition(c, psprintf("add partition %s", cm_qualified_relname(part)));
		if (!OidIsValid(parent_copy) || get_rel_relkind(parent_copy) != RELKIND_PARTITIONED_TABLE ||
			OidIsValid(mine))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("cannot add partition %s to tenant \"%s\"'s copy of %s",
							cm_qualified_relname(part), c->tenant, cm_qualified_relname(root)),
					 OidIsValid(mine) ?
					 errdetail("Schema %s has a table named %s that is not a partition of its %s.",
							   quote_identifier(get_namespace_name(nsp)), quote_identifier(get_rel_name(part)),
							   quote_identifier(get_rel_name(parent))) :
					 errdetail("Schema %s has no partitioned table %s.",
							   quote_identifier(get_namespace_name(nsp)), quote_identifier(get_rel_name(parent))),
					 errhint("Make the tenant's tables match the shared ones, or roll the tenant back (rollback_tenant) and migrate it again.")));
		if (owner != GetUserId() && !has_privs_of_role(GetUserId(), owner))
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("permission denied to add a partition to tenant \"%s\"'s copy %s", c->tenant,
							cm_qualified_relname(c->target)),
					 errdetail("A new partition of the shared table is made in each copy, which role \"%s\" owns.",
							   GetUserNameFromId(owner, false)),
					 errhint("Run the statement as a member of role \"%s\".", GetUserNameFromId(owner, false))));
		pa.part = part;
		pa.parent_copy = parent_copy;
		pa.schema = get_namespace_name(nsp);
		/* as the copy's owner, in a security-restricted operation; not followed again */
		cm_table_owner_begin(c->target, &save);
		run_following(make_partition, &pa);
		cm_role_end(&save);
		capture_fix_partitions(c->target);
	}
	/* the shared partition: our triggers ALWAYS, and the guard (nothing locked if it has them) */
	if (copies != NIL)
		capture_fix_partitions(root);
}

/* DETACH PARTITION of a planned partitioned table: refused while a tenant has a copy */
static void
refuse_detach(Oid relid, Oid part)
{
	List	   *up = OidIsValid(part) ? get_partition_ancestors(part) : NIL;
	Oid			root = up != NIL ? llast_oid(up) : relid;
	List	   *copies = copies_of(root);

	/* once detached, part is no partition: relid's ancestors lead to the root */
	if (copies == NIL && OidIsValid(relid) && get_rel_relispartition(relid))
	{
		up = get_partition_ancestors(relid);
		root = llast_oid(up);
		copies = copies_of(root);
	}
	if (copies == NIL)
		return;
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_IN_USE),
			 errmsg("cannot detach a partition of %s while tenant \"%s\" has a copy of it",
					cm_qualified_relname(root), ((TenantCopy *) linitial(copies))->tenant),
			 errdetail("The tenant's state is %s. Its rows in the partition would leave the shared table with no trigger fired: its copy would keep them.",
					   ((TenantCopy *) linitial(copies))->state),
			 errhint("Drop the partition instead (its rows go from the copies too), or detach it after the tenant's move is finalized or rolled back.")));
}

/* ---- DROP TABLE, DROP INDEX (sql_drop), COMMENT, GRANT and REVOKE ---- */

static void
refuse_in_transition(TenantCopy *c, const char *what)
{
	if (strcmp(c->state, "finalizing") == 0 || strcmp(c->state, "rolling_back") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_IN_USE),
				 errmsg("cannot %s while tenant \"%s\" is %s", what, c->tenant,
						strcmp(c->state, "finalizing") == 0 ? "being finalized" : "being rolled back"),
				 errhint("Run the statement again when clinic_migrate.status shows the tenant finalized or rolled back.")));
}

static DropStmt *
drop_of(ObjectType type, const char *schema, const char *name, DropBehavior behavior)
{
	DropStmt   *d = makeNode(DropStmt);

	d->removeType = type;
	d->objects = list_make1(list_make2(makeString(pstrdup(schema)), makeString(pstrdup(name))));
	d->behavior = behavior;
	d->missing_ok = true;
	d->concurrent = false;
	return d;
}

static void
drop_log(void *arg)
{
	Oid			log = *(Oid *) arg;

	cm_state_exec(psprintf("DROP TABLE %s", cm_qualified_relname(log)), 0, NULL, NULL, NULL, 0);
}

/* a planned table was dropped: its copies go, and their records and log */
static void
drop_table_copies(Oid source, const char *name, DropBehavior behavior, const char *query)
{
	List	   *copies = copies_recorded(source);
	ListCell   *lc;
	Oid			type = OIDOID;
	Datum		value = ObjectIdGetDatum(source);

	if (copies == NIL)
	{
		/*
		 * No copy left (the statement dropped them too: DROP OWNED, DROP
		 * SCHEMA ... CASCADE): the records of moving tenants still go.
		 */
		cm_state_exec("DELETE FROM clinic_migrate.tenant_tables tt USING clinic_migrate.tenants t "
					  "WHERE tt.source_table OPERATOR(pg_catalog.=) $1 "
					  "AND t.tenant_id OPERATOR(pg_catalog.=) tt.tenant_id "
					  "AND t.state OPERATOR(pg_catalog.<>) 'finalized' RETURNING tt.tenant_id",
					  1, &type, &value, NULL, 0);
		if (SPI_processed == 0)
			return;
	}
	foreach(lc, copies)
	{
		TenantCopy *c = lfirst(lc);
		Oid			types[2] = {TEXTOID, OIDOID};
		Datum		values[2];

		refuse_in_transition(c, psprintf("drop table %s", name));
		run_on_copy((Node *) drop_of(OBJECT_TABLE, get_namespace_name(get_rel_namespace(c->target)),
									 get_rel_name(c->target), behavior), query, c);
		values[0] = CStringGetTextDatum(c->tenant);
		values[1] = ObjectIdGetDatum(source);
		cm_state_exec("DELETE FROM clinic_migrate.tenant_tables WHERE tenant_id = $1 AND source_table = $2",
					  2, types, values, NULL, 0);
	}
	/* its capture log: nothing will read it again */
	cm_state_exec("DELETE FROM clinic_migrate.capture_logs WHERE source_table = $1 RETURNING log_table::pg_catalog.oid",
				  1, &type, &value, NULL, 0);
	if (SPI_processed > 0)
	{
		bool		isnull;
		Oid			log = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));

		if (!isnull && get_rel_name(log) != NULL)
		{
			ErrorData  *failed;

			following = true;
			failed = cm_try_in_subxact(drop_log, &log);
			following = false;
			if (failed)
			{
				ereport(WARNING,
						(errmsg("the capture log %s of the dropped table is left: %s",
								cm_qualified_relname(log), failed->message),
						 errhint("Drop it when what depends on it is gone.")));
				FreeErrorData(failed);
			}
		}
	}
}

/*
 * The partitions of planned partitioned tables that a DROP TABLE names,
 * found at its start (clinic_migrate_guard_ddl): at sql_drop, a dropped
 * partition's parent is no longer in the catalogs.  Valid for the
 * statement of the transaction that found them.
 */
typedef struct DroppingPartition
{
	Oid			part;
	Oid			root;
	char	   *name;
} DroppingPartition;

static List *dropping_partitions = NIL;
static LocalTransactionId dropping_lxid = InvalidLocalTransactionId;

static DroppingPartition *
dropping_partition(Oid part)
{
	ListCell   *lc;

	if (dropping_lxid != MyProc->lxid)
		return NULL;
	foreach(lc, dropping_partitions)
	{
		DroppingPartition *d = lfirst(lc);

		if (d->part == part)
			return d;
	}
	return NULL;
}

/*
 * A partition of a planned partitioned table was dropped (a retention job
 * dropping old months): each partitioned copy's partition of that name
 * goes too, with the tenant's rows in it, as the shared rows went.
 */
static void
drop_partition_copies(DroppingPartition *d, DropBehavior behavior, const char *query)
{
	List	   *copies = copies_of(d->root);
	ListCell   *lc;

	foreach(lc, copies)
	{
		TenantCopy *c = lfirst(lc);
		TenantCopy	pc = *c;
		Oid			nsp = get_rel_namespace(c->target);
		Oid			mine = get_relname_relid(d->name, nsp);
		List	   *up;

		if (!OidIsValid(mine) || !get_rel_relispartition(mine))
			continue;
		up = get_partition_ancestors(mine);
		if (up == NIL || llast_oid(up) != c->target)
			continue;
		refuse_in_transition(c, psprintf("drop partition %s", quote_identifier(d->name)));
		pc.target = mine;
		run_on_copy((Node *) drop_of(OBJECT_TABLE, get_namespace_name(nsp), d->name, behavior), query, &pc);
	}
}

/* an index of a planned table was dropped: the copies' index of that name go */
static void
drop_index_copies(const char *schema, const char *name, DropBehavior behavior, const char *query)
{
	Oid			types[2] = {NAMEOID, NAMEOID};
	Datum		values[2];
	SPITupleTable *tt;
	uint64		n;

	values[0] = DirectFunctionCall1(namein, CStringGetDatum(schema));
	values[1] = DirectFunctionCall1(namein, CStringGetDatum(name));
	/* an index still to build on the copies is not wanted any more */
	if (OidIsValid(get_relname_relid("pending_indexes", get_namespace_oid(CM_SCHEMA, false))))
		cm_state_exec("DELETE FROM clinic_migrate.pending_indexes p USING clinic_migrate.tenants t "
					  "WHERE t.tenant_id = p.tenant_id AND t.source_schema = $1 AND p.index_name = $2 "
					  "AND p.built_at IS NULL", 2, types, values, NULL, 0);
	cm_state_exec("SELECT t.tenant_id, t.state, t.tenant_column, tt.target_table, n.nspname "
				  "FROM clinic_migrate.tenants t "
				  "JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) t.schema_oid "
				  "JOIN pg_catalog.pg_class c ON c.relnamespace OPERATOR(pg_catalog.=) t.schema_oid "
				  "  AND c.relname OPERATOR(pg_catalog.=) $2 AND c.relkind OPERATOR(pg_catalog.=) 'i' "
				  "JOIN pg_catalog.pg_index i ON i.indexrelid OPERATOR(pg_catalog.=) c.oid "
				  "JOIN clinic_migrate.tenant_tables tt ON tt.tenant_id OPERATOR(pg_catalog.=) t.tenant_id "
				  "  AND tt.target_table OPERATOR(pg_catalog.=) i.indrelid "
				  "WHERE t.source_schema OPERATOR(pg_catalog.=) $1 "
				  "AND t.state OPERATOR(pg_catalog.<>) 'finalized' ORDER BY t.tenant_id",
				  2, types, values, NULL, 0);
	tt = SPI_tuptable;
	n = SPI_processed;
	for (uint64 i = 0; i < n; i++)
	{
		TenantCopy	c;
		bool		isnull;

		c.tenant = SPI_getvalue(tt->vals[i], tt->tupdesc, 1);
		c.state = SPI_getvalue(tt->vals[i], tt->tupdesc, 2);
		c.tenant_column = SPI_getvalue(tt->vals[i], tt->tupdesc, 3);
		c.target = DatumGetObjectId(SPI_getbinval(tt->vals[i], tt->tupdesc, 4, &isnull));
		refuse_in_transition(&c, psprintf("drop index %s", quote_qualified_identifier(schema, name)));
		run_on_copy((Node *) drop_of(OBJECT_INDEX, SPI_getvalue(tt->vals[i], tt->tupdesc, 5), name, behavior),
					query, &c);
	}
}

typedef struct DroppedRel
{
	Oid			objid;
	bool		is_table;
	char	   *schema;
	char	   *name;
} DroppedRel;

PG_FUNCTION_INFO_V1(cm_follow_drop);
Datum
cm_follow_drop(PG_FUNCTION_ARGS)
{
	EventTriggerData *trig;
	DropBehavior behavior = DROP_RESTRICT;
	List	   *dropped = NIL;
	ListCell   *lc;
	const char *query = debug_query_string ? debug_query_string : "";
	Oid			nsp;

	if (!CALLED_AS_EVENT_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("clinic_migrate.follow_drop() must be an event trigger")));
	trig = (EventTriggerData *) fcinfo->context;
	if (following || own_statements_only || creating_extension || !cm_follow_ddl_on || restoring())
		PG_RETURN_NULL();
	nsp = get_namespace_oid(CM_SCHEMA, true);
	if (!OidIsValid(nsp) || !OidIsValid(get_relname_relid("tenant_tables", nsp)))
		PG_RETURN_NULL();
	if (trig->parsetree && IsA(trig->parsetree, DropStmt))
	{
		DropStmt   *ds = (DropStmt *) trig->parsetree;

		behavior = ds->behavior;
		if (ds->concurrent)
		{
			ereport(WARNING,
					(errmsg("the copies of the index were not dropped"),
					 errdetail("DROP INDEX CONCURRENTLY cannot drop other indexes inside its own statement."),
					 errhint("Drop the index of the same name in each moving tenant's schema.")));
			PG_RETURN_NULL();
		}
	}
	SPI_connect();
	if (SPI_execute("SELECT d.objid, d.object_type, d.schema_name, d.object_name "
					"FROM pg_catalog.pg_event_trigger_dropped_objects() d "
					"WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass "
					"AND d.objsubid OPERATOR(pg_catalog.=) 0 AND d.object_type IN ('table', 'index') "
					"AND NOT d.is_temporary", true, 0) != SPI_OK_SELECT)
		elog(ERROR, "clinic_migrate: could not read the dropped objects");
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		DroppedRel *d = palloc(sizeof(DroppedRel));
		bool		isnull;

		d->objid = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
		d->is_table = strcmp(SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2), "table") == 0;
		d->schema = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 3);
		d->name = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 4);
		if (d->schema && d->name && strcmp(d->schema, CM_SCHEMA) != 0)
			dropped = lappend(dropped, d);
	}
	/*
	 * DROP TRIGGER of a planned table's trigger (not ours): the copies'
	 * trigger of that name goes.  Only the trigger the statement names: the
	 * internal ones a dropped foreign key takes along are not the copies'.
	 */
	if (trig->parsetree && IsA(trig->parsetree, DropStmt) &&
		((DropStmt *) trig->parsetree)->removeType == OBJECT_TRIGGER &&
		SPI_execute("SELECT d.address_names[1], d.address_names[2], d.address_names[3] "
					"FROM pg_catalog.pg_event_trigger_dropped_objects() d "
					"WHERE d.object_type OPERATOR(pg_catalog.=) 'trigger' AND d.original AND NOT d.is_temporary "
					"AND pg_catalog.cardinality(d.address_names) OPERATOR(pg_catalog.=) 3",
					true, 0) == SPI_OK_SELECT)
	{
		SPITupleTable *tt = SPI_tuptable;
		uint64		n = SPI_processed;

		for (uint64 i = 0; i < n; i++)
		{
			char	   *tschema = SPI_getvalue(tt->vals[i], tt->tupdesc, 1);
			char	   *tname = SPI_getvalue(tt->vals[i], tt->tupdesc, 2);
			char	   *trig = SPI_getvalue(tt->vals[i], tt->tupdesc, 3);
			Oid			relid;
			ListCell   *cl;

			if (!tschema || !tname || !trig || strncmp(trig, "clinic_migrate_", 15) == 0 ||
				strncmp(trig, "RI_ConstraintTrigger_", 21) == 0)
				continue;
			relid = get_relname_relid(tname, get_namespace_oid(tschema, true));
			foreach(cl, copies_of(relid))
			{
				TenantCopy *c = lfirst(cl);
				DropStmt   *ds;

				if (!OidIsValid(get_trigger_oid(c->target, trig, true)))
					continue;
				ds = makeNode(DropStmt);
				refuse_in_transition(c, psprintf("drop trigger %s", quote_identifier(trig)));
				ds->removeType = OBJECT_TRIGGER;
				ds->objects = list_make1(list_make3(makeString(get_namespace_name(get_rel_namespace(c->target))),
													makeString(get_rel_name(c->target)),
													makeString(pstrdup(trig))));
				ds->behavior = behavior;
				ds->missing_ok = true;
				run_on_copy((Node *) ds, query, c);
			}
		}
	}

	/* views of a source schema: the tenants' views of that name go (0.7) */
	if (SPI_execute("SELECT d.schema_name, d.object_name FROM pg_catalog.pg_event_trigger_dropped_objects() d "
					"WHERE d.object_type IN ('view', 'materialized view') AND d.original AND NOT d.is_temporary",
					true, 0) == SPI_OK_SELECT)
	{
		SPITupleTable *vt = SPI_tuptable;
		uint64		nv = SPI_processed;

		for (uint64 i = 0; i < nv; i++)
		{
			char	   *vs = SPI_getvalue(vt->vals[i], vt->tupdesc, 1);
			char	   *vn = SPI_getvalue(vt->vals[i], vt->tupdesc, 2);

			if (vs && vn && strcmp(vs, CM_SCHEMA) != 0)
				drop_tenant_views(vs, vn);
		}
	}

	/* tables first: the indexes of a dropped table went with its copies */
	foreach(lc, dropped)
	{
		DroppedRel *d = lfirst(lc);

		if (d->is_table && dropping_partition(d->objid) != NULL)
			drop_partition_copies(dropping_partition(d->objid), behavior, query);
		else if (d->is_table)
			drop_table_copies(d->objid, quote_qualified_identifier(d->schema, d->name), behavior, query);
	}
	foreach(lc, dropped)
	{
		DroppedRel *d = lfirst(lc);

		if (!d->is_table)
			drop_index_copies(d->schema, d->name, behavior, query);
	}
	SPI_finish();
	PG_RETURN_NULL();
}

/* COMMENT ON TABLE or COLUMN of a planned table: the same on its copies */
static void
follow_comment(CommentStmt *stmt, const char *query)
{
	List	   *copies;
	ListCell   *lc;

	if (stmt->objtype != OBJECT_TABLE && stmt->objtype != OBJECT_COLUMN)
		return;
	copies = copies_of(collected_relid());
	foreach(lc, copies)
	{
		TenantCopy *c = lfirst(lc);
		CommentStmt *s = makeNode(CommentStmt);
		char	   *schema = get_namespace_name(get_rel_namespace(c->target));
		char	   *rel = get_rel_name(c->target);

		s->objtype = stmt->objtype;
		s->comment = stmt->comment;
		if (stmt->objtype == OBJECT_TABLE)
			s->object = (Node *) list_make2(makeString(schema), makeString(rel));
		else
			s->object = (Node *) list_make3(makeString(schema), makeString(rel),
											llast((List *) stmt->object));
		run_on_copy((Node *) s, query, c);
	}
}

/* the same GRANT or REVOKE on the copies of one planned table */
static void
follow_grant_on(GrantStmt *stmt, Oid relid, const char *query, bool *warned)
{
	ListCell   *lc;

	foreach(lc, copies_of(relid))
	{
		TenantCopy *c = lfirst(lc);
		GrantStmt  *s;
		Oid			owner = cm_rel_owner(c->target);

		/* a grantor by GRANT OPTION, not the owner: the copies keep theirs */
		if (owner != GetUserId() && !has_privs_of_role(GetUserId(), owner))
		{
			if (!*warned)
				ereport(WARNING,
						(errmsg("the privileges of the moving tenants' copies of %s were not changed",
								cm_qualified_relname(relid)),
						 errdetail("Role \"%s\" is not a member of their owner \"%s\".",
								   GetUserNameFromId(GetUserId(), false), GetUserNameFromId(owner, false)),
						 errhint("Run the GRANT or REVOKE as a member of role \"%s\".",
								 GetUserNameFromId(owner, false))));
			*warned = true;
			continue;
		}
		s = copyObject(stmt);
		s->targtype = ACL_TARGET_OBJECT;
		s->objtype = OBJECT_TABLE;
		s->objects = list_make1(copy_rangevar(c));
		run_on_copy((Node *) s, query, c);
	}
}

static void
follow_grant(GrantStmt *stmt, const char *query)
{
	ListCell   *lc;
	bool		warned = false;

	if (stmt->objtype != OBJECT_TABLE)
		return;
	if (stmt->targtype == ACL_TARGET_OBJECT)
	{
		foreach(lc, stmt->objects)
			follow_grant_on(stmt, RangeVarGetRelid((RangeVar *) lfirst(lc), NoLock, true), query, &warned);
	}
	else if (stmt->targtype == ACL_TARGET_ALL_IN_SCHEMA)
	{
		foreach(lc, stmt->objects)
		{
			Oid			type = NAMEOID;
			Datum		value = DirectFunctionCall1(namein, CStringGetDatum(strVal(lfirst(lc))));
			List	   *sources = NIL;
			ListCell   *sc;

			cm_state_exec("SELECT DISTINCT tt.source_table FROM clinic_migrate.tenant_tables tt "
						  "JOIN clinic_migrate.tenants t ON t.tenant_id OPERATOR(pg_catalog.=) tt.tenant_id "
						  "WHERE t.source_schema OPERATOR(pg_catalog.=) $1 "
						  "AND t.state OPERATOR(pg_catalog.<>) 'finalized'", 1, &type, &value, NULL, 0);
			for (uint64 i = 0; i < SPI_processed; i++)
			{
				bool		isnull;

				sources = lappend_oid(sources, DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[i],
																			  SPI_tuptable->tupdesc, 1, &isnull)));
			}
			foreach(sc, sources)
				follow_grant_on(stmt, lfirst_oid(sc), query, &warned);
		}
	}
}

/* a planned table (with copies) that the statement moved or renamed: refused */
static void
refuse_relation_change(RangeVar *now, const char *what)
{
	Oid			relid = changed_relid(now);
	List	   *copies;

	copies = copies_of(relid);
	if (copies != NIL)
		refuse(linitial(copies), psprintf("%s %s", what, cm_qualified_relname(relid)));
}

static void
follow_rename(RenameStmt *stmt, const char *query)
{
	Oid			relid;
	List	   *copies;
	ListCell   *lc;

	if (stmt->relation == NULL)
		return;

	/*
	 * By the relation's kind, not the statement's: ALTER INDEX and ALTER
	 * VIEW rename a table too.  The table has its new name now.
	 */
	if (stmt->renameType == OBJECT_TABLE || stmt->renameType == OBJECT_INDEX ||
		stmt->renameType == OBJECT_VIEW || stmt->renameType == OBJECT_MATVIEW ||
		stmt->renameType == OBJECT_FOREIGN_TABLE || stmt->renameType == OBJECT_SEQUENCE)
	{
		RangeVar   *now = makeRangeVar(stmt->relation->schemaname, stmt->newname, -1);

		refuse_relation_change(now, "rename table");
		refuse_change_of_copy(changed_relid(now), "rename");
		return;
	}
	if (stmt->renameType != OBJECT_COLUMN && stmt->renameType != OBJECT_TABCONSTRAINT)
		return;
	relid = changed_relid(stmt->relation);
	copies = copies_of(relid);
	if (copies == NIL)
	{
		if (stmt->renameType == OBJECT_COLUMN)
			refuse_change_of_copy(relid, "rename a column of");
		return;
	}
	if (stmt->renameType == OBJECT_COLUMN)
	{
		/* the column has its new name now: the log still has the old one */
		check_column(relid, copies, stmt->subname, "rename");
		check_column(relid, copies, stmt->newname, "rename");
	}
	foreach(lc, copies)
	{
		TenantCopy *c = lfirst(lc);
		RenameStmt *s = copyObject(stmt);

		s->relation = copy_rangevar(c);
		s->missing_ok = false;
		if (s->renameType == OBJECT_COLUMN)
			s->relationType = OBJECT_TABLE;

		/*
		 * A constraint the copy does not have: a key to the registry (kept
		 * by the registry guard, 0.9) or to a shared table with
		 * shared_foreign_keys off.
		 */
		if (s->renameType == OBJECT_TABCONSTRAINT &&
			!OidIsValid(get_relation_constraint_oid(c->target, s->subname, true)))
			continue;
		run_on_copy((Node *) s, query, c);
	}
}

/*
 * The definition of index idx of a shared table, made for a copy:
 * "CREATE [UNIQUE] INDEX CONCURRENTLY IF NOT EXISTS name ON copy USING ...",
 * from pg_get_indexdef's text, whose head is known exactly.  NULL if it is
 * not what was expected.
 */
static char *
concurrent_def_for(Oid idx, Oid relid, Oid copy)
{
	int			nest = cm_pin_search_path();	/* every name qualified */
	char	   *def = TextDatumGetCString(DirectFunctionCall1(pg_get_indexdef, ObjectIdGetDatum(idx)));
	HeapTuple	itup = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(idx));
	const char *unique;
	char	   *head;

	cm_restore_output_settings(nest);
	if (!HeapTupleIsValid(itup))
		return NULL;
	unique = ((Form_pg_index) GETSTRUCT(itup))->indisunique ? "UNIQUE " : "";
	ReleaseSysCache(itup);
	head = psprintf("CREATE %sINDEX %s ON %s USING ", unique, quote_identifier(get_rel_name(idx)),
					cm_qualified_relname(relid));

	if (strncmp(def, head, strlen(head)) != 0)
		return NULL;
	return psprintf("CREATE %sINDEX CONCURRENTLY IF NOT EXISTS %s ON %s USING %s", unique,
					quote_identifier(get_rel_name(idx)), cm_qualified_relname(copy), def + strlen(head));
}

/*
 * CREATE INDEX CONCURRENTLY on a shared table with copies: each copy's
 * index is recorded as pending and an index job is queued for its tenant
 * (unless the tenant has a job already: cutover then says to queue one).
 */
static void
queue_concurrent_index(Oid relid, List *copies)
{
	Oid			idx = collected_relid();
	ListCell   *lc;
	int			queued = 0;
	bool		with_session;
	Oid			nsp = get_namespace_oid(CM_SCHEMA, false);

	if (!OidIsValid(idx) || get_rel_relkind(idx) != RELKIND_INDEX ||
		!OidIsValid(get_relname_relid("pending_indexes", nsp)))
		return;
	with_session = get_attnum(get_relname_relid("job_queue", nsp), "session_role") != InvalidAttrNumber;
	foreach(lc, copies)
	{
		TenantCopy *c = lfirst(lc);
		char	   *def = concurrent_def_for(idx, relid, c->target);
		Oid			types[6] = {TEXTOID, NAMEOID, OIDOID, TEXTOID, NAMEOID, NAMEOID};
		Datum		values[6];

		if (def == NULL)
		{
			ereport(WARNING,
					(errmsg("the index was not made on the copy %s of tenant \"%s\"",
							cm_qualified_relname(c->target), c->tenant),
					 errhint("Create it there with CREATE INDEX CONCURRENTLY.")));
			continue;
		}
		values[0] = CStringGetTextDatum(c->tenant);
		values[1] = DirectFunctionCall1(namein, CStringGetDatum(get_rel_name(idx)));
		values[2] = ObjectIdGetDatum(c->target);
		values[3] = CStringGetTextDatum(def);
		values[4] = DirectFunctionCall1(namein, CStringGetDatum(GetUserNameFromId(GetUserId(), false)));
		values[5] = DirectFunctionCall1(namein, CStringGetDatum(GetUserNameFromId(GetSessionUserId(), false)));
		cm_state_exec("INSERT INTO clinic_migrate.pending_indexes (tenant_id, index_name, copy_table, ddl, queued_by) "
					  "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id, index_name) DO UPDATE "
					  "SET copy_table = EXCLUDED.copy_table, ddl = EXCLUDED.ddl, queued_by = EXCLUDED.queued_by, "
					  "queued_at = EXCLUDED.queued_at, built_at = NULL, error = NULL",
					  5, types, values, NULL, 0);
		/* a job for the tenant, unless it has one (one job per tenant at a time) */
		cm_state_exec(with_session ?
					  "INSERT INTO clinic_migrate.job_queue (tenant_id, action, run_as, session_role, enqueued_by) "
					  "SELECT $1, 'index', r.oid, $6, r.rolname FROM pg_catalog.pg_roles r "
					  "WHERE r.rolname OPERATOR(pg_catalog.=) $5 "
					  "ON CONFLICT (tenant_id) WHERE state IN ('queued', 'running') DO NOTHING" :
					  "INSERT INTO clinic_migrate.job_queue (tenant_id, action, run_as, enqueued_by) "
					  "SELECT $1, 'index', r.oid, r.rolname FROM pg_catalog.pg_roles r "
					  "WHERE r.rolname OPERATOR(pg_catalog.=) $5 "
					  "ON CONFLICT (tenant_id) WHERE state IN ('queued', 'running') DO NOTHING",
					  6, types, values, NULL, 0);
		queued++;
	}
	if (queued > 0)
		ereport(NOTICE,
				(errmsg("the index is queued for the copies of %s of %d moving tenants",
						cm_qualified_relname(relid), queued),
				 errdetail("CREATE INDEX CONCURRENTLY cannot run again inside its own statement: an index job of each tenant builds it, and the tenant cannot cut over before."),
				 errhint("clinic_migrate.pending_indexes lists them until they are built.")));
}

/* pending index builds of the tenant not done yet, "a, b", or NULL (SPI connected) */
char *
ddl_pending_indexes(const char *tenant)
{
	Oid			nsp = get_namespace_oid(CM_SCHEMA, false);

	if (!OidIsValid(get_relname_relid("pending_indexes", nsp)))
		return NULL;
	/* one made by hand on the copy counts */
	cm_state_exec_tenant("SELECT string_agg(quote_ident(p.index_name), ', ' ORDER BY p.index_name) "
						 "FROM clinic_migrate.pending_indexes p WHERE p.tenant_id = $1 AND p.built_at IS NULL "
						 "AND EXISTS (SELECT FROM pg_catalog.pg_class t WHERE t.oid = p.copy_table) "
						 "AND NOT EXISTS (SELECT FROM pg_catalog.pg_index i "
						 "  JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid "
						 "  WHERE i.indrelid = p.copy_table AND c.relname = p.index_name AND i.indisvalid)",
						 tenant);
	if (SPI_processed == 0)
		return NULL;
	return SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
}

/*
 * Run one CREATE INDEX CONCURRENTLY at the top level of this worker (it
 * commits and starts transactions of its own, as it does for a client),
 * in READ COMMITTED as a client's would.  No transaction may be open.
 */
static void
run_concurrently(const char *ddl)
{

	/*
	 * The statement, and what runs it, live in a context of their own, as a
	 * client's portal does: CREATE INDEX CONCURRENTLY commits and starts
	 * transactions, which free every transaction context on the way.
	 */
	static MemoryContext portal = NULL;
	MemoryContext old;
	List	   *raw;
	RawStmt    *rs;
	PlannedStmt *ps;

	/* (what a build that failed left) */
	if (portal != NULL)
		MemoryContextDelete(portal);
	portal = AllocSetContextCreate(TopMemoryContext, "clinic_migrate index build", ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(portal);
	raw = raw_parser(ddl, RAW_PARSE_DEFAULT);
	ps = makeNode(PlannedStmt);

	if (list_length(raw) != 1 || !IsA((rs = linitial_node(RawStmt, raw))->stmt, IndexStmt) ||
		!((IndexStmt *) rs->stmt)->concurrent)
		elog(ERROR, "clinic_migrate: not a CREATE INDEX CONCURRENTLY");
	ps->commandType = CMD_UTILITY;
	ps->canSetTag = false;
	ps->utilityStmt = rs->stmt;
	ps->stmt_location = rs->stmt_location;
	ps->stmt_len = rs->stmt_len;
	/*
	 * For this worker's session (it runs this job only): the statement's
	 * own commits would undo settings made for one transaction.
	 */
	SetConfigOption("default_transaction_isolation", "read committed", PGC_USERSET, PGC_S_SESSION);
	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_USERSET, PGC_S_SESSION);
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	MemoryContextSwitchTo(portal);
	following = true;
	PG_TRY();
	{
		/*
		 * As the job's role, who made the shared index and is a member of
		 * the copy's owner (checked): PostgreSQL itself evaluates the
		 * index's expressions as the table's owner, restricted.  (No
		 * security-restricted context of ours may span the statement's own
		 * transactions.)
		 */
		ProcessUtility(ps, ddl, false, PROCESS_UTILITY_TOPLEVEL, NULL, NULL, None_Receiver, NULL);
	}
	PG_FINALLY();
	{
		following = false;
	}
	PG_END_TRY();
	if (ActiveSnapshotSet())
		PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(old);
	MemoryContextDelete(portal);
	portal = NULL;
}

/*
 * A build that failed leaves an invalid index on the copy: it is dropped
 * (as CREATE INDEX CONCURRENTLY's own advice says), and the error recorded.
 */
static void
drop_invalid_index(const char *tenant, const char *index_name, const char *error, Oid owner)
{
	Oid			save_user;
	int			save_sec;

	Oid			types[3] = {TEXTOID, NAMEOID, TEXTOID};
	Datum		values[3];

	cm_begin_txn_read_committed();
	values[0] = CStringGetTextDatum(tenant);
	values[1] = DirectFunctionCall1(namein, CStringGetDatum(index_name));
	values[2] = CStringGetTextDatum(error);
	cm_state_exec("SELECT pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname) "
				  "FROM clinic_migrate.tenants t JOIN pg_catalog.pg_class c ON c.relnamespace = t.schema_oid "
				  "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
				  "JOIN pg_catalog.pg_index i ON i.indexrelid = c.oid "
				  "WHERE t.tenant_id = $1 AND c.relname = $2 AND NOT i.indisvalid", 2, types, values, NULL, 0);
	if (SPI_processed > 0)
	{
		char	   *q = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

		/* as its owner (nothing of the application's runs in a DROP INDEX) */
		GetUserIdAndSecContext(&save_user, &save_sec);
		SetUserIdAndSecContext(owner, save_sec | SECURITY_LOCAL_USERID_CHANGE);
		following = true;
		if (SPI_execute(psprintf("DROP INDEX IF EXISTS %s", q), false, 0) < 0)
			elog(ERROR, "clinic_migrate: could not drop invalid index %s", q);
		following = false;
		SetUserIdAndSecContext(save_user, save_sec);
	}
	cm_state_exec("UPDATE clinic_migrate.pending_indexes SET error = $3, attempts = attempts + 1 "
				  "WHERE tenant_id = $1 AND index_name = $2", 3, types, values, NULL, 0);
	cm_end_txn();
}

static void
build_one(const char *tenant, const char *name, const char *ddl, Oid owner, MemoryContext cxt)
{
	PG_TRY();
	{
		run_concurrently(ddl);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		drop_invalid_index(tenant, name, edata->message, owner);
		ReThrowError(edata);
	}
	PG_END_TRY();
}

void
ddl_check_pending_indexes(const char *tenant)
{
	char	   *pending;

	if (!OidIsValid(get_relname_relid("pending_indexes", get_namespace_oid(CM_SCHEMA, false))))
		return;
	/* made by hand meanwhile: done */
	cm_state_exec_tenant("UPDATE clinic_migrate.pending_indexes p SET built_at = clock_timestamp(), error = NULL "
						 "FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid "
						 "WHERE p.tenant_id = $1 AND p.built_at IS NULL AND i.indrelid = p.copy_table "
						 "AND c.relname = p.index_name AND i.indisvalid", tenant);
	pending = ddl_pending_indexes(tenant);
	if (pending)
	{
		cm_state_exec_tenant("SELECT ddl FROM clinic_migrate.pending_indexes WHERE tenant_id = $1 "
							 "AND built_at IS NULL ORDER BY queued_at, index_name LIMIT 1", tenant);
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("tenant \"%s\" cannot cut over: its copies lack indexes still to build: %s", tenant, pending),
				 errdetail("They were made CONCURRENTLY on the shared tables; the tenant's index job builds them on its copies."),
				 errhint("Wait for its index job (clinic_migrate.job_queue), or queue one with SELECT clinic_migrate.enqueue(ARRAY['%s'], 'index'), or build them by hand, such as: %s",
						 tenant, SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1))));
	}
}

int
ddl_build_pending_indexes(const char *tenant)
{
	int			built = 0;
	MemoryContext cxt = CurrentMemoryContext;

	for (;;)
	{
		char	   *ddl = NULL;
		char	   *name = NULL;
		Oid			owner = InvalidOid;
		bool		skipped = false;
		Oid			types[3] = {TEXTOID, NAMEOID, TEXTOID};
		Datum		values[3];

		cm_begin_txn_read_committed();
		if (OidIsValid(get_relname_relid("pending_indexes", get_namespace_oid(CM_SCHEMA, false))))
		{
			cm_state_exec_tenant("SELECT index_name, ddl, copy_table::pg_catalog.oid, queued_by "
								 "FROM clinic_migrate.pending_indexes "
								 "WHERE tenant_id = $1 AND built_at IS NULL AND attempts < 3 "
								 "ORDER BY queued_at, index_name LIMIT 1", tenant);
			if (SPI_processed > 0)
			{
				bool		isnull;
				Oid			copy = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull));
				char	   *by = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4);
				Oid			by_oid = get_role_oid(by, true);

				name = MemoryContextStrdup(cxt, SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1));
				ddl = MemoryContextStrdup(cxt, SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2));
				owner = SearchSysCacheExists1(RELOID, ObjectIdGetDatum(copy)) ? cm_rel_owner(copy) : InvalidOid;

				/*
				 * Built as the copy's owner, for the role that made the
				 * shared index: only if that role could have made it on the
				 * copy itself, as follow_ddl requires of any change.
				 */
				if (!OidIsValid(owner) || !OidIsValid(by_oid) || !has_privs_of_role(by_oid, owner))
				{
					values[0] = CStringGetTextDatum(tenant);
					values[1] = DirectFunctionCall1(namein, CStringGetDatum(name));
					values[2] = CStringGetTextDatum(!OidIsValid(owner) ? "its table is gone" :
													psprintf("role %s is not a member of the copy's owner %s",
															 by, GetUserNameFromId(owner, false)));
					cm_state_exec("UPDATE clinic_migrate.pending_indexes SET attempts = 3, error = $3 "
								  "WHERE tenant_id = $1 AND index_name = $2", 3, types, values, NULL, 0);
					ddl = NULL;
					skipped = true;
				}
			}
		}
		cm_end_txn();
		if (skipped)
			continue;
		if (ddl == NULL)
			break;
		pgstat_report_activity(STATE_RUNNING, psprintf("clinic_migrate: index %s of tenant %s", name, tenant));
		build_one(tenant, name, ddl, owner, cxt);
		cm_begin_txn_read_committed();
		values[0] = CStringGetTextDatum(tenant);
		values[1] = DirectFunctionCall1(namein, CStringGetDatum(name));
		cm_state_exec("UPDATE clinic_migrate.pending_indexes SET built_at = clock_timestamp(), error = NULL "
					  "WHERE tenant_id = $1 AND index_name = $2", 2, types, values, NULL, 0);
		cm_end_txn();
		built++;
	}
	return built;
}

void
cm_index_tenant(CmWorkerShared *sh, int64 *run_id)
{
	TenantInfo	info;
	int			built;

	cm_begin_txn();
	clone_tenant_info(sh->tenant, &info);
	strlcpy(sh->schema, info.exists ? info.schema_name : "", NAMEDATALEN);
	*run_id = cm_run_start(sh->tenant, sh->schema, "index", sh->started_by, MyProcPid);
	cm_end_txn();
	built = ddl_build_pending_indexes(sh->tenant);
	cm_begin_txn();
	sh->rows_done = built;
	cm_run_finish(*run_id, "completed", built, NULL, NULL);
	cm_end_txn();
}

static void
follow_index(IndexStmt *stmt, const char *query)
{
	Oid			relid;
	List	   *copies;
	ListCell   *lc;

	if (stmt->relation == NULL)
		return;
	relid = collected_relid();
	relid = OidIsValid(relid) && get_rel_relkind(relid) == RELKIND_INDEX ? IndexGetRelation(relid, true) :
		RangeVarGetRelid(stmt->relation, NoLock, true);
	copies = copies_of(relid);
	if (copies == NIL)
		return;
	if (stmt->concurrent)
	{
		queue_concurrent_index(relid, copies);
		return;
	}
	foreach(lc, copies)
	{
		TenantCopy *c = lfirst(lc);
		IndexStmt  *s = copyObject(stmt);

		s->relation = copy_rangevar(c);
		run_on_copy((Node *) s, query, c);
	}
}

/* ---- CREATE TRIGGER, CREATE VIEW, CREATE MATERIALIZED VIEW (0.7) ---- */

typedef struct TenantView
{
	const char *schema;
	const char *name;
	bool		matview;
} TenantView;

static void
drop_tenant_view(void *arg)
{
	TenantView *tv = arg;
	int			nest = cm_pin_search_path();

	if (SPI_execute(psprintf("DROP %s %s", tv->matview ? "MATERIALIZED VIEW" : "VIEW",
							 quote_qualified_identifier(tv->schema, tv->name)), false, 0) < 0)
		elog(ERROR, "clinic_migrate: could not drop a tenant's view");
	AtEOXact_GUC(true, nest);
}

/*
 * The view of that name in the schemas of the tenants moving from source
 * schema nsp (not finalized) goes, as the role running the statement (a
 * WARNING when it cannot: what depends on it, or no right to).
 */
static void
drop_tenant_views(const char *nsp, const char *name)
{
	Oid			types[2] = {NAMEOID, NAMEOID};
	Datum		values[2];
	SPITupleTable *tt;
	uint64		n;

	values[0] = DirectFunctionCall1(namein, CStringGetDatum(nsp));
	values[1] = DirectFunctionCall1(namein, CStringGetDatum(name));
	cm_state_exec("SELECT n.nspname, c.relkind::pg_catalog.text FROM clinic_migrate.tenants t "
				  "JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) t.schema_oid "
				  "JOIN pg_catalog.pg_class c ON c.relnamespace OPERATOR(pg_catalog.=) n.oid "
				  "  AND c.relname OPERATOR(pg_catalog.=) $2 AND c.relkind IN ('v', 'm') "
				  "WHERE t.source_schema OPERATOR(pg_catalog.=) $1 "
				  "AND t.state OPERATOR(pg_catalog.<>) 'finalized' ORDER BY t.tenant_id",
				  2, types, values, NULL, 0);
	tt = SPI_tuptable;
	n = SPI_processed;
	for (uint64 i = 0; i < n; i++)
	{
		TenantView	tv;
		ErrorData  *failed;

		tv.schema = SPI_getvalue(tt->vals[i], tt->tupdesc, 1);
		tv.name = name;
		tv.matview = SPI_getvalue(tt->vals[i], tt->tupdesc, 2)[0] == 'm';
		following = true;
		failed = cm_try_in_subxact(drop_tenant_view, &tv);
		following = false;
		if (failed)
		{
			ereport(WARNING,
					(errmsg("view %s is left: %s", quote_qualified_identifier(tv.schema, name), failed->message),
					 errhint("Drop or change it by hand.")));
			FreeErrorData(failed);
		}
	}
}

typedef struct TriggerArgs
{
	Oid			source;
	TenantCopy *copy;
	const char *name;
} TriggerArgs;

/* the trigger name of source on a tenant's copy, its errors naming the copy */
static void
clone_one_trigger(void *arg)
{
	TriggerArgs *ta = arg;
	ErrorContextCallback errcb;
	FollowContext fc = {ta->copy};

	errcb.callback = follow_error_context;
	errcb.arg = &fc;
	errcb.previous = error_context_stack;
	error_context_stack = &errcb;
	clone_triggers(ta->source, ta->copy->target, ta->name);
	error_context_stack = errcb.previous;
}

/*
 * A trigger made on a planned shared table: each copy gets it, as the
 * clone makes the application's triggers (firing for the application's
 * writes only; ours and constraint triggers are not carried).  As the role
 * running the statement, which PostgreSQL checks for TRIGGER on the copy
 * (the copy has the shared table's grants) and EXECUTE on the function.
 */
static void
follow_trigger(CreateTrigStmt *stmt, const char *query)
{
	Oid			relid;
	List	   *copies;
	ListCell   *lc;

	if (stmt->relation == NULL || stmt->trigname == NULL ||
		strncmp(stmt->trigname, "clinic_migrate_", 15) == 0)
		return;
	relid = RangeVarGetRelid(stmt->relation, NoLock, true);
	if (OidIsValid(relid) && stmt->row && stmt->timing == TRIGGER_TYPE_BEFORE &&
		(stmt->events & TRIGGER_TYPE_UPDATE))
		capture_recheck_tenant_trigger(relid);
	copies = copies_of(relid);
	foreach(lc, copies)
	{
		TenantCopy *c = lfirst(lc);
		TriggerArgs ta;

		refuse_in_transition(c, psprintf("create trigger %s on %s", quote_identifier(stmt->trigname),
										 cm_qualified_relname(relid)));
		/* CREATE OR REPLACE TRIGGER: the copy's goes, as its owner, then comes again */
		if (stmt->replace && OidIsValid(get_trigger_oid(c->target, stmt->trigname, true)))
		{
			DropStmt   *ds = makeNode(DropStmt);

			ds->removeType = OBJECT_TRIGGER;
			ds->objects = list_make1(list_make3(makeString(get_namespace_name(get_rel_namespace(c->target))),
												makeString(get_rel_name(c->target)),
												makeString(pstrdup(stmt->trigname))));
			ds->behavior = DROP_RESTRICT;
			ds->missing_ok = true;
			run_on_copy((Node *) ds, query, c);
		}
		ta.source = relid;
		ta.copy = c;
		ta.name = stmt->trigname;
		run_following(clone_one_trigger, &ta);
	}
}

/*
 * A view or materialized view made in a source schema: each tenant moving
 * from it (its schema made, not finalized) gets it over its own tables
 * when it reads a planned table, as the clone makes them (as the role
 * running the statement; one that cannot be made: a WARNING).
 */
typedef struct ViewArgs
{
	TenantPlan *plan;
	const char *schema;
	Oid			view;
} ViewArgs;

/* the new view in one tenant's schema, with a snapshot that sees it */
static void
clone_one_view_for(void *arg)
{
	ViewArgs   *va = arg;
	int			nest = cm_pin_search_path();
	int			out = cm_stable_output_settings();

	/* read-only SPI reads the active snapshot: one that sees the new view */
	CommandCounterIncrement();
	PushCopiedSnapshot(GetActiveSnapshot());
	UpdateActiveSnapshotCommandId();
	clone_views(va->plan, va->schema, va->view);
	PopActiveSnapshot();
	cm_restore_output_settings(out);
	AtEOXact_GUC(true, nest);
}

static void
follow_view(Oid view, bool replace)
{
	Oid			types[1] = {NAMEOID};
	Datum		values[1];
	SPITupleTable *tt;
	uint64		n;

	if (!OidIsValid(view) || get_rel_persistence(view) == RELPERSISTENCE_TEMP)
		return;
	/* CREATE OR REPLACE VIEW: the tenants' go, to be made again below */
	if (replace)
		drop_tenant_views(get_namespace_name(get_rel_namespace(view)), get_rel_name(view));
	values[0] = DirectFunctionCall1(namein, CStringGetDatum(get_namespace_name(get_rel_namespace(view))));
	cm_state_exec("SELECT t.tenant_id FROM clinic_migrate.tenants t "
				  "JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) t.schema_oid "
				  "WHERE t.source_schema OPERATOR(pg_catalog.=) $1 "
				  /* the others get theirs when their copy is finished, or at cutover */
				  "AND t.state IN ('copied', 'cut_over') ORDER BY t.tenant_id",
				  1, types, values, NULL, 0);
	tt = SPI_tuptable;
	n = SPI_processed;
	for (uint64 i = 0; i < n; i++)
	{
		char	   *tenant = SPI_getvalue(tt->vals[i], tt->tupdesc, 1);
		char	   *t = tenant;
		CmSettings	s;
		TenantPlan *plan;
		TenantInfo	info;
		ViewArgs	va;

		cm_current_settings(&s);
		plan = clone_plan_for_tenant(&t, &s, CurrentMemoryContext);
		clone_tenant_info(tenant, &info);
		if (!info.exists || get_namespace_name(info.schema_oid) == NULL)
			continue;
		va.plan = plan;
		va.schema = get_namespace_name(info.schema_oid);
		va.view = view;
		run_following(clone_one_view_for, &va);
	}
}

PG_FUNCTION_INFO_V1(cm_follow_ddl);
Datum
cm_follow_ddl(PG_FUNCTION_ARGS)
{
	EventTriggerData *trig;
	Node	   *parsetree;
	const char *query;

	if (!CALLED_AS_EVENT_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("clinic_migrate.follow_ddl() must be an event trigger")));
	trig = (EventTriggerData *) fcinfo->context;
	parsetree = trig->parsetree;
	if (following || own_statements_only || creating_extension || parsetree == NULL || !cm_follow_ddl_on)
		PG_RETURN_NULL();

	if (restoring())
		PG_RETURN_NULL();
	query = debug_query_string ? debug_query_string : "";
	follow_tag = GetCommandTagName(trig->tag);
	SPI_connect();
	switch (nodeTag(parsetree))
	{
		case T_AlterTableStmt:
			follow_alter_table((AlterTableStmt *) parsetree, query);
			break;
		case T_RenameStmt:
			follow_rename((RenameStmt *) parsetree, query);
			break;
		case T_IndexStmt:
			follow_index((IndexStmt *) parsetree, query);
			break;
		case T_CommentStmt:
			follow_comment((CommentStmt *) parsetree, query);
			break;
		case T_GrantStmt:
			follow_grant((GrantStmt *) parsetree, query);
			break;
		case T_CreateStmt:
			if (((CreateStmt *) parsetree)->relation->relpersistence != RELPERSISTENCE_TEMP)
				adopt_table(collected_relid());
			break;
		case T_CreateTableAsStmt:
			if (((CreateTableAsStmt *) parsetree)->objtype == OBJECT_MATVIEW)
				follow_view(collected_relid(), false);
			else if (((CreateTableAsStmt *) parsetree)->into->rel->relpersistence != RELPERSISTENCE_TEMP)
				adopt_table(collected_relid());
			break;
		case T_ViewStmt:
			follow_view(collected_relid(), ((ViewStmt *) parsetree)->replace);
			break;
		case T_CreateTrigStmt:
			follow_trigger((CreateTrigStmt *) parsetree, query);
			break;
		case T_AlterObjectSchemaStmt:
			{
				AlterObjectSchemaStmt *st = (AlterObjectSchemaStmt *) parsetree;

				/* the relation is in its new schema now */
				if (st->relation)
					refuse_relation_change(makeRangeVar(st->newschema, st->relation->relname, -1),
										   "move to another schema table");
				break;
			}
		default:
			break;
	}
	SPI_finish();
	PG_RETURN_NULL();
}

/* ---- at the start of ALTER TABLE and DROP TABLE: what cannot be undone at their end ---- */

/* the planned partitioned table at the top of relid's tree, and its copies; NIL if none */
static List *
partition_root_copies(Oid relid, Oid *root)
{
	List	   *up;

	*root = InvalidOid;
	if (!OidIsValid(relid))
		return NIL;
	if (!get_rel_relispartition(relid))
	{
		*root = relid;
		return get_rel_relkind(relid) == RELKIND_PARTITIONED_TABLE ? copies_of(relid) : NIL;
	}
	up = get_partition_ancestors(relid);
	if (up == NIL)
		return NIL;
	*root = llast_oid(up);
	return copies_of(*root);
}

static void
refuse_partition_change(Oid root, List *copies, const char *what, const char *hint)
{
	TenantCopy *c = linitial(copies);

	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_IN_USE),
			 errmsg("cannot %s while tenant \"%s\" has a copy of %s", what, c->tenant,
					cm_qualified_relname(root)),
			 errdetail("The tenant's state is %s.", c->state),
			 errhint("%s", hint)));
}

/*
 * DROP TABLE of a partition: recorded for sql_drop, which drops the
 * copies' partition of that name; refused when a copy is one table
 * (keep_partitions off), which would keep the dropped rows.
 */
static void
guard_drop(DropStmt *stmt)
{
	ListCell   *lc;
	MemoryContext old;

	if (stmt->removeType != OBJECT_TABLE)
		return;
	foreach(lc, stmt->objects)
	{
		RangeVar   *rv = makeRangeVarFromNameList((List *) lfirst(lc));
		Oid			part = RangeVarGetRelid(rv, NoLock, true);
		Oid			root;
		List	   *copies;
		ListCell   *cl;
		DroppingPartition *d;

		if (!OidIsValid(part) || !get_rel_relispartition(part))
			continue;
		copies = partition_root_copies(part, &root);
		if (copies == NIL)
			continue;
		foreach(cl, copies)
		{
			TenantCopy *c = lfirst(cl);

			if (get_rel_relkind(c->target) != RELKIND_PARTITIONED_TABLE)
				refuse_partition_change(root, list_make1(c), psprintf("drop partition %s", cm_qualified_relname(part)),
										"The tenant's copy is one table (clinic_migrate.keep_partitions was off): it would keep the partition's rows. "
										"Delete the tenant's rows of the partition first, or drop it after the tenant's move is finalized or rolled back.");
		}
		old = MemoryContextSwitchTo(TopTransactionContext);
		if (dropping_lxid != MyProc->lxid)
		{
			dropping_partitions = NIL;
			dropping_lxid = MyProc->lxid;
		}
		d = palloc(sizeof(DroppingPartition));
		d->part = part;
		d->root = root;
		d->name = pstrdup(get_rel_name(part));
		dropping_partitions = lappend(dropping_partitions, d);
		MemoryContextSwitchTo(old);
	}
}

/*
 * DETACH PARTITION (also CONCURRENTLY, whose first transaction commits
 * before any end-of-statement check, and FINALIZE), and RENAME or SET
 * SCHEMA of a partition: refused while a tenant has a copy of its tree.
 */
static void
guard_alter(Node *parsetree)
{
	Oid			root;
	List	   *copies;

	if (IsA(parsetree, AlterTableStmt))
	{
		AlterTableStmt *stmt = (AlterTableStmt *) parsetree;
		ListCell   *lc;

		if (stmt->relation == NULL)
			return;
		foreach(lc, stmt->cmds)
		{
			AlterTableCmd *cmd = lfirst(lc);

			if (cmd->subtype != AT_DetachPartition && cmd->subtype != AT_DetachPartitionFinalize)
				continue;
			copies = partition_root_copies(RangeVarGetRelid(stmt->relation, NoLock, true), &root);
			if (copies != NIL)
				refuse_partition_change(root, copies, "detach a partition",
										"Its rows would leave the shared table with no trigger fired: the tenant's copy would keep them. "
										"Drop the partition instead (its rows go from the copies too), or detach it after the tenant's move is finalized or rolled back.");
		}
		return;
	}
	if (IsA(parsetree, RenameStmt) || IsA(parsetree, AlterObjectSchemaStmt))
	{
		/* a view of a source schema that moving tenants have a copy of: found by name */
		RangeVar   *rv = IsA(parsetree, RenameStmt) ? ((RenameStmt *) parsetree)->relation
			: ((AlterObjectSchemaStmt *) parsetree)->relation;
		Oid			relid = rv ? RangeVarGetRelid(rv, NoLock, true) : InvalidOid;
		char		kind = OidIsValid(relid) ? get_rel_relkind(relid) : '\0';

		if ((kind == RELKIND_VIEW || kind == RELKIND_MATVIEW) &&
			(!IsA(parsetree, RenameStmt) || ((RenameStmt *) parsetree)->renameType != OBJECT_COLUMN))
		{
			Oid			types[2] = {NAMEOID, NAMEOID};
			Datum		values[2];

			values[0] = DirectFunctionCall1(namein, CStringGetDatum(get_namespace_name(get_rel_namespace(relid))));
			values[1] = DirectFunctionCall1(namein, CStringGetDatum(get_rel_name(relid)));
			cm_state_exec("SELECT t.tenant_id, t.state FROM clinic_migrate.tenants t "
						  "JOIN pg_catalog.pg_class c ON c.relnamespace OPERATOR(pg_catalog.=) t.schema_oid "
						  "  AND c.relname OPERATOR(pg_catalog.=) $2 AND c.relkind IN ('v', 'm') "
						  "WHERE t.source_schema OPERATOR(pg_catalog.=) $1 "
						  "AND t.state OPERATOR(pg_catalog.<>) 'finalized' ORDER BY t.tenant_id LIMIT 1",
						  2, types, values, NULL, 0);
			if (SPI_processed > 0)
				ereport(ERROR,
						(errcode(ERRCODE_OBJECT_IN_USE),
						 errmsg("cannot rename or move view %s while tenant \"%s\" has a copy of it",
								cm_qualified_relname(relid),
								SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1)),
						 errdetail("The tenant's state is %s; the tenants' views are found by name.",
								   SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2)),
						 errhint("Do it after the tenant's move is finalized or rolled back, or drop the view and create it again.")));
			return;
		}
	}
	if (IsA(parsetree, RenameStmt))
	{
		RenameStmt *stmt = (RenameStmt *) parsetree;

		if (stmt->relation == NULL || stmt->renameType != OBJECT_TABLE)
			return;
		{
			Oid			relid = RangeVarGetRelid(stmt->relation, NoLock, true);

			if (!OidIsValid(relid) || !get_rel_relispartition(relid))
				return;
			copies = partition_root_copies(relid, &root);
		}
		if (copies != NIL)
			refuse_partition_change(root, copies, "rename a partition",
									"The copies' partitions are found by name. Rename it after the tenant's move is finalized or rolled back.");
		return;
	}
	if (IsA(parsetree, AlterObjectSchemaStmt))
	{
		AlterObjectSchemaStmt *stmt = (AlterObjectSchemaStmt *) parsetree;
		Oid			relid;

		if (stmt->relation == NULL || stmt->objectType != OBJECT_TABLE)
			return;
		relid = RangeVarGetRelid(stmt->relation, NoLock, true);
		if (!OidIsValid(relid) || !get_rel_relispartition(relid))
			return;
		copies = partition_root_copies(relid, &root);
		if (copies != NIL)
			refuse_partition_change(root, copies, "move a partition to another schema",
									"The copies' partitions are found by name. Move it after the tenant's move is finalized or rolled back.");
	}
}

/* a tenant whose capture runs on relid's rows: copying, copied, failed or cut over */
static TenantCopy *
capturing_tenant(Oid relid)
{
	Oid			root;
	List	   *copies = partition_root_copies(relid, &root);
	ListCell   *lc;
	Oid			type = OIDOID;
	Datum		value;

	/* a plain shared table: its own copies */
	if (copies == NIL && OidIsValid(relid) && !get_rel_relispartition(relid))
		copies = copies_of(relid);
	foreach(lc, copies)
	{
		TenantCopy *c = lfirst(lc);

		if (strcmp(c->state, "copying") == 0 || strcmp(c->state, "copied") == 0 ||
			strcmp(c->state, "failed") == 0 || strcmp(c->state, "cut_over") == 0)
			return c;
	}
	/* a cut-over tenant's own table (its reverse capture) */
	value = ObjectIdGetDatum(OidIsValid(root) ? root : relid);
	cm_state_exec("SELECT t.tenant_id, t.state, t.tenant_column FROM clinic_migrate.tenant_tables tt "
				  "JOIN clinic_migrate.tenants t ON t.tenant_id OPERATOR(pg_catalog.=) tt.tenant_id "
				  "WHERE tt.target_table OPERATOR(pg_catalog.=) $1 AND t.state OPERATOR(pg_catalog.=) 'cut_over'",
				  1, &type, &value, NULL, 0);
	if (SPI_processed > 0)
	{
		TenantCopy *c = palloc0(sizeof(TenantCopy));

		c->tenant = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
		c->state = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
		c->tenant_column = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3);
		c->target = value;
		return c;
	}
	return NULL;
}

static void
refuse_capture_change(Oid relid, const char *what)
{
	TenantCopy *c;

	if (!OidIsValid(relid) || (c = capturing_tenant(relid)) == NULL)
		return;
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_IN_USE),
			 errmsg("cannot %s of %s while tenant \"%s\" is being migrated", what,
					cm_qualified_relname(relid), c->tenant),
			 errdetail("The tenant's state is %s; its changes are captured by clinic_migrate's triggers on the table.", c->state),
			 errhint("Finish the tenant's move (finalize_tenant) or roll it back (rollback_tenant) first.")));
}

/* the names of clinic_migrate's triggers (a look-alike of another name may go) */
static bool
capture_trigger_name(const char *name)
{
	return name && (strcmp(name, "clinic_migrate_capture_insert") == 0 ||
					strcmp(name, "clinic_migrate_capture_update") == 0 ||
					strcmp(name, "clinic_migrate_capture_tenant") == 0 ||
					strcmp(name, "clinic_migrate_capture_delete") == 0 ||
					strcmp(name, "clinic_migrate_capture_reverse") == 0 ||
					strcmp(name, "clinic_migrate_guard_truncate") == 0);
}

/* DROP TRIGGER of ours, ALTER TABLE ... ENABLE/DISABLE TRIGGER of ours (or ALL, USER), ALTER TRIGGER ... RENAME */
static void
guard_capture_triggers(Node *parsetree)
{
	if (IsA(parsetree, RenameStmt) && ((RenameStmt *) parsetree)->renameType == OBJECT_TRIGGER)
	{
		RenameStmt *rs = (RenameStmt *) parsetree;

		if (rs->relation && capture_trigger_name(rs->subname))
			refuse_capture_change(RangeVarGetRelid(rs->relation, NoLock, true),
								  psprintf("rename trigger %s", quote_identifier(rs->subname)));
		return;
	}
	if (IsA(parsetree, DropStmt) && ((DropStmt *) parsetree)->removeType == OBJECT_TRIGGER)
	{
		ListCell   *lc;

		foreach(lc, ((DropStmt *) parsetree)->objects)
		{
			List	   *names = (List *) lfirst(lc);
			char	   *trig = strVal(llast(names));

			if (list_length(names) < 2 || !capture_trigger_name(trig))
				continue;
			refuse_capture_change(RangeVarGetRelid(makeRangeVarFromNameList(list_truncate(list_copy(names), list_length(names) - 1)),
												   NoLock, true),
								  psprintf("drop trigger %s", quote_identifier(trig)));
		}
		return;
	}
	if (IsA(parsetree, AlterTableStmt) && ((AlterTableStmt *) parsetree)->relation)
	{
		AlterTableStmt *stmt = (AlterTableStmt *) parsetree;
		ListCell   *lc;

		foreach(lc, stmt->cmds)
		{
			AlterTableCmd *cmd = lfirst(lc);
			bool		all = false;
			bool		named = false;

			switch (cmd->subtype)
			{
				case AT_EnableTrig:
				case AT_EnableAlwaysTrig:
				case AT_EnableReplicaTrig:
				case AT_DisableTrig:
					named = capture_trigger_name(cmd->name);
					break;
				case AT_EnableTrigAll:
				case AT_DisableTrigAll:
				case AT_EnableTrigUser:
				case AT_DisableTrigUser:
					all = true;
					break;
				default:
					break;
			}
			if (named || all)
				refuse_capture_change(RangeVarGetRelid(stmt->relation, NoLock, true),
									  named ? psprintf("change trigger %s", quote_identifier(cmd->name))
									  : "enable or disable every trigger");
		}
	}
}

PG_FUNCTION_INFO_V1(cm_guard_ddl);
Datum
cm_guard_ddl(PG_FUNCTION_ARGS)
{
	EventTriggerData *trig;
	Node	   *parsetree;

	if (!CALLED_AS_EVENT_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("clinic_migrate.guard_ddl() must be an event trigger")));
	trig = (EventTriggerData *) fcinfo->context;
	parsetree = trig->parsetree;
	/*
	 * DROP EXTENSION clinic_migrate (or of its schema, or DROP OWNED by its
	 * owner): the replication slot of capture from the WAL goes too, a slot
	 * left behind keeps WAL for ever.  Not now: a slot's drop is not undone
	 * by a rollback, and this runs before the command checks its caller.
	 * At the commit, if the extension is gone by then (capture_wal_drop_at_commit).
	 */
	if (parsetree &&
		((IsA(parsetree, DropStmt) &&
		  (((DropStmt *) parsetree)->removeType == OBJECT_EXTENSION ||
		   ((DropStmt *) parsetree)->removeType == OBJECT_SCHEMA)) ||
		 IsA(parsetree, DropOwnedStmt)))
	{
		Oid			ext = get_extension_oid("clinic_migrate", true);

		capture_wal_drop_at_commit();

		/*
		 * The capture logs, which are not the extension's members (made as
		 * tenants move): left in its schema, a new CREATE EXTENSION would
		 * count their entries.  Dropped with the extension, by its owner.
		 */
		if (IsA(parsetree, DropStmt) && ((DropStmt *) parsetree)->removeType == OBJECT_EXTENSION &&
			OidIsValid(ext) && pg_extension_ownercheck(ext, GetUserId()))
		{
			ListCell   *lc;

			foreach(lc, ((DropStmt *) parsetree)->objects)
				if (strcmp(strVal(lfirst(lc)), "clinic_migrate") == 0)
				{
					SPI_connect();
					cm_state_exec("SELECT pg_catalog.format('DROP TABLE %I.%I', n.nspname, c.relname) "
								  "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
								  "WHERE n.nspname = 'clinic_migrate' AND c.relname LIKE 'log\\_%' AND c.relkind = 'r' "
								  "AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass "
								  "AND d.objid = c.oid AND d.deptype = 'e')", 0, NULL, NULL, NULL, 0);
					{
						SPITupleTable *tt = SPI_tuptable;
						uint64		n = SPI_processed;

						for (uint64 i = 0; i < n; i++)
							cm_state_exec(SPI_getvalue(tt->vals[i], tt->tupdesc, 1), 0, NULL, NULL, NULL, 0);
					}

					/*
					 * The registry guard (0.9) depends on the extension, but
					 * a restored database lost that tie (pg_dump does not
					 * carry it): without this, DROP EXTENSION would ask for
					 * CASCADE.
					 */
					cm_state_exec("SELECT pg_catalog.format('DROP TRIGGER IF EXISTS %I ON %s', t.tgname, "
								  "t.tgrelid::pg_catalog.regclass) "
								  "FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid "
								  "WHERE p.proname = 'registry_guard' "
								  "AND p.pronamespace = 'clinic_migrate'::pg_catalog.regnamespace "
								  "AND t.tgname IN ('" "clinic_migrate_registry_guard" "', "
								  "'" "clinic_migrate_registry_guard_truncate" "') "
								  "AND t.tgparentid = 0",
								  0, NULL, NULL, NULL, 0);
					{
						SPITupleTable *tt = SPI_tuptable;
						uint64		n = SPI_processed;

						for (uint64 i = 0; i < n; i++)
							cm_state_exec(SPI_getvalue(tt->vals[i], tt->tupdesc, 1), 0, NULL, NULL, NULL, 0);
					}
					SPI_finish();
				}
		}
		PG_RETURN_NULL();
	}
	if (following || own_statements_only || creating_extension || parsetree == NULL || !cm_follow_ddl_on || restoring())
		PG_RETURN_NULL();
	/* nothing to look at: no SPI, no catalog read */
	if (!IsA(parsetree, DropStmt) && !IsA(parsetree, AlterTableStmt) &&
		!IsA(parsetree, RenameStmt) && !IsA(parsetree, AlterObjectSchemaStmt))
		PG_RETURN_NULL();
	if (IsA(parsetree, DropStmt) && ((DropStmt *) parsetree)->removeType != OBJECT_TABLE &&
		((DropStmt *) parsetree)->removeType != OBJECT_TRIGGER)
		PG_RETURN_NULL();
	if (IsA(parsetree, AlterTableStmt))
	{
		ListCell   *lc;
		bool		look = false;

		foreach(lc, ((AlterTableStmt *) parsetree)->cmds)
		{
			AlterTableCmd *cmd = lfirst(lc);

			look |= cmd->subtype == AT_DetachPartition || cmd->subtype == AT_DetachPartitionFinalize ||
				cmd->subtype == AT_EnableTrig || cmd->subtype == AT_EnableAlwaysTrig ||
				cmd->subtype == AT_EnableReplicaTrig || cmd->subtype == AT_DisableTrig ||
				cmd->subtype == AT_EnableTrigAll || cmd->subtype == AT_DisableTrigAll ||
				cmd->subtype == AT_EnableTrigUser || cmd->subtype == AT_DisableTrigUser;
		}
		if (!look)
			PG_RETURN_NULL();
	}
	SPI_connect();
	if ((IsA(parsetree, DropStmt) && ((DropStmt *) parsetree)->removeType == OBJECT_TRIGGER) ||
		(IsA(parsetree, RenameStmt) && ((RenameStmt *) parsetree)->renameType == OBJECT_TRIGGER))
		guard_capture_triggers(parsetree);
	else if (IsA(parsetree, DropStmt))
		guard_drop((DropStmt *) parsetree);
	else
	{
		guard_capture_triggers(parsetree);
		guard_alter(parsetree);
	}
	SPI_finish();
	PG_RETURN_NULL();
}

/* ---- fan_out: one schema change in every finalized tenant's schema ---- */

/* first column of the first row as text, or NULL (SPI connected) */
static char *
state_value(const char *sql, int nargs, Oid *types, Datum *values)
{
	cm_state_exec(sql, nargs, types, values, NULL, 1);
	if (SPI_processed == 0)
		return NULL;
	return SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
}

void
cm_schema_change_tenant(CmWorkerShared *sh, int64 *run_id)
{
	Oid			types[2] = {INT8OID, TEXTOID};
	Datum		values[2];
	char	   *version;
	char	   *ddl;
	char	   *schema;
	char	   *state;
	char	   *missing;
	int			nest;

	cm_begin_txn();
	values[0] = Int64GetDatum(sh->job_id);
	version = state_value("SELECT schema_version FROM clinic_migrate.job_queue WHERE job_id = $1",
						  1, types, values);
	if (version == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("job " INT64_FORMAT " names no schema version", sh->job_id),
				 errhint("Queue schema changes with clinic_migrate.fan_out(version, ddl).")));
	types[0] = TEXTOID;
	values[0] = CStringGetTextDatum(sh->tenant);
	values[1] = CStringGetTextDatum(version);
	ddl = state_value("SELECT ddl FROM clinic_migrate.schema_changes WHERE version = $2",
					  2, types, values);
	cm_state_exec("SELECT schema_name, state FROM clinic_migrate.tenants WHERE tenant_id = $1",
				  1, types, values, NULL, 1);
	schema = SPI_processed ? SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1) : NULL;
	state = SPI_processed ? SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2) : NULL;
	strlcpy(sh->schema, schema ? schema : "", NAMEDATALEN);
	if (ddl == NULL || state == NULL || strcmp(state, "finalized") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("schema version \"%s\" cannot be applied to tenant \"%s\"", version, sh->tenant),
				 errdetail(ddl == NULL ? "The version is not in clinic_migrate.schema_changes." :
						   state == NULL ? "The tenant is not in clinic_migrate.tenants." :
						   "The tenant is not finalized (its state is %s): its copy follows the shared tables.",
						   state),
				 errhint("fan_out queues finalized tenants only.")));
	/* done already: nothing to do (a job retried after its commit) */
	if (state_value("SELECT 'yes' FROM clinic_migrate.tenant_schema_versions "
					"WHERE tenant_id = $1 AND version = $2", 2, types, values) != NULL)
	{
		cm_end_txn();
		return;
	}
	/* in order: every earlier version first */
	missing = state_value("SELECT c.version FROM clinic_migrate.schema_changes c "
						  "WHERE c.position < (SELECT position FROM clinic_migrate.schema_changes WHERE version = $2) "
						  "AND NOT EXISTS (SELECT FROM clinic_migrate.tenant_schema_versions v "
						  "                WHERE v.tenant_id = $1 AND v.version = c.version) "
						  "ORDER BY c.position LIMIT 1", 2, types, values);
	if (missing)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("tenant \"%s\" lacks schema version \"%s\", which comes before \"%s\"",
						sh->tenant, missing, version),
				 errdetail("Versions are applied in the order fan_out received them."),
				 errhint("Apply \"%s\" first: SELECT clinic_migrate.fan_out('%s', NULL) queues the tenants that lack it.",
						 missing, missing)));

	/* the change, in the tenant's schema only, as the role that queued it */
	pgstat_report_activity(STATE_RUNNING, psprintf("clinic_migrate: schema version %s in %s", version, schema));
	nest = NewGUCNestLevel();
	(void) set_config_option("search_path", quote_identifier(schema), PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	cm_ddl_with_retry(ddl);
	AtEOXact_GUC(true, nest);
	CommandCounterIncrement();
	types[0] = TEXTOID;
	{
		Oid			itypes[3] = {TEXTOID, TEXTOID, INT8OID};
		Datum		ivalues[3] = {values[0], values[1], Int64GetDatum(sh->job_id)};

		cm_state_exec("INSERT INTO clinic_migrate.tenant_schema_versions (tenant_id, version, job_id) "
					  "VALUES ($1, $2, $3)", 3, itypes, ivalues, NULL, 0);
	}
	cm_end_txn();
	(void) run_id;
}
