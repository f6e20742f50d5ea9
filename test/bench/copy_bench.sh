#!/usr/bin/env bash
# test/bench/copy_bench.sh: "copy and validation speed". Copies one big tenant out of the
# shared clinic tables with clinic_migrate and with the two usual hand-made ways, and
# validates the copy with clinic_migrate and with EXCEPT ALL; prints medians and ratios.
#
#   sudo bash test/bench/copy_bench.sh [--rows 1000000] [--repeat 3] [--port 5498]
#                                      [--tenants 10] [--other-rows 50000] [--baselines-only]
#
#   --rows N          patients rows of tenant 'big' (plus as many appointments, 3/8 N notes,
#                     N/8 staff; the generator's big_tenant_rows) (default 1000000)
#   --repeat N        measurements of each step; the median is reported (default 3)
#   --port P          port of the throwaway cluster (default 5498; socket only)
#   --tenants N, --other-rows N   the ordinary tenants around 'big' (default 10, 50000)
#   --baselines-only  skip (c) and (e) and validate (d) against b_ins: works without
#                     clinic_migrate (use with CM_PRELOAD=0 CM_SKIP_BUILD=1)
#
# Steps, each timed on its own (after a CHECKPOINT, outside the timing):
#   (a) INSERT ... SELECT: CREATE TABLE b_ins.X (LIKE public.X INCLUDING ALL), then one
#       INSERT INTO b_ins.X SELECT <columns> ... WHERE tenant_id = 'big' per table, parents
#       first, in one transaction (the seeds' method); timed server-side
#   (b) COPY pipe: same tables in b_copy, then per table
#       psql -c "COPY (SELECT ...) TO STDOUT" | psql -c "COPY b_copy.X FROM STDIN";
#       timed by the client (includes the psql start-ups)
#   (c) SELECT * FROM clinic_migrate.migrate_tenant('big'); timed server-side;
#       rollback_tenant('big') afterwards, not timed
#   (d) EXCEPT ALL both ways per table between public (tenant 'big') and tenant_big
#   (e) SELECT * FROM clinic_migrate.validate_migration('big')
# Repeats alternate the order: a b c d e, then c b a e d, ...
set -euo pipefail

invoked_as=("$0" "$@")
envs=""   # the settings from the environment, before lib.sh fills in defaults
for e in CM_PRELOAD CM_SKIP_BUILD; do
  [ -n "${!e:-}" ] && envs+="$e=${!e} "
done
# shellcheck source=test/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
cd "$CM_ROOT"

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}

rows=1000000
repeat=3
port=5498
tenants=10
other_rows=50000
baselines_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --rows) rows="${2:?--rows needs a value}"; shift 2 ;;
    --repeat) repeat="${2:?--repeat needs a value}"; shift 2 ;;
    --port) port="${2:?--port needs a value}"; shift 2 ;;
    --tenants) tenants="${2:?--tenants needs a value}"; shift 2 ;;
    --other-rows) other_rows="${2:?--other-rows needs a value}"; shift 2 ;;
    --baselines-only) baselines_only=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; cm_die "unknown argument: $1" ;;
  esac
done
for v in rows repeat port tenants other_rows; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || cm_die "${v/_/-} must be a number: ${!v}"
done
[ "$rows" -gt 0 ] && [ "$repeat" -gt 0 ] || cm_die "--rows and --repeat must be > 0"
cm_require_root

say() { printf '%s\n' "$*"; }

# The exact command line, relative to the repository root when the script is inside it.
script_rel="test/bench/copy_bench.sh"
cmd="bash $script_rel"
[ -n "${SUDO_USER:-}" ] && cmd="sudo $cmd"
for a in "${invoked_as[@]:1}"; do cmd+=" $(printf '%q' "$a")"; done
say "command: ${envs}${cmd}"
say "date:    $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
say "commit:  $(git -C "$CM_ROOT" rev-parse --short HEAD 2>/dev/null || echo none)$(
  [ -n "$(git -C "$CM_ROOT" status --porcelain 2>/dev/null)" ] && echo ' (with uncommitted changes)')"
