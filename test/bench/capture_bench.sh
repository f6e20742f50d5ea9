#!/usr/bin/env bash
# test/bench/capture_bench.sh: what change capture costs the application's writers.
# pgbench single-row UPDATEs of patients, 4 clients, in one run and alternating order:
#   (a) no capture triggers on the shared tables at all (before any migration);
#   (b) capture installed, writes of a tenant that is not moving (t2 while t1 syncs);
#   (c) capture installed, writes of the moving tenant itself (t1, copied and in sync);
#   (d) for reference, no capture but a PL/pgSQL AFTER ROW trigger that logs (op, key)
#       of every row into a log table, the usual hand-made capture;
#   (e) as (c) with the sync worker stopped: what the capture trigger alone costs the
#       moving tenant's writers, without the replay of their changes competing for
#       the same cores (the replay catches up when the sync worker starts again).
# Prints median TPS of each and the ratios to (a).
# --method wal (0.8): the cluster runs with wal_level = logical and capture_method =
# wal, so (b), (c) and (e) capture from the WAL (the shared tables carry only the
# tenant-change trigger and the TRUNCATE guard; (e) stops the sync worker, which
# also reads the slot); (a) is the same cluster with no capture.
#
#   sudo bash test/bench/capture_bench.sh [--seconds 15] [--repeat 3] [--port 5497] [--method trigger|wal]
set -euo pipefail

invoked_as=("$0" "$@")
# shellcheck source=test/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
cd "$CM_ROOT"

seconds=15
repeat=3
port=5497
clients=4
method=trigger
while [ $# -gt 0 ]; do
  case "$1" in
    --method) method="${2:?}"; [ "$method" = trigger ] || [ "$method" = wal ] || cm_die "--method: trigger or wal"; shift 2 ;;
    --seconds) seconds="${2:?}"; shift 2 ;;
    --repeat) repeat="${2:?}"; shift 2 ;;
    --port) port="${2:?}"; shift 2 ;;
    --clients) clients="${2:?}"; shift 2 ;;
    -h | --help) sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) cm_die "unknown argument: $1" ;;
  esac
done
cm_require_root
say() { printf '%s\n' "$*"; }
cmd="bash test/bench/capture_bench.sh"
for a in "${invoked_as[@]:1}"; do cmd+=" $(printf '%q' "$a")"; done
say "command: $cmd"
say "date:    $(date -u '+%Y-%m-%d %H:%M:%S UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo none)"
say "machine: $(nproc) cores, $("$CM_PG_BIN/postgres" --version); pgbench $clients clients, ${seconds}s per measurement"

cm_install_build
dir="$(mktemp -d "${TMPDIR:-/tmp}/clinic_capbench.XXXXXX")"
cm_install_trap dir
cm_start_cluster "$dir" "$port"
if [ "$method" = wal ]; then
  cm_as_postgres tee -a "$dir/data/postgresql.conf" >/dev/null <<<"wal_level = logical
max_replication_slots = 4
clinic_migrate.capture_method = wal"
else
  cm_as_postgres tee -a "$dir/data/postgresql.conf" >/dev/null <<<"clinic_migrate.capture_method = trigger"
fi
cm_as_postgres "$CM_PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/log" -w restart >/dev/null
say "capture_method = $method"
db=bench
q() { cm_psql "$dir" "$port" "$db" "$@"; }
cm_psql "$dir" "$port" postgres -q -c "CREATE DATABASE $db"
q -q -c 'CREATE EXTENSION clinic_migrate'
cm_log "== generating: tenants=10 rows=200000"
q -v tenants=10 -v rows=200000 -f - <test/gen/clinic.sql >&2
# the ids each tenant's writers pick from (outside public: not migrated)
q -q <<'SQL'
CREATE SCHEMA cm_bench;
CREATE TABLE cm_bench.ids AS
  SELECT tenant_id, row_number() OVER (PARTITION BY tenant_id ORDER BY id) AS rn, id
  FROM public.patients WHERE tenant_id IN ('t1', 't2');
CREATE UNIQUE INDEX ON cm_bench.ids (tenant_id, rn);
ANALYZE cm_bench.ids;
CREATE TABLE cm_bench.changes (id bigserial PRIMARY KEY, op text NOT NULL, pk bigint NOT NULL);
CREATE FUNCTION cm_bench.log_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO cm_bench.changes (op, pk)
    VALUES (TG_OP, CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END);
    RETURN NULL;
END $$;
SQL
for t in t1 t2; do
  n="$(q -At -c "SELECT count(*) FROM cm_bench.ids WHERE tenant_id = '$t'")"
  cm_as_postgres tee "$dir/update_$t.sql" >/dev/null <<EOF
