#!/usr/bin/env bash
# test/bench/cutover_bench.sh: how long the moving tenant's writers wait at cutover,
# whether other tenants notice, and how fast captured changes are replayed, all under
# pgbench load. Not part of the tests.
#
#   sudo bash test/bench/cutover_bench.sh [--seconds 20] [--repeat 3] [--clients 2] [--port 5496]
#
# Data: test/gen/clinic.sql, 10 tenants, 200,000 rows. The writers are routed as an
# application would be: each transaction calls clinic_migrate.set_tenant(tenant, true)
# and updates one random patient by unqualified name; 40001 is retried (--max-tries=0).
#
# (1) Cutover, --repeat times, alternating with a baseline run: two pgbench processes
#     at once for --seconds, --clients each, one writing t1 (the tenant that moves), one
#     t2 (another tenant); in the cutover run, SELECT clinic_migrate.cutover('t1') at
#     half time. From the per-transaction logs (pgbench -l): t1's maximum and 99th
#     percentile latency, t2's 99th percentile, in both runs; the pause recorded in
#     clinic_migrate.cutovers. t1 is rolled back after each cutover run, not timed.
# (2) Catch-up: t1 copied, the sync worker stopped; pgbench writes t1 for --seconds; from
#     half time on, clinic_migrate.sync_now('t1') replays in a loop while pgbench goes on.
#     Changes replayed per second (keys applied / time in sync_now), against the changes
#     pgbench made per second.
set -euo pipefail

invoked_as=("$0" "$@")
# shellcheck source=test/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
cd "$CM_ROOT"

seconds=20
repeat=3
clients=2
port=5496
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds="${2:?}"; shift 2 ;;
    --repeat) repeat="${2:?}"; shift 2 ;;
    --clients) clients="${2:?}"; shift 2 ;;
    --port) port="${2:?}"; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) cm_die "unknown argument: $1" ;;
  esac
done
for v in seconds repeat clients port; do
  [[ "${!v}" =~ ^[0-9]+$ ]] && [ "${!v}" -gt 0 ] || cm_die "--$v must be a positive number"
done
[ "$seconds" -ge 4 ] || cm_die "--seconds must be at least 4"
cm_require_root
say() { printf '%s\n' "$*"; }
cmd="bash test/bench/cutover_bench.sh"
for a in "${invoked_as[@]:1}"; do cmd+=" $(printf '%q' "$a")"; done
say "command: $cmd"
say "date:    $(date -u '+%Y-%m-%d %H:%M:%S UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo none)"
say "machine: $(nproc) cores, $("$CM_PG_BIN/postgres" --version); 2 x $clients pgbench clients, ${seconds}s per run"

cm_install_build
dir="$(mktemp -d "${TMPDIR:-/tmp}/clinic_cutbench.XXXXXX")"
cm_install_trap dir
cm_start_cluster "$dir" "$port"
db=bench
q() { cm_psql "$dir" "$port" "$db" "$@"; }
cm_psql "$dir" "$port" postgres -q -c "CREATE DATABASE $db"
q -q -c 'CREATE EXTENSION clinic_migrate'
cm_log "== generating: tenants=10 rows=200000"
q -v tenants=10 -v rows=200000 -f - <test/gen/clinic.sql >&2
q -q <<'SQL'
CREATE SCHEMA cm_bench;
CREATE TABLE cm_bench.ids AS
  SELECT tenant_id, row_number() OVER (PARTITION BY tenant_id ORDER BY id) AS rn, id
  FROM public.patients WHERE tenant_id IN ('t1', 't2');
CREATE UNIQUE INDEX ON cm_bench.ids (tenant_id, rn);
ANALYZE cm_bench.ids;
SQL
for t in t1 t2; do
  n="$(q -At -c "SELECT count(*) FROM cm_bench.ids WHERE tenant_id = '$t'")"
  cm_as_postgres tee "$dir/write_$t.sql" >/dev/null <<EOF
\set r random(1, $n)
BEGIN;
SELECT clinic_migrate.set_tenant('$t', true);
UPDATE patients SET balance = coalesce(balance, 0) + 1
WHERE id = (SELECT id FROM cm_bench.ids WHERE tenant_id = '$t' AND rn = :r);
END;
EOF
done

# pgbench writing tenant $1 for $seconds with a per-transaction log $dir/lat_$2.*
load() {
  cm_as_postgres "$CM_PG_BIN/pgbench" -h "$dir" -p "$port" -n -c "$clients" -j "$clients" \
    -T "$seconds" --max-tries=0 -l --log-prefix="$dir/lat_$2" -f "$dir/write_$1.sql" "$db" \
    >"$dir/out_$2" 2>&1
}
# p99 and max (ms) of the latencies (3rd field, microseconds) in the logs $dir/lat_$1.*
latency() {
  cat "$dir"/lat_"$1".* | awk '$3 ~ /^[0-9]+$/ { print $3 }' | sort -n |
    awk '{ a[NR] = $1 } END { if (NR == 0) { print "n/a n/a 0"; exit }
           i = int(NR * 0.99); if (i < 1) i = 1
           printf "%.1f %.1f %d\n", a[i] / 1000, a[NR] / 1000, NR }'
}
migrate_t1() {
  q -q -c "SET clinic_migrate.progress_interval = 0" \
    -c "SELECT * FROM clinic_migrate.migrate_tenant('t1')" >/dev/null
}