say "machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GB", $2 / 1048576 }' /proc/meminfo) RAM, $("$CM_PG_BIN/postgres" --version)"

cm_install_build

dir="$(mktemp -d "${TMPDIR:-/tmp}/clinic_bench.XXXXXX")"
cm_install_trap dir
cm_start_cluster "$dir" "$port"
db=bench
q() { cm_psql "$dir" "$port" "$db" "$@"; }
secs_since() { awk -v a="$1" -v b="$(cm_now)" 'BEGIN { printf "%.3f", b - a }'; }

cm_psql "$dir" "$port" postgres -q -c "CREATE DATABASE $db"
[ "$baselines_only" = 1 ] || q -q -c 'CREATE EXTENSION clinic_migrate'
cm_log "== generating: tenants=$tenants rows=$other_rows big_tenant_rows=$rows"
t0="$(cm_now)"
q -v tenants="$tenants" -v rows="$other_rows" -v big_tenant_rows="$rows" -f - <test/gen/clinic.sql >&2
gen_s="$(secs_since "$t0")"

tables=(staff patients appointments appointment_notes)   # parents first
declare -A cols src rows_big
for t in "${tables[@]}"; do
  # Columns one can insert: not dropped, not generated; in the table's order.
  cols[$t]="$(q -At -c "SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum)
    FROM pg_attribute WHERE attrelid = '$t'::regclass AND attnum > 0
      AND NOT attisdropped AND attgenerated = ''")"
  if [ "$t" = appointment_notes ]; then
    ncols="$(sed -E 's/(^|, )/\1n./g' <<<"${cols[$t]}")"
    src[$t]="SELECT $ncols FROM public.appointment_notes n JOIN public.appointments a ON a.id = n.appointment_id WHERE a.tenant_id = 'big'"
  else
    src[$t]="SELECT ${cols[$t]} FROM public.$t WHERE tenant_id = 'big'"
  fi
  rows_big[$t]="$(q -At -c "SELECT count(*) FROM (${src[$t]}) s")"
done
total_big=0
for t in "${tables[@]}"; do total_big=$((total_big + rows_big[$t])); done
say "data:    generated in $gen_s s; tenant 'big': $(for t in "${tables[@]}"; do printf '%s %s, ' "$t" "${rows_big[$t]}"; done)total $total_big rows; $(q -At -c "SELECT pg_size_pretty(sum(pg_total_relation_size(c.oid))) FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r'") in public"
say "settings: $(q -At -c "SELECT string_agg(name || '=' || current_setting(name), ' ' ORDER BY name) FROM pg_settings WHERE name IN ('shared_buffers', 'work_mem', 'maintenance_work_mem', 'max_wal_size', 'synchronous_commit', 'fsync')")"
target_schema=b_ins
[ "$baselines_only" = 1 ] || target_schema="$(q -At -c "SELECT clinic_migrate.schema_name_for('big')")"
say ""

create_sql() {   # create_sql SCHEMA: the schema and its LIKE-cloned tables
  printf 'CREATE SCHEMA %s;\n' "$1"
  for t in "${tables[@]}"; do
    printf 'CREATE TABLE %s.%s (LIKE public.%s INCLUDING ALL);\n' "$1" "$t" "$t"
  done
}

checkpoint() { q -q -c 'CHECKPOINT'; }

step_a() {   # INSERT ... SELECT, one transaction, server-side timing
  checkpoint
  local sql
  sql="SET client_min_messages = warning;
SELECT clock_timestamp() AS cm_t0 \\gset
BEGIN;
$(create_sql b_ins)"
  for t in "${tables[@]}"; do
    sql+="
INSERT INTO b_ins.$t (${cols[$t]}) OVERRIDING SYSTEM VALUE ${src[$t]};"
  done
  sql+="
COMMIT;
SELECT round(extract(epoch FROM clock_timestamp() - :'cm_t0'::timestamptz)::numeric, 3) AS cm_s \\gset
\\echo :cm_s"
  q -q -At -f - <<<"$sql" | tail -n 1
}

