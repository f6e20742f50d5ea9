#!/usr/bin/env bash
# test/bench/rls_instr.sh: what the tenant row level security of enable_tenant_rls costs
# an application transaction, in CPU instructions. rls_bench.sh measures throughput,
# but on this 2-core machine an A/A pair of pgbench runs differs by 10% and more, which
# hides the 3% in question; this counts instead, as capture_instr.sh does: valgrind's
# callgrind counts the instructions of a single-user backend (postgres --single, the
# server stopped) running a fixed script of transactions as the application's role
# (SET ROLE app: not superuser, not owner), each transaction
#   read-heavy   BEGIN; set_tenant(t, true); 5 point SELECTs of accounts by
#                (tenant_id, id); 1 SELECT of an account's entries; COMMIT
#   write-heavy  BEGIN; set_tenant(t, true); 1 UPDATE of accounts by key;
#                1 INSERT into entries; COMMIT
# the same data and tables as rls_bench.sh (accounts with the tenant column leading its
# primary key; entries without one, its foreign key (account_tenant, account_id) to
# accounts). Instructions per transaction = (count for N+10 transactions - count for
# 10) / N, which cancels the backend's start and exit. States, in turn, on one database:
#   off          policies off (the baseline)
#   off (A/A)    the same again: the instrument's own error
#   enforce      enable_tenant_rls(ARRAY['app'])
#   permissive   enable_tenant_rls(ARRAY['app'], 'permissive'): nothing hidden, and
#                nothing to count (every row read is the session's tenant's)
# each as plain statements (planned every time: psql, pgbench's default) and as
# PREPAREd ones (planned once per backend, as drivers that prepare do). Prints
# instructions per transaction and the ratio to the baseline.
#
#   sudo bash test/bench/rls_instr.sh [--transactions 100] [--port 5493] [--generic]
# --generic: the prepared statements with plan_cache_mode = force_generic_plan
set -euo pipefail

invoked_as=("$0" "$@")
# shellcheck source=test/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
cd "$CM_ROOT"

ntx=100
port=5493
generic=0
tenants=50
per_tenant=4000
while [ $# -gt 0 ]; do
  case "$1" in
    --transactions) ntx="${2:?}"; shift 2 ;;
    --port) port="${2:?}"; shift 2 ;;
    --generic) generic=1; shift ;;
    -h | --help) sed -n '2,27p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) cm_die "unknown argument: $1" ;;
  esac
done
cm_require_root
say() { printf '%s\n' "$*"; }
cmd="bash test/bench/rls_instr.sh"
for a in "${invoked_as[@]:1}"; do cmd+=" $(printf '%q' "$a")"; done
say "command: $cmd"
say "date:    $(date -u '+%Y-%m-%d %H:%M:%S UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo none)"
say "machine: $("$CM_PG_BIN/postgres" --version); callgrind, $ntx transactions per measurement"

command -v valgrind >/dev/null || {
  cm_log "== installing valgrind"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends valgrind >/dev/null ||
    { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends valgrind >/dev/null; }
}
cm_install_build
dir="$(mktemp -d "${TMPDIR:-/tmp}/clinic_rlsinstr.XXXXXX")"
cm_install_trap dir
cm_start_cluster "$dir" "$port"
cm_as_postgres tee -a "$dir/data/postgresql.conf" >/dev/null <<<"autovacuum = off"
cm_as_postgres "$CM_PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/log" -w restart >/dev/null
db=bench
q() { cm_psql "$dir" "$port" "$db" "$@"; }
cm_psql "$dir" "$port" postgres -q -c "CREATE DATABASE $db"
cm_log "== loading: $tenants tenants, $((tenants * per_tenant)) accounts, 2 entries each"
q -q -v ON_ERROR_STOP=1 <<SQL
CREATE EXTENSION clinic_migrate;
CREATE ROLE app LOGIN;
CREATE TABLE public.tenants (tenant_id integer PRIMARY KEY, name text NOT NULL);
CREATE TABLE public.accounts (tenant_id integer NOT NULL REFERENCES public.tenants, id bigint NOT NULL,
                              balance integer NOT NULL, PRIMARY KEY (tenant_id, id));
