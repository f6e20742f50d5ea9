#!/usr/bin/env bash
# test/bench/capture_instr.sh: what change capture costs a write, in CPU instructions.
# Throughput on this 2-core machine moves by more than the few percent in question (an
# A/A pair of pgbench runs differs by up to 15%), so this counts instead: valgrind's
# callgrind counts the instructions of a single-user backend (postgres --single, the
# server stopped) running a fixed script of single-row UPDATEs of patients, each in
# its own transaction. Instructions per UPDATE = (count for N+10 UPDATEs - count for 10)
# / N, which cancels the backend's start and exit. Each state of a move is measured in
# turn on one database, for a tenant that is not moving (t2) and for the moving tenant
# (t1) where it can write its shared rows (autovacuum off, the table vacuumed before
# each measurement, and one pass not counted first):
#   none       clinic_migrate preloaded, no extension created (the baseline)
#   none (A/A) the same again: the instrument's own error
#   created    CREATE EXTENSION, nothing migrated
#   capture    t1 copied and in sync (capture triggers on; replay is not counted: no
#              sync worker runs in a single-user backend)
#   rolled     t1 rolled back: nobody moves (the sync worker has taken the capture
#              triggers off; the script waits for that)
#   cut over   t1 migrated and cut over (its shared rows refuse writes: t2 only)
#   finalized  t1 finalized (t2 only; nobody moves: finalize took the triggers off)
# Prints instructions per UPDATE and the ratio to the baseline. Both capture methods
# (0.8), each on a cluster of its own, one after the other: trigger (wal_level =
# replica, the capture triggers) and wal (wal_level = logical, capture from the WAL:
# in "capture" the shared tables have only the tenant-change trigger and the TRUNCATE
# guard). The wal cluster's ratios are to its own baseline and, in brackets, to the
# trigger cluster's (wal_level = replica, no extension). Also the WAL bytes an UPDATE
# writes in each state (pg_current_wal_insert_lsn around the same UPDATEs, run by psql
# on the started server, one transaction each, after a first pass not counted: the
# first change of a page after a checkpoint writes the whole page).
#
#   sudo bash test/bench/capture_instr.sh [--updates 200] [--port 5495] [--method both|trigger|wal]
set -euo pipefail

invoked_as=("$0" "$@")
# shellcheck source=test/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
cd "$CM_ROOT"

updates=200
port=5495
methods="trigger wal"
while [ $# -gt 0 ]; do
  case "$1" in
    --updates) updates="${2:?}"; shift 2 ;;
    --port) port="${2:?}"; shift 2 ;;
    --method)
      case "${2:?}" in both) methods="trigger wal" ;; trigger | wal) methods="$2" ;; *) cm_die "--method: both, trigger or wal" ;; esac
      shift 2 ;;
    -h | --help) sed -n '2,31p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) cm_die "unknown argument: $1" ;;
  esac
done
cm_require_root
say() { printf '%s\n' "$*"; }
cmd="bash test/bench/capture_instr.sh"
for a in "${invoked_as[@]:1}"; do cmd+=" $(printf '%q' "$a")"; done
say "command: $cmd"
say "date:    $(date -u '+%Y-%m-%d %H:%M:%S UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo none)"
say "machine: $("$CM_PG_BIN/postgres" --version); callgrind, $updates UPDATEs per measurement"