step_b() {   # COPY TO STDOUT | COPY FROM STDIN per table, client-side timing
  checkpoint
  local t0 t
  t0="$(cm_now)"
  create_sql b_copy | q -q -f -
  for t in "${tables[@]}"; do
    q -q -c "COPY (${src[$t]}) TO STDOUT" | q -q -c "COPY b_copy.$t (${cols[$t]}) FROM STDIN"
  done
  secs_since "$t0"
}

step_c() {   # clinic_migrate.migrate_tenant('big'), server-side timing
  checkpoint
  local out
  out="$(q -q -At -f - <<'SQL'
SET client_min_messages = warning;
SELECT clock_timestamp() AS cm_t0 \gset
SELECT * FROM clinic_migrate.migrate_tenant('big') \gset cm_
SELECT concat_ws(' ', round(extract(epoch FROM clock_timestamp() - :'cm_t0'::timestamptz)::numeric, 3),
                 :'cm_rows_copied');
SQL
  )"
  read -r c_secs c_rows <<<"$out"
  [ "$c_rows" = "$total_big" ] ||
    say "  warning: migrate_tenant('big') reported $c_rows rows copied, tenant 'big' has $total_big"
  printf '%s\n' "$c_secs"
}

step_d() {   # EXCEPT ALL both ways per table against the target schema
  checkpoint
  local sql t tcols out
  sql="SET client_min_messages = warning;
SELECT clock_timestamp() AS cm_t0 \\gset
SELECT 0 AS cm_diff \\gset"
  for t in "${tables[@]}"; do
    # Compare the columns both sides have (the source's insertable ones).
    tcols="$(q -At -c "SELECT string_agg(quote_ident(s.attname), ', ' ORDER BY s.attnum)
      FROM pg_attribute s JOIN pg_attribute d
        ON d.attrelid = '$target_schema.$t'::regclass AND d.attname = s.attname AND NOT d.attisdropped
      WHERE s.attrelid = 'public.$t'::regclass AND s.attnum > 0 AND NOT s.attisdropped
        AND s.attgenerated = ''")"
    local srcq
    if [ "$t" = appointment_notes ]; then
      srcq="SELECT $(sed -E 's/(^|, )/\1n./g' <<<"$tcols") FROM public.appointment_notes n JOIN public.appointments a ON a.id = n.appointment_id WHERE a.tenant_id = 'big'"
    else
      srcq="SELECT $tcols FROM public.$t WHERE tenant_id = 'big'"
    fi
    sql+="
SELECT :cm_diff + count(*) AS cm_diff FROM (($srcq) EXCEPT ALL (SELECT $tcols FROM $target_schema.$t)) a \\gset
SELECT :cm_diff + count(*) AS cm_diff FROM ((SELECT $tcols FROM $target_schema.$t) EXCEPT ALL ($srcq)) a \\gset"
  done
  sql+="
SELECT concat_ws(' ', round(extract(epoch FROM clock_timestamp() - :'cm_t0'::timestamptz)::numeric, 3), :cm_diff);"
  out="$(q -q -At -f - <<<"$sql")"
  read -r d_secs d_diff <<<"$out"
  [ "$d_diff" = 0 ] || say "  warning: EXCEPT ALL found $d_diff rows that differ between public and $target_schema"
  printf '%s\n' "$d_secs"
}

step_e() {   # clinic_migrate.validate_migration('big'), server-side timing
  checkpoint
  local out
  out="$(q -q -At -f - <<'SQL'
SET client_min_messages = warning;
SELECT clock_timestamp() AS cm_t0 \gset
SELECT count(*) AS cm_tables, count(*) FILTER (WHERE match) AS cm_matched
FROM clinic_migrate.validate_migration('big') \gset
SELECT concat_ws(' ', round(extract(epoch FROM clock_timestamp() - :'cm_t0'::timestamptz)::numeric, 3),
                 :cm_tables, :cm_matched);
SQL
  )"
  read -r e_secs e_tables e_matched <<<"$out"
  [ "$e_tables" = "$e_matched" ] && [ "$e_tables" -gt 0 ] ||
    say "  warning: validate_migration('big'): $e_matched of $e_tables tables match"
  printf '%s\n' "$e_secs"
}