CREATE TABLE public.entries (id bigserial PRIMARY KEY, account_tenant integer NOT NULL,
                             account_id bigint NOT NULL, amount integer NOT NULL,
                             FOREIGN KEY (account_tenant, account_id) REFERENCES public.accounts);
CREATE INDEX ON public.entries (account_tenant, account_id);
INSERT INTO public.tenants SELECT t, 'tenant ' || t FROM generate_series(1, $tenants) t;
INSERT INTO public.accounts SELECT t, i, 0 FROM generate_series(1, $tenants) t, generate_series(1, $per_tenant) i;
INSERT INTO public.entries (account_tenant, account_id, amount)
SELECT tenant_id, id, 1 FROM public.accounts, generate_series(1, 2);
GRANT SELECT, INSERT, UPDATE, DELETE ON public.tenants, public.accounts, public.entries TO app;
GRANT USAGE ON SEQUENCE public.entries_id_seq TO app;
VACUUM ANALYZE;
SQL

# the scripts: the same transactions for the short and the long run; "simple" plans
# every statement (psql's, pgbench's default protocol), "prepared" runs PREPAREd
# statements (as drivers that prepare do), planned once per backend
make_script() {  # make_script KIND PROTOCOL N FILE
  local kind="$1" proto="$2" n="$3" i t a k
  {
    echo "SET ROLE app;"
    if [ "$proto" = prepared ]; then
      [ "$generic" = 1 ] && echo "SET plan_cache_mode = force_generic_plan;"
      echo "PREPARE st(text) AS SELECT clinic_migrate.set_tenant(\$1, true);"
      echo "PREPARE acc(int, bigint) AS SELECT balance FROM public.accounts WHERE tenant_id = \$1 AND id = \$2;"
      echo "PREPARE ent(int, bigint) AS SELECT count(*), sum(amount) FROM public.entries WHERE account_tenant = \$1 AND account_id = \$2;"
      echo "PREPARE upd(int, bigint) AS UPDATE public.accounts SET balance = balance + 1 WHERE tenant_id = \$1 AND id = \$2;"
      echo "PREPARE ins(int, bigint) AS INSERT INTO public.entries (account_tenant, account_id, amount) VALUES (\$1, \$2, 1);"
    fi
    for ((i = 0; i < n; i++)); do
      t=$((1 + (i * 7) % tenants)); a=$((1 + (i * 131) % per_tenant))
      echo "BEGIN;"
      if [ "$proto" = prepared ]; then
        echo "EXECUTE st('$t');"
        if [ "$kind" = read ]; then
          for k in 0 1 2 3 4; do echo "EXECUTE acc($t, $(( 1 + (a + k * 97) % per_tenant )));"; done
          echo "EXECUTE ent($t, $a);"
        else
          echo "EXECUTE upd($t, $a);"
          echo "EXECUTE ins($t, $a);"
        fi
      else
        echo "SELECT clinic_migrate.set_tenant('$t', true);"
        if [ "$kind" = read ]; then
          for k in 0 1 2 3 4; do
            echo "SELECT balance FROM public.accounts WHERE tenant_id = $t AND id = $(( 1 + (a + k * 97) % per_tenant ));"
          done
          echo "SELECT count(*), sum(amount) FROM public.entries WHERE account_tenant = $t AND account_id = $a;"
        else
          echo "UPDATE public.accounts SET balance = balance + 1 WHERE tenant_id = $t AND id = $a;"
          echo "INSERT INTO public.entries (account_tenant, account_id, amount) VALUES ($t, $a, 1);"
        fi
      fi
      echo "COMMIT;"
    done
  } >"$4"
}
kinds="read write read_prepared write_prepared"
for kind in read write; do
  make_script $kind simple 10 "$dir/${kind}_10.sql"
  make_script $kind simple $((ntx + 10)) "$dir/${kind}_long.sql"
  make_script $kind prepared 10 "$dir/${kind}_prepared_10.sql"
  make_script $kind prepared $((ntx + 10)) "$dir/${kind}_prepared_long.sql"
