#!/usr/bin/env bash
# test/bench/queue_bench.sh: how fast the queue drains, with one worker and with two,
# and what the queue costs per tenant for small tenants. Not part of the tests.
#
#   sudo bash test/bench/queue_bench.sh [--tenants 50] [--rows 500000] [--small 20] [--repeat 3] [--port 5495]
#
# Data: test/gen/clinic.sql with --tenants tenants and --rows rows (Zipf-like sizes).
# The cluster runs the scheduler for database bench (clinic_migrate.databases).
# Before each measurement every tenant is rolled back and the job table emptied; a
# CHECKPOINT follows. Times are the server's: the first enqueued_at to the last
# finished_at of the jobs, or clock_timestamp() around the direct calls.
#
# (1) Drain: enqueue_pending(--tenants) with clinic_migrate.max_workers = 1, and with 2
#     (alternating order, --repeat times each). Prints the medians and the speed-up
#     time(1 worker) / time(2 workers).
# (2) Per-tenant cost for small tenants: the --small smallest tenants, migrated
#     (a) directly: the queue paused, SELECT migrate_tenant(t) for each in turn in one
#         session (each copy still runs in a dynamic background worker);
#     (b) as jobs: enqueue(those tenants) with max_workers = 1;
#     (c) migrate_tenant(t) for each in turn while the scheduler runs: each call goes
#         through the queue as a job and waits for it.
#     Prints the medians per tenant, and what (b) and (c) add per tenant to (a).
set -euo pipefail

invoked_as=("$0" "$@")
# shellcheck source=test/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
cd "$CM_ROOT"

tenants=50
rows=500000
small=20
repeat=3
port=5495
while [ $# -gt 0 ]; do
  case "$1" in
    --tenants) tenants="${2:?}"; shift 2 ;;
    --rows) rows="${2:?}"; shift 2 ;;
    --small) small="${2:?}"; shift 2 ;;
    --repeat) repeat="${2:?}"; shift 2 ;;
    --port) port="${2:?}"; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) cm_die "unknown argument: $1" ;;
  esac
done
for v in tenants rows small repeat port; do
  [[ "${!v}" =~ ^[0-9]+$ ]] && [ "${!v}" -gt 0 ] || cm_die "--$v must be a positive number"
done
[ "$small" -le "$tenants" ] || cm_die "--small must not exceed --tenants"
cm_require_root
say() { printf '%s\n' "$*"; }
cmd="bash test/bench/queue_bench.sh"
for a in "${invoked_as[@]:1}"; do cmd+=" $(printf '%q' "$a")"; done
say "command: $cmd"
say "date:    $(date -u '+%Y-%m-%d %H:%M:%S UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo none)"
say "machine: $(nproc) cores, $("$CM_PG_BIN/postgres" --version)"

cm_install_build
dir="$(mktemp -d "${TMPDIR:-/tmp}/clinic_queuebench.XXXXXX")"
cm_install_trap dir
cm_start_cluster "$dir" "$port"
db=bench
q() { cm_psql "$dir" "$port" "$db" "$@"; }
cm_psql "$dir" "$port" postgres -q -c "CREATE DATABASE $db"
cm_psql "$dir" "$port" postgres -q -c "ALTER SYSTEM SET clinic_migrate.databases = '$db'" \
  -c "ALTER SYSTEM SET clinic_migrate.scheduler_interval = '1s'"
cm_as_postgres "$CM_PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 120 restart >/dev/null
q -q -c 'CREATE EXTENSION clinic_migrate'
cm_log "== generating: tenants=$tenants rows=$rows"
q -v tenants="$tenants" -v rows="$rows" -f - <test/gen/clinic.sql >&2
for ((i = 0; i < 100; i++)); do
  [ "$(q -At -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'clinic_migrate scheduler'")" = 1 ] && break
  sleep 0.1
done
say "settings: batch_size $(q -At -c 'SHOW clinic_migrate.batch_size'), batch_delay $(q -At -c 'SHOW clinic_migrate.batch_delay'), scheduler_interval $(q -At -c 'SHOW clinic_migrate.scheduler_interval'), $tenants tenants, $(q -At -c 'SELECT count(*) FROM public.patients') patients"
small_list="$(q -At -c "SELECT string_agg(quote_literal(tenant_id), ',' ORDER BY n, tenant_id) FROM (
  SELECT tenant_id, count(*) AS n FROM public.patients GROUP BY tenant_id ORDER BY n, tenant_id LIMIT $small) s")"
say "small tenants: the $small with the fewest patients ($(q -At -c "SELECT min(n) || ' to ' || max(n) FROM (
  SELECT count(*) AS n FROM public.patients WHERE tenant_id IN ($small_list) GROUP BY tenant_id) s") patients each)"