\set r random(1, $n)
UPDATE public.patients SET balance = coalesce(balance, 0) + 1
WHERE id = (SELECT id FROM cm_bench.ids WHERE tenant_id = '$t' AND rn = :r);
EOF
done

tps() {  # tps SCRIPT: median-free single measurement
  cm_as_postgres "$CM_PG_BIN/pgbench" -h "$dir" -p "$port" -n -c "$clients" -j 2 \
    -T "$seconds" -f "$dir/$1" "$db" 2>/dev/null | awk '/^tps = / { print $3 }'
}
no_capture() {  # drop the capture triggers (and the tenant), as before any migration
  q -q -c "SELECT clinic_migrate.rollback_tenant('t1')" >/dev/null
  q -At -c "SELECT format('DROP TRIGGER %I ON %s', tgname, tgrelid::regclass)
            FROM pg_trigger WHERE tgname LIKE 'clinic\_migrate\_%' OR tgname = 'bench_plpgsql_log'" |
    while read -r stmt; do q -q -c "$stmt"; done
  q -q -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE NOT active" >/dev/null
}
plpgsql_log() {  # no capture; a PL/pgSQL trigger logging (op, id) of every row
  no_capture
  q -q -c "CREATE TRIGGER bench_plpgsql_log AFTER INSERT OR UPDATE OR DELETE ON public.patients
           FOR EACH ROW EXECUTE FUNCTION cm_bench.log_change()"
}
stop_sync() {  # the sync worker gone: changes are captured, not replayed
  q -q -c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
           WHERE backend_type = 'clinic_migrate sync'" >/dev/null
}
with_capture() {  # t1 copied and kept in sync
  q -q -c "SET client_min_messages = warning" -c "DROP TRIGGER IF EXISTS bench_plpgsql_log ON public.patients"
  q -q -c "SET clinic_migrate.progress_interval = 0" \
    -c "SELECT * FROM clinic_migrate.migrate_tenant('t1')" >/dev/null
}

declare -A runs
for ((r = 1; r <= repeat; r++)); do
  if [ $((r % 2)) = 1 ]; then order="a b c e d"; else order="d e c b a"; fi
  for step in $order; do
    case "$step" in
      a) no_capture; q -q -c CHECKPOINT; v="$(tps update_t2.sql)" ;;
      b) with_capture; q -q -c CHECKPOINT; v="$(tps update_t2.sql)" ;;
      c) with_capture; q -q -c CHECKPOINT; v="$(tps update_t1.sql)" ;;
      d) plpgsql_log; q -q -c CHECKPOINT; v="$(tps update_t2.sql)" ;;
      e) with_capture; stop_sync; q -q -c CHECKPOINT; v="$(tps update_t1.sql)"
         lag="$(q -At -c "SELECT clinic_migrate.capture_lag('t1')")"
         q -q -c "SELECT clinic_migrate.start_sync()" >/dev/null ;;
    esac
    runs[$step]+="$v "
    say "  repeat $r/$repeat ($step) $(printf '%-52s' "$(case $step in
      a) echo 'no capture triggers' ;; b) echo 'capture on, tenant not moving (t2)' ;;
      c) echo 'capture on, the moving tenant (t1, in sync)' ;;
      d) echo 'PL/pgSQL logging trigger, no capture' ;;
      e) echo 'capture on, moving tenant, replay stopped' ;; esac)") $v tps"
  done
done
median() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
a="$(median "${runs[a]}")"; b="$(median "${runs[b]}")"; c="$(median "${runs[c]}")"
d="$(median "${runs[d]}")"; e="$(median "${runs[e]}")"
say ""
say "results: median tps of $repeat runs"
say "  (a) no capture triggers                        $a   (${runs[a]% })"
say "  (b) capture on, tenant not moving              $b   (${runs[b]% })"
say "  (c) capture on, moving tenant                  $c   (${runs[c]% })"
say "  (d) PL/pgSQL logging trigger (reference)       $d   (${runs[d]% })"
say "  (e) capture on, moving tenant, replay stopped  $e   (${runs[e]% })"
say "ratios:"
say "  not moving / no triggers   $(awk -v x="$b" -v y="$a" 'BEGIN { printf "%.3f", x / y }')"
say "  moving / no triggers       $(awk -v x="$c" -v y="$a" 'BEGIN { printf "%.3f", x / y }')"
say "  PL/pgSQL / no triggers     $(awk -v x="$d" -v y="$a" 'BEGIN { printf "%.3f", x / y }')"
say "  moving, replay stopped / no triggers   $(awk -v x="$e" -v y="$a" 'BEGIN { printf "%.3f", x / y }')"
say "changes captured and not yet replayed after the last (e): $lag"