cleanup_repeat() {
  [ "$baselines_only" = 1 ] ||
    q -q -At -c 'SET client_min_messages = warning' \
      -c "SELECT clinic_migrate.rollback_tenant('big')" >/dev/null
  q -q -c 'SET client_min_messages = warning' \
    -c 'DROP SCHEMA IF EXISTS b_ins CASCADE' -c 'DROP SCHEMA IF EXISTS b_copy CASCADE'
}

declare -A times
names=(a b c d e)
declare -A label=(
  [a]="(a) INSERT ... SELECT (LIKE tables, 1 transaction)"
  [b]="(b) COPY ... TO STDOUT | COPY ... FROM STDIN"
  [c]="(c) clinic_migrate.migrate_tenant('big')"
  [d]="(d) EXCEPT ALL, both directions, every table"
  [e]="(e) clinic_migrate.validate_migration('big')"
)
for ((r = 1; r <= repeat; r++)); do
  if ((r % 2 == 1)); then order=(a b c d e); else order=(c b a e d); fi
  for s in "${order[@]}"; do
    if [ "$baselines_only" = 1 ] && { [ "$s" = c ] || [ "$s" = e ]; }; then continue; fi
    secs="$("step_$s")"
    # step_* print warnings first, the seconds last.
    sed '$d' <<<"$secs" | sed '/^$/d'
    secs="$(tail -n 1 <<<"$secs")"
    times[$s]+="$secs "
    say "  repeat $r/$repeat  $(printf '%-50s %9.3f s' "${label[$s]}" "$secs")"
  done
  cleanup_repeat
done

median() {   # median of the numbers in $1
  tr ' ' '\n' <<<"$1" | sed '/^$/d' | sort -g |
    awk '{ v[NR] = $1 } END { if (NR == 0) print ""; else if (NR % 2) print v[(NR + 1) / 2];
                              else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
declare -A med
say ""
say "results: tenant 'big', $total_big rows in ${#tables[@]} tables; seconds, median of $repeat"
printf '  %-50s %9s   %s\n' "step" "median" "runs"
for s in "${names[@]}"; do
  [ -n "${times[$s]:-}" ] || continue
  med[$s]="$(median "${times[$s]}")"
  printf '  %-50s %9.3f   %s\n' "${label[$s]}" "${med[$s]}" "${times[$s]% }"
done
ratio() {   # ratio BASELINE CLINIC: baseline / clinic
  awk -v b="$1" -v c="$2" 'BEGIN { if (c > 0) printf "%.2f", b / c; else print "n/a" }'
}
rate() { awk -v n="$total_big" -v s="$1" 'BEGIN { if (s > 0) printf "%.0f", n / s; else print "n/a" }'; }
say ""
if [ "$baselines_only" = 1 ]; then
  say "ratios: none (--baselines-only)"
  say "  INSERT ... SELECT: $(rate "${med[a]}") rows/s; COPY pipe: $(rate "${med[b]}") rows/s"
else
  say "ratios (baseline time / clinic_migrate time; > 1 means clinic_migrate is faster):"
  printf '  %-45s %6s\n' "migrate_tenant vs INSERT ... SELECT" "$(ratio "${med[a]}" "${med[c]}")"
  printf '  %-45s %6s\n' "migrate_tenant vs COPY pipe" "$(ratio "${med[b]}" "${med[c]}")"
  printf '  %-45s %6s\n' "validate_migration vs EXCEPT ALL" "$(ratio "${med[d]}" "${med[e]}")"
  say "  rows/s: migrate_tenant $(rate "${med[c]}"), INSERT ... SELECT $(rate "${med[a]}"), COPY pipe $(rate "${med[b]}")"
fi