done
chown postgres: "$dir"/*.sql

stop() { cm_as_postgres "$CM_PG_BIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null; }
start() { cm_as_postgres "$CM_PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/log" -w start >/dev/null; }

count() {  # count SCRIPT: instructions of one single-user backend running it
  local out="$dir/cg.out"
  rm -f "$out"
  cm_as_postgres valgrind --tool=callgrind --callgrind-out-file="$out" \
    "$CM_PG_BIN/postgres" --single -D "$dir/data" "$db" \
    <"$1" >"$dir/single.log" 2>&1 || { tail -n 20 "$dir/single.log" >&2; cm_die "postgres --single failed"; }
  grep -q 'ERROR' "$dir/single.log" && { grep -m3 'ERROR' "$dir/single.log" >&2; cm_die "a statement failed"; }
  sed -n 's/^summary: //p;s/^totals: //p' "$out" | head -n 1
}
per_tx() {  # per_tx KIND
  local short long
  short=$(count "$dir/${1}_10.sql")
  long=$(count "$dir/${1}_long.sql")
  echo $(( (long - short) / ntx ))
}

declare -A result
measure() {  # measure LABEL
  local kind
  q -q -c 'VACUUM public.accounts, public.entries'
  stop
  for kind in $kinds; do
    result["$1,$kind"]=$(per_tx $kind)
    cm_log "   $1 $kind: ${result["$1,$kind"]} instructions per transaction"
  done
  start
}

# a check first, not counted: with the policies on, tenant 1 sees its rows only
q -q -c "SELECT clinic_migrate.enable_tenant_rls(ARRAY['app'])" >/dev/null
seen=$(cm_as_postgres "$CM_PG_BIN/psql" -X -At -h "$dir" -p "$port" -U app -d "$db" -c \
  "BEGIN; SELECT clinic_migrate.set_tenant('1', true) IS NULL; SELECT count(*) FROM public.accounts; COMMIT;" | sed -n 3p)
[ "$seen" = "$per_tenant" ] || cm_die "with the policies on, tenant 1 sees $seen accounts, not $per_tenant"
q -q -c "SELECT clinic_migrate.disable_tenant_rls()" >/dev/null

cm_log "== measuring"
measure warmup   # the first writes to freshly loaded pages do more work: not counted
measure off
measure off_aa
q -q -c "SELECT clinic_migrate.enable_tenant_rls(ARRAY['app'])" >/dev/null
measure enforce
q -q -c "SELECT clinic_migrate.enable_tenant_rls(ARRAY['app'], 'permissive')" >/dev/null
measure permissive
q -q -c "SELECT clinic_migrate.disable_tenant_rls()" >/dev/null

row() {  # row LABEL TEXT
  local out k v
  out=$(printf '%-46s' "$2")
  for k in $kinds; do
    v="${result[$1,$k]}"
    out+=$(printf ' %-19s' "$(printf '%s (%s)' "$v" "$(echo "scale=3; $v / ${result[off,$k]}" | bc)")")
  done
  say "$out"
}
say ""
say "instructions per transaction (ratio to the first line); simple: every statement planned,"
say "prepared: PREPAREd statements"
printf '%-46s %-19s %-19s %-19s %s\n' "state" "read-heavy" "write-heavy" "read, prepared" "write, prepared"
row off "policies off (baseline)"
row off_aa "the same again (A/A: the instrument's error)"
row enforce "enforce"
row permissive "permissive (nothing to count)"