command -v valgrind >/dev/null || {
  cm_log "== installing valgrind"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends valgrind >/dev/null ||
    { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends valgrind >/dev/null; }
}
cm_install_build
dir=""
cm_install_trap dir
declare -A result
run_method() {  # run_method trigger|wal: a cluster of its own, every state measured
method="$1"
dir="$(mktemp -d "${TMPDIR:-/tmp}/clinic_instr.XXXXXX")"
cm_start_cluster "$dir" "$port"
# no autovacuum: the pages each measurement starts from are the same every time
# (measure() vacuums the table itself before it stops the server)
cm_as_postgres tee -a "$dir/data/postgresql.conf" >/dev/null <<<"autovacuum = off"
if [ "$method" = wal ]; then
  cm_as_postgres tee -a "$dir/data/postgresql.conf" >/dev/null <<<"wal_level = logical
max_replication_slots = 4
clinic_migrate.capture_method = wal"
else
  cm_as_postgres tee -a "$dir/data/postgresql.conf" >/dev/null <<<"clinic_migrate.capture_method = trigger"
fi
cm_as_postgres "$CM_PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/log" -w restart >/dev/null
db=bench
q() { cm_psql "$dir" "$port" "$db" "$@"; }
cm_psql "$dir" "$port" postgres -q -c "CREATE DATABASE $db"
cm_log "== generating: tenants=8 rows=16000"
q -v tenants=8 -v rows=16000 -f - <test/gen/clinic.sql >&2

# the scripts: the same rows for the short and the long run of a tenant
for t in t1 t2; do
  q -At -c "SELECT id FROM public.patients WHERE tenant_id = '$t' ORDER BY id LIMIT $((updates + 10))" \
    >"$dir/ids_$t"
  [ "$(wc -l <"$dir/ids_$t")" -eq $((updates + 10)) ] || cm_die "tenant $t has too few patients"
  for n in 10 $((updates + 10)); do
    head -n "$n" "$dir/ids_$t" |
      sed "s/.*/UPDATE public.patients SET notes = 'instr' WHERE id = &;/" >"$dir/run_${t}_$n.sql"
  done
done
chown postgres: "$dir"/*.sql

stop() { cm_as_postgres "$CM_PG_BIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null; }
start() { cm_as_postgres "$CM_PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/log" -w start >/dev/null; }

# instructions of one single-user backend running a script
count() {  # count SCRIPT
  local out="$dir/cg.out"
  rm -f "$out"
  cm_as_postgres valgrind --tool=callgrind --callgrind-out-file="$out" \
    "$CM_PG_BIN/postgres" --single -D "$dir/data" -c search_path=public "$db" \
    <"$1" >"$dir/single.log" 2>&1 || { tail -n 20 "$dir/single.log" >&2; cm_die "postgres --single failed"; }
  grep -q 'ERROR' "$dir/single.log" && { grep -m3 'ERROR' "$dir/single.log" >&2; cm_die "a statement failed"; }
  sed -n 's/^summary: //p;s/^totals: //p' "$out" | head -n 1
}

# instructions per UPDATE of a tenant in the current state (server stopped)
per_update() {  # per_update TENANT
  local short long
  short=$(count "$dir/run_${1}_10.sql")
  long=$(count "$dir/run_${1}_$((updates + 10)).sql")
  echo $(( (long - short) / updates ))
}

# WAL bytes per UPDATE of a tenant (server started): the same UPDATEs, by psql
wal_per_update() {  # wal_per_update TENANT
  local a b
  # once not counted: the first change of a page after a checkpoint writes the whole page
  q -q -f "$dir/run_${1}_$((updates + 10)).sql" >/dev/null
  a=$(q -At -c 'SELECT pg_current_wal_insert_lsn()')
  q -q -f "$dir/run_${1}_$((updates + 10)).sql" >/dev/null
  b=$(q -At -c "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '$a')::bigint")
  echo $(( b / (updates + 10) ))
}

measure() {  # measure LABEL TENANTS...
  local label="$1" t
  shift
  for t in "$@"; do
    result["$method,$label,$t,wal"]=$(wal_per_update "$t")
  done
  q -q -c 'VACUUM public.patients'
  stop
  for t in "$@"; do
    result["$method,$label,$t"]=$(per_update "$t")
    cm_log "   $method $label $t: ${result["$method,$label,$t"]} instructions, ${result["$method,$label,$t,wal"]} WAL bytes per UPDATE"
  done
  start
}

cm_log "== measuring"
# a first pass, not counted: the first writes to freshly loaded pages do more work
measure warmup t2 t1
measure none t2 t1
measure none_aa t2 t1
q -q -c 'CREATE EXTENSION clinic_migrate'
measure created t2 t1
q -q -c "SELECT schema_name FROM clinic_migrate.migrate_tenant('t1')" -c "SELECT clinic_migrate.sync_now('t1')" >/dev/null
measure capture t2 t1
q -q -c "SELECT clinic_migrate.rollback_tenant('t1')" >/dev/null
# nobody moves: the database's sync worker takes the capture triggers off when it
# goes idle (a rollback in the caller's session leaves that to it); wait for it
for _ in $(seq 1 600); do
  [ "$(q -At -c "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'public.patients'::regclass
                 AND tgname LIKE 'clinic\_migrate\_%'")" = 0 ] && break
  sleep 0.1
done
say "after the rollback: $(q -At -c "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'clinic\_migrate\_%'") capture triggers left"
measure rolled t2 t1
q -q -c "SELECT schema_name FROM clinic_migrate.migrate_tenant('t1')" -c "SELECT clinic_migrate.sync_now('t1')" \
  -c "SELECT schema_name FROM clinic_migrate.cutover('t1')" >/dev/null
measure cutover t2
q -q -c "SELECT schema_name FROM clinic_migrate.finalize_tenant('t1', true)" >/dev/null
say "after the finalize: $(q -At -c "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'clinic\_migrate\_%'") capture triggers left"
measure finalized t2
say "$method: slots left: $(q -At -c "SELECT count(*) FROM pg_replication_slots")"
cm_stop_cluster "$dir"
dir=""
}
for m in $methods; do
  run_method "$m"
done

row() {  # row METHOD LABEL TEXT
  local m="$1" label="$2" t c2 c1 base cell
  cell() {  # cell TENANT
    local v="${result[$m,$label,$1]:-}" w="${result[$m,$label,$1,wal]:-}" b ref=""
    [ -n "$v" ] || { echo "-"; return; }
    b="${result[$m,none,$1]}"
    if [ "$m" = wal ] && [ -n "${result[trigger,none,$1]:-}" ]; then
      ref=$(printf ' [%s]' "$(echo "scale=3; $v / ${result[trigger,none,$1]}" | bc)")
    fi
    printf '%s (%s)%s, %s B' "$v" "$(echo "scale=3; $v / $b" | bc)" "$ref" "$w"
  }
  printf '%-58s %-34s %s\n' "$3" "$(cell t2)" "$(cell t1)"
}
say ""
say "instructions per single-row UPDATE (ratio to the method's baseline; [to wal_level = replica, no extension]), WAL bytes per UPDATE:"
for m in $methods; do
  say ""
  say "capture_method = $m$([ "$m" = wal ] && echo ", wal_level = logical" || echo ", wal_level = replica")"
  printf '%-58s %-34s %s\n' "state" "t2 (not moving)" "t1 (the moving tenant)"
  row "$m" none "no extension created (baseline)"
  row "$m" none_aa "the same again (A/A: the instrument's error)"
  row "$m" created "extension created, nothing migrated"
  row "$m" capture "t1 copied and in sync (capture on; replay not counted)"
  row "$m" rolled "t1 rolled back: nobody moves"
  row "$m" cutover "t1 cut over"
  row "$m" finalized "t1 finalized"
done