declare -A runs
for ((r = 1; r <= repeat; r++)); do
  if [ $((r % 2)) = 1 ]; then order="base cut"; else order="cut base"; fi
  for kind in $order; do
    migrate_t1
    q -q -c CHECKPOINT
    rm -f "$dir"/lat_*
    load t1 "t1" & p1=$!
    load t2 "t2" & p2=$!
    pause=""
    if [ "$kind" = cut ]; then
      sleep $((seconds / 2))
      q -At -c "SELECT attempts, pause_ms FROM clinic_migrate.cutover('t1')" >"$dir/cut.out"
    fi
    wait "$p1" "$p2"
    grep -q '^number of failed transactions: 0 ' "$dir/out_t1" ||
      { cat "$dir/out_t1" >&2; cm_die "pgbench on t1 had failed transactions"; }
    read -r t1p99 t1max t1n <<<"$(latency t1)"
    read -r t2p99 t2max t2n <<<"$(latency t2)"
    if [ "$kind" = cut ]; then
      IFS='|' read -r attempts pause <"$dir/cut.out"
      runs[pause]+="$pause "
      say "  repeat $r/$repeat cutover: pause $pause ms ($attempts attempt(s)); t1 p99 $t1p99 ms, max $t1max ms ($t1n xacts); t2 p99 $t2p99 ms, max $t2max ms ($t2n xacts)"
      q -q -c "SELECT clinic_migrate.rollback_tenant('t1')" >/dev/null
    else
      say "  repeat $r/$repeat baseline: t1 p99 $t1p99 ms, max $t1max ms ($t1n xacts); t2 p99 $t2p99 ms, max $t2max ms ($t2n xacts)"
    fi
    runs[${kind}_t1p99]+="$t1p99 "
    runs[${kind}_t1max]+="$t1max "
    runs[${kind}_t2p99]+="$t2p99 "
  done
done

median() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
ratio() { awk -v x="$1" -v y="$2" 'BEGIN { if (y > 0) printf "%.2f", x / y; else print "n/a" }'; }
say ""
say "cutover under load: medians of $repeat runs each"
say "  pause of t1's writes (clinic_migrate.cutovers)    $(median "${runs[pause]}") ms   (${runs[pause]% })"
say "  t1 (moving)  max latency   cutover $(median "${runs[cut_t1max]}") ms, baseline $(median "${runs[base_t1max]}") ms"
say "  t1 (moving)  p99 latency   cutover $(median "${runs[cut_t1p99]}") ms, baseline $(median "${runs[base_t1p99]}") ms"
say "  t2 (other)   p99 latency   cutover $(median "${runs[cut_t2p99]}") ms, baseline $(median "${runs[base_t2p99]}") ms"
say "  ratio t2 p99 cutover / baseline   $(ratio "$(median "${runs[cut_t2p99]}")" "$(median "${runs[base_t2p99]}")")"

# (2) catch-up: the sync worker stopped, a backlog, then sync_now in a loop under load
migrate_t1
q -q -c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'clinic_migrate sync'" >/dev/null
cm_as_postgres "$CM_PG_BIN/pgbench" -h "$dir" -p "$port" -n -c "$clients" -j "$clients" \
  -T "$seconds" -f "$dir/write_t1.sql" "$db" >"$dir/out_catchup" 2>&1 & pc=$!
sleep $((seconds / 2))
backlog="$(q -At -c "SELECT clinic_migrate.capture_lag('t1')")"
applied=0
spent=0
while kill -0 "$pc" 2>/dev/null; do
  out="$(q -At -c '\timing on' -c "SELECT clinic_migrate.sync_now('t1')")"
  n="$(grep -E '^[0-9]+$' <<<"$out")"
  ms="$(sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' <<<"$out")"
  applied=$((applied + n))
  spent="$(awk -v a="$spent" -v b="$ms" 'BEGIN { print a + b }')"
done
wait "$pc"
made="$(awk '/^tps = / { print $3 }' "$dir/out_catchup")"
say ""
say "catch-up under load (t1, sync worker stopped, sync_now in a loop from half time)"
say "  backlog when replay began     $backlog changes"
say "  replayed                      $applied changes in $(awk -v s="$spent" 'BEGIN { printf "%.2f", s / 1000 }') s in sync_now"
say "  replay rate                   $(awk -v n="$applied" -v s="$spent" 'BEGIN { if (s > 0) printf "%.0f", n / (s / 1000); else print "n/a" }') changes/s"
say "  pgbench made                  $made changes/s (one per transaction)"
