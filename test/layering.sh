#!/usr/bin/env bash
# test/layering.sh: checks that the C sources are layered, calls and includes going one
# way only, from the top floor down, so that each floor can be read, changed and tested
# knowing only the floors below it.
#
#   bash test/layering.sh [-v] [--makefile FILE]
#
# The Makefile's OBJS lists every object bottom to top; a file's rank is its position
# there. Floors are the numbered folders src/<n>_<name>/ (a file directly under src/ is
# on floor 0), and along OBJS the floor numbers must never decrease. A function defined
# in X.c may call a function defined in another of our files Y.c only if rank(Y) <
# rank(X); X.c or X.h may #include "y.h" (one of ours) only if rank(y) <= rank(x), where
# y.h ranks with y.c, or at the bottom of its folder when there is no y.c. Ranks are a
# total order, so the rule also keeps the include graph free of cycles (apart from
# headers without a .c in one folder, which share a rank): no cycle search is needed.
#
# The call graph comes from the compiler (gcc -fcallgraph-info, one .ci file per source),
# not from ctags or grep: it is exact, with macros expanded, static functions told apart
# from extern ones of the same name, and no false hits in comments or strings. It sees
# direct calls only: calls through function pointers, and bgworker entry points started
# by name, are not checked.
#
# Prints one line per violation and nothing else; -v first prints who calls whom, file
# to file. Exit status: 0 layered, 1 violations, 2 usage or setup error.
set -euo pipefail
exec </dev/null

PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
usage() { sed -n '/^#   bash/s/^#   //p' "${BASH_SOURCE[0]}"; }
die() { echo "layering.sh: $*" >&2; exit 2; }

verbose=0 makefile=$repo/Makefile
while [ $# -gt 0 ]; do
  case "$1" in
    -v) verbose=1 ;;
    --makefile) [ $# -ge 2 ] || { usage >&2; exit 2; }; makefile=$2; shift ;;
    --makefile=*) makefile=${1#--makefile=} ;;
    -h|--help) usage; exit 0 ;;
    *) echo "layering.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
[ -f "$makefile" ] || die "no such Makefile: $makefile"
makefile=$(realpath "$makefile")
[ -x "$PG_CONFIG" ] || die "no pg_config at $PG_CONFIG"
cc=$("$PG_CONFIG" --cc)
command -v "${cc%% *}" >/dev/null || die "no C compiler: $cc"
cd "$repo"

