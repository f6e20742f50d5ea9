#!/usr/bin/env bash
# test/check.sh: the test command of clinic_migrate (README, "Contributing"; CI runs it
# through .ci/run). Installs what the build needs, builds and installs the extension,
# then runs the layering check of the source tree (test/layering.sh), the pg_regress
# suite (sql/*.sql against expected/*.out, REGRESS in the Makefile), the isolation specs (test/specs/*.spec against test/expected/*.out,
# ISOLATION) and the TAP tests (test/t/*.pl), each against temporary servers it starts
# and stops itself. initdb refuses to run as root, so the tests run as the postgres
# user in a scratch copy of the working tree, which is removed on exit.
#
#   sudo bash test/check.sh                                everything
#   sudo bash test/check.sh --regress-only                 pg_regress and isolation only
#   sudo bash test/check.sh --tap-only                     every TAP test only
#   sudo bash test/check.sh --tap test/t/001_worker_copy.pl   one TAP file (repeatable)
#
# Failures print regression.diffs and the TAP logs. The last line is the summary,
# "N passed, M failed", counting the layering check, pg_regress and isolation tests and
# TAP test files; the exit status is non-zero when anything failed or could not run. CLINIC_KEEP_TMP=1 keeps the
# scratch copy for a post-mortem (its path is printed).
set -euo pipefail
exec </dev/null

PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() {
  sed -n '/^#   sudo/s/^#   //p' "${BASH_SOURCE[0]}"
}