reset() {  # every tenant back in the shared tables, no job, the queue paused
  q -q -c "SELECT clinic_migrate.pause_queue()" >/dev/null
  q -At -c "SELECT tenant_id FROM clinic_migrate.tenants" | while read -r t; do
    q -q -c "SELECT clinic_migrate.rollback_tenant(\$\$$t\$\$)" >/dev/null
  done
  q -q -c "DELETE FROM clinic_migrate.job_queue" -c CHECKPOINT
}
workers() {
  q -q -c "ALTER SYSTEM SET clinic_migrate.max_workers = $1" -c "SELECT pg_reload_conf()" >/dev/null
}
# drain: seconds from the first enqueue to the last job's end, once all are done
drain() {
  q -q -c "SELECT clinic_migrate.resume_queue()" >/dev/null
  while :; do
    case "$(q -At -c "SELECT count(*) FILTER (WHERE state NOT IN ('done', 'failed', 'cancelled'))
                             || ' ' || count(*) FILTER (WHERE state <> 'done') FROM clinic_migrate.job_queue")" in
      "0 0") break ;;
      0\ *) q -c "SELECT job_id, tenant_id, state, error FROM clinic_migrate.jobs WHERE state <> 'done'" >&2
            cm_die "some jobs did not end done" ;;
    esac
    sleep 0.2
  done
  q -At -c "SELECT round(extract(epoch FROM max(finished_at) - min(enqueued_at))::numeric, 3)
            FROM clinic_migrate.job_queue"
}
run_all() {  # run_all W
  reset; workers "$1"
  q -q -c "SELECT count(*) FROM clinic_migrate.enqueue_pending($tenants)" >/dev/null
  drain
}
small_jobs() {
  reset; workers 1
  q -q -c "SELECT count(*) FROM clinic_migrate.enqueue(ARRAY[$small_list])" >/dev/null
  drain
}
small_direct() {  # $1 = paused: no queue; running: through the queue
  reset; workers 1
  [ "$1" = running ] && q -q -c "SELECT clinic_migrate.resume_queue()" >/dev/null
  q -At -c "SET clinic_migrate.progress_interval = 0" -c "CREATE TEMP TABLE t0 AS SELECT clock_timestamp() AS t" \
    -c "SELECT count(*) FROM unnest(ARRAY[$small_list]) t, LATERAL clinic_migrate.migrate_tenant(t)" \
    -c "SELECT round(extract(epoch FROM clock_timestamp() - t)::numeric, 3) FROM t0" | tail -n 1
  # through the queue, every call must have been a job
  if [ "$1" = running ]; then
    [ "$(q -At -c "SELECT count(*) FROM clinic_migrate.job_queue WHERE state = 'done'")" = "$small" ] ||
      cm_die "migrate_tenant did not go through the queue"
  else
    [ "$(q -At -c "SELECT count(*) FROM clinic_migrate.job_queue")" = 0 ] ||
      cm_die "migrate_tenant went through the paused queue"
  fi
}
check() {  # every tenant in the job table validates
  local bad
  bad="$(q -At -c "SELECT count(*) FROM clinic_migrate.tenants t, LATERAL clinic_migrate.validate_migration(t.tenant_id) v WHERE NOT v.match")"
  [ "$bad" = 0 ] || cm_die "$bad tables do not validate"
}

declare -A runs
for ((r = 1; r <= repeat; r++)); do
  if [ $((r % 2)) = 1 ]; then order="w1 w2 a b c"; else order="c b a w2 w1"; fi
  for step in $order; do
    case "$step" in
      w1) v="$(run_all 1)"; check; what="$tenants tenants, 1 worker" ;;
      w2) v="$(run_all 2)"; check; what="$tenants tenants, 2 workers" ;;
      a) v="$(small_direct paused)"; check; what="$small small tenants, direct migrate_tenant" ;;
      b) v="$(small_jobs)"; check; what="$small small tenants, enqueued, 1 worker" ;;
      c) v="$(small_direct running)"; check; what="$small small tenants, migrate_tenant via the queue" ;;
    esac
    runs[$step]+="$v "
    say "  repeat $r/$repeat ($step) $(printf '%-48s' "$what") $v s"
  done
done
reset
median() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
w1="$(median "${runs[w1]}")"; w2="$(median "${runs[w2]}")"
a="$(median "${runs[a]}")"; b="$(median "${runs[b]}")"; c="$(median "${runs[c]}")"
per() { awk -v x="$1" -v n="$small" 'BEGIN { printf "%.1f", 1000 * x / n }'; }
say ""
say "results: medians of $repeat runs"
say "  (1) $tenants tenants, 1 worker                 ${w1} s   (${runs[w1]% })"
say "      $tenants tenants, 2 workers                ${w2} s   (${runs[w2]% })"
say "      speed-up, 1 worker / 2 workers    $(awk -v x="$w1" -v y="$w2" 'BEGIN { printf "%.2f", x / y }')"
say "  (2) $small small tenants, per tenant:"
say "      (a) direct migrate_tenant, queue paused    $(per "$a") ms   (${runs[a]% }s for $small)"
say "      (b) enqueued, 1 worker                     $(per "$b") ms   (${runs[b]% }s)"
say "      (c) migrate_tenant through the queue       $(per "$c") ms   (${runs[c]% }s)"
say "      the queue adds per tenant: (b) - (a) $(awk -v x="$b" -v y="$a" -v n="$small" 'BEGIN { printf "%.1f", 1000 * (x - y) / n }') ms, (c) - (a) $(awk -v x="$c" -v y="$a" -v n="$small" 'BEGIN { printf "%.1f", 1000 * (x - y) / n }') ms"
say "      ratios: (a) / (b) $(awk -v x="$a" -v y="$b" 'BEGIN { printf "%.2f", x / y }'), (a) / (c) $(awk -v x="$a" -v y="$c" 'BEGIN { printf "%.2f", x / y }')"