make_var() {  # as test/check.sh reads the Makefile
  # shellcheck disable=SC2016  # $($*) is make's, not the shell's
  printf 'cm-print-%%:\n\t@echo $($*)\n' |
    make -s --no-print-directory -f "$makefile" -f - "cm-print-$1" PG_CONFIG="$PG_CONFIG" ||
    die "cannot read $1 from $makefile"  # exits the $(...), and set -e the script
}
objs=$(make_var OBJS)
cppflags=$(make_var PG_CPPFLAGS)
cflags=" $(make_var PG_CFLAGS) "
cflags=${cflags// -Werror / }  # warnings are not what this checks
[ -n "$objs" ] || die "OBJS is empty in $makefile"

pgflags="$("$PG_CONFIG" --cflags) -I$("$PG_CONFIG" --includedir-server)"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for o in $objs; do
  c=${o%.o}.c c=${c#./}
  [ -f "$c" ] || die "$o is in OBJS but $c does not exist"
  # shellcheck disable=SC2086  # flag lists split into words on purpose
  $cc $pgflags $cppflags $cflags \
    -fcallgraph-info -c -o "$tmp/${c//\//_}.o" -dumpdir "$tmp/" "$c" 2>"$tmp/cc.err" ||
    { cat "$tmp/cc.err" >&2; die "cannot compile $c"; }
done

OBJS=$objs CPPFLAGS=$cppflags perl -MCwd=realpath -MFile::Spec - "$tmp" "$verbose" <<'PERL' || exit $(( $? == 1 ? 1 : 2 ))
use strict; use warnings;
my ($tmp, $verbose) = @ARGV;
my (@bad, %rank, %floor_min, %def, %pair);
my @objs = split ' ', $ENV{OBJS};
my @idirs = map { s/^-I//r } grep { /^-I./ } split ' ', $ENV{CPPFLAGS} =~ s/-I\s+/-I/gr;
sub dir { $_[0] =~ m{^(.*)/} ? $1 : '.' }
sub rel { my $p = realpath($_[0]); defined $p ? File::Spec->abs2rel($p) : undef }

# ranks of the .c files, and the floor check along OBJS
my $last = 0;
for my $i (0 .. $#objs) {
  (my $c = $objs[$i]) =~ s/\.o$/.c/;
  $c = rel($c);
  $rank{$c} = $i;
  $floor_min{dir $c} //= $i;
  my $n = $c =~ m{^src/(\d+)_[^/]+/[^/]+$} ? $1 : $c =~ m{^src/[^/]+$} ? 0 : undef;
  if (!defined $n) { push @bad, "$c is not in a floor folder src/<n>_<name>/"; next }
  push @bad, "$c is on floor $n, below floor $last listed before it in OBJS" if $n < $last;
  $last = $n if $n > $last;
}
# headers rank with their .c, or at the bottom of their folder
my @headers = map { glob "$_/*.h" } sort keys %floor_min;
for my $h (@headers) { $rank{$h} = $rank{$h =~ s/\.h$/.c/r} // $floor_min{dir $h} - 0.5 }

# includes, resolved as the compiler does: own directory first, then the -I folders
for my $x (sort keys %rank) {
  open my $fh, '<', $x or die "layering.sh: $x: $!\n";
  while (<$fh>) {
    next unless /^\s*#\s*include\s*"([^"]+)"/;
    my $name = $1;
    my ($y) = grep { defined && exists $rank{$_} } map { rel("$_/$name") } dir($x), @idirs;
    push @bad, "$x:$. includes $name ($y, higher)" if $y && $rank{$y} > $rank{$x};
  }
}

# calls: every extern function defined in one of our files, then every call to one
my @graphs = map { local $/; open my $fh, '<', $_ or die; <$fh> } glob "$tmp/*.ci";
for (@graphs) {
  while (/^node: \{ title: "([^":]+)" label: "[^"]*\\n([^":]+):\d+:\d+" \}$/mg) {
    $def{$1} = rel($2) if exists $rank{rel($2)};
  }
}
for (@graphs) {
  my $x = rel(/^graph: \{ title: "([^"]+)"/m ? $1 : die);
  while (/^edge: \{ sourcename: "[^"]+" targetname: "([^"]+)"(?: label: "([^":]+):(\d+):\d+")? \}$/mg) {
    my ($fn, $y) = ($1, $def{$1});
    next unless $y && $y ne $x;
    my $where = defined $2 ? rel($2) . ":$3" : $x;  # the call site, maybe in a header
    $pair{$x}{$y}{$fn}++;
    push @bad, "$where calls $fn ($y, higher)" if $rank{$y} > $rank{$x};
  }
}

if ($verbose) {
  for my $x (sort { $rank{$b} <=> $rank{$a} } keys %pair) {
    for my $y (sort { $rank{$b} <=> $rank{$a} } keys %{$pair{$x}}) {
      my $up = $rank{$y} > $rank{$x} ? 'UP ' : '   ';
      print "$up $x -> $y: ", join(' ', sort keys %{$pair{$x}{$y}}), "\n";
    }
  }
}
# one line per violation, by file and line
sub key { my ($f, $l) = $_[0] =~ /^([^: ]+):?(\d*)/; sprintf "%s %09d", $f, $l || 0 }
my %seen;
print "$_\n" for sort { key($a) cmp key($b) or $a cmp $b } grep { !$seen{$_}++ } @bad;
exit(@bad ? 1 : 0);
PERL