run_regress=1
run_tap=1
tap_files=()
while [ $# -gt 0 ]; do
  case "$1" in
    --regress-only) run_tap=0 ;;
    --tap-only) run_regress=0 ;;
    --tap|--tap=*)
      if [ "$1" = --tap ]; then
        [ $# -ge 2 ] || { echo "check.sh: --tap needs a file, e.g. --tap test/t/001_worker_copy.pl" >&2; exit 2; }
        f=$2; shift
      else
        f=${1#--tap=}
      fi
      # accept a path relative to the repository, to the current directory, or absolute
      if [ -f "$repo/$f" ]; then
        :
      elif [ -f "$f" ]; then
        f=$(realpath --relative-to="$repo" "$f")
      else
        echo "check.sh: no such TAP test: $f" >&2; exit 2
      fi
      case "$f" in ../*|/*) echo "check.sh: $f is outside the repository" >&2; exit 2 ;; esac
      tap_files+=("$f"); run_regress=0 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "check.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
if [ $run_regress -eq 0 ] && [ $run_tap -eq 0 ]; then
  echo "check.sh: --regress-only excludes --tap-only and --tap" >&2; exit 2
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "check.sh: run as root (it installs packages and the extension): sudo bash test/check.sh" >&2
  exit 2
fi

started=$(date +%s)
cd "$repo"

echo "== dependencies"
bash test/install-deps.sh

# What the Makefile plans to run: the REGRESS list, and the TAP files (PROVE_TESTS).
make_var() {
  # shellcheck disable=SC2016  # $($*) is make's, not the shell's
  printf 'cm-print-%%:\n\t@echo $($*)\n' |
    make -s --no-print-directory -f Makefile -f - "cm-print-$1" PG_CONFIG="$PG_CONFIG"
}
regress_tests=()
if [ $run_regress -eq 1 ]; then
  read -r -a regress_tests <<<"$(make_var REGRESS) $(make_var ISOLATION)"
  # the isolation specs again, captured from the WAL (test/clinic_migrate_wal.conf)
  for t in $(make_var ISOLATION); do regress_tests+=("${t}_wal"); done
fi
if [ $run_tap -eq 1 ] && [ ${#tap_files[@]} -eq 0 ]; then
  shopt -s nullglob
  # shellcheck disable=SC2207  # the Makefile's PROVE_TESTS is a glob, expanded here
  tap_files=($(make_var PROVE_TESTS))
  shopt -u nullglob
fi
planned=$(( ${#regress_tests[@]} + ${#tap_files[@]} + run_regress ))

passed=0
failed=0
summary() {
  echo "== $(( $(date +%s) - started )) s"
  echo "$passed passed, $failed failed"
}

echo "== build"
if ! make -s PG_CONFIG="$PG_CONFIG" || ! make -s PG_CONFIG="$PG_CONFIG" install; then
  echo "check.sh: the build failed; no test ran" >&2
  failed=$planned
  [ $failed -gt 0 ] || failed=1
  summary
  exit 1
fi

# The source tree's floors: every call and include goes down (test/layering.sh prints
# each one that does not). Counted as one test.
if [ $run_regress -eq 1 ]; then
  echo "== layering: calls and includes go from the top floor down"
  if bash test/layering.sh; then
    echo "layering ... ok"
    passed=$((passed + 1))
  else
    echo "layering ... FAILED"
    failed=$((failed + 1))
    rc_layering=1
  fi
fi

# The scratch copy, owned by postgres: everything but git metadata and the leftovers of
# earlier test runs.
tmp=$(mktemp -d /tmp/clinic_migrate_check.XXXXXX)
logs=$tmp/.check-logs
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
  local pidfile
  # Servers a test left behind (a test that died before its END block ran) live in
  # the scratch copy; stop them before removing it.
  while IFS= read -r pidfile; do
    runuser -u postgres -- "$("$PG_CONFIG" --bindir)/pg_ctl" -D "$(dirname "$pidfile")" \
      stop -m immediate >/dev/null 2>&1 || true
  done < <(find "$tmp" -name postmaster.pid 2>/dev/null)
  if [ "${CLINIC_KEEP_TMP:-0}" = 1 ]; then
    echo "check.sh: kept $tmp" >&2
  else
    rm -rf "$tmp"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
tar -C "$repo" --exclude=./.git --exclude='tmp_check*' --exclude=./results \
    --exclude=./log --exclude=./regression.diffs --exclude=./regression.out \
    --exclude=./output_iso --exclude=./output_iso_wal -cf - . | tar -C "$tmp" -xf -
chown -R postgres: "$tmp"
mkdir "$logs"

# make as postgres in the scratch copy, with a clean, fixed environment: the test
# servers' initdb takes its encoding from LANG, and UTF8 is what the tests assume.
as_postgres_make() {
  runuser -u postgres -- env -i PATH="$("$PG_CONFIG" --bindir):/usr/local/bin:/usr/bin:/bin" \
    HOME="$tmp" LANG=C.UTF-8 TMPDIR=/tmp \
    ${PG_TEST_TIMEOUT_DEFAULT:+PG_TEST_TIMEOUT_DEFAULT="$PG_TEST_TIMEOUT_DEFAULT"} \
    make --no-print-directory -C "$tmp" PG_CONFIG="$PG_CONFIG" "$@"
}

# Print a log file, at most its last $2 lines.
show_log() {
  local f=$1 max=${2:-3000} n
  [ -f "$f" ] || return 0
  n=$(wc -l <"$f")
  echo "---------- ${f#"$tmp"/} ($n lines)"
  if [ "$n" -gt "$max" ]; then
    echo "[... first $((n - max)) lines left out ...]"
    tail -n "$max" "$f"
  else
    cat "$f"
  fi
}

# pg_regress, the isolation specs and prove run as separate make calls (PGXS runs them
# in one recipe, where a failure would skip the rest), so all always run and all count.
rc=${rc_layering:-0}
if [ ${#regress_tests[@]} -gt 0 ]; then
  echo "== pg_regress and isolation: ${regress_tests[*]}"
  reg_rc=0
  # two make calls: in PGXS's single installcheck recipe a failing pg_regress
  # would keep the isolation specs from running
  as_postgres_make installcheck ISOLATION= TAP_TESTS= 2>&1 | tee "$logs/regress.out" || reg_rc=$?
  as_postgres_make installcheck REGRESS= TAP_TESTS= 2>&1 | tee -a "$logs/regress.out" || reg_rc=$?
  as_postgres_make installcheck REGRESS= TAP_TESTS= \
    ISOLATION_OPTS="--inputdir=test --outputdir=output_iso_wal --temp-config=test/clinic_migrate_wal.conf --temp-instance=./tmp_check_iso_wal" \
    2>&1 | tee -a "$logs/regress.out" || reg_rc=$?
  reg_ok=$(grep -cE '^(test +| +)[^ ]+ +\.\.\. +(ok|failed \(ignored\))' "$logs/regress.out" || true)
  reg_failed=$(( ${#regress_tests[@]} - reg_ok ))
  [ $reg_failed -ge 0 ] || reg_failed=0
  if [ $reg_rc -ne 0 ] && [ $reg_failed -eq 0 ]; then reg_failed=1; fi
  passed=$(( passed + ${#regress_tests[@]} - reg_failed ))
  [ $passed -ge 0 ] || passed=0
  failed=$(( failed + reg_failed ))
  if [ $reg_rc -ne 0 ] || [ $reg_failed -ne 0 ]; then
    rc=1
    echo "== pg_regress failed (make exit status $reg_rc)"
    show_log "$tmp/regression.diffs"
    show_log "$tmp/output_iso/regression.diffs"
    show_log "$tmp/output_iso_wal/regression.diffs"
    # no test got a result line: the harness itself failed, so show how the server did
    [ "$reg_ok" -gt 0 ] || show_log "$tmp/log/initdb.log" 200
    show_log "$tmp/log/postmaster.log" 300
    show_log "$tmp/output_iso/log/postmaster.log" 300
    show_log "$tmp/output_iso_wal/log/postmaster.log" 300
  fi
elif [ $run_regress -eq 1 ]; then
  echo "== pg_regress: REGRESS is empty, nothing to run"
fi

if [ ${#tap_files[@]} -gt 0 ]; then
  echo "== TAP: ${tap_files[*]}"
  tap_rc=0
  as_postgres_make installcheck REGRESS= ISOLATION= PROVE_FLAGS=--timer PROVE_TESTS="${tap_files[*]}" \
    2>&1 | tee "$logs/tap.out" || tap_rc=$?
  if [ $tap_rc -eq 0 ] && grep -q '^Result: PASS' "$logs/tap.out"; then
    tap_failed=0
  elif grep -q '^Test Summary Report' "$logs/tap.out" && ! grep -q '^Bailout called' "$logs/tap.out"; then
    # one "file.pl (Wstat: ...)" line per failed file
    sed -n '/^Test Summary Report/,$p' "$logs/tap.out" |
      sed -nE 's/^([^ ]+\.pl) +\(Wstat: .*/\1/p' >"$logs/tap.failed"
    tap_failed=$(wc -l <"$logs/tap.failed")
    [ "$tap_failed" -gt 0 ] || tap_failed=${#tap_files[@]}
  else
    # prove bailed out or never ran: nothing reliable to count, so nothing passed
    tap_failed=${#tap_files[@]}
  fi
  passed=$(( passed + ${#tap_files[@]} - tap_failed ))
  failed=$(( failed + tap_failed ))
  if [ $tap_rc -ne 0 ] || [ "$tap_failed" -ne 0 ]; then
    rc=1
    echo "== TAP tests failed (make exit status $tap_rc)"
    # the logs of the files that failed (of all when that is unknown): for a test
    # file t/x.pl, regress_log_x (its output) and x_<node>.log (its servers' logs)
    if [ -s "$logs/tap.failed" ]; then
      while IFS= read -r t; do
        b=$(basename "$t" .pl)
        for f in "$tmp/tmp_check/log/regress_log_$b" "$tmp/tmp_check/log/${b}"_*.log; do
          show_log "$f"
        done
      done <"$logs/tap.failed"
    else
      for f in "$tmp"/tmp_check/log/*; do
        show_log "$f"
      done
    fi
  fi
elif [ $run_tap -eq 1 ]; then
  echo "== TAP: no test/t/*.pl files, nothing to run"
fi

summary
exit $rc
