#!/bin/sh
# SPDX-License-Identifier: BSL-1.0
# Runs a sample under Valgrind memcheck for CTest (label "valgrind").
#   valgrind-sample.sh VALGRIND EXPECTED_EXIT INPUT -- COMMAND [ARGS...]
# INPUT is a file for the sample's stdin, or - for /dev/null. INPUT may also
# be frames:TEXT, to feed one multiprocessing.connection frame holding TEXT.
# Fails when memcheck reports an invalid access or a definite/indirect leak
# (in the sample or in any child it forks; exec'd programs are not traced),
# or when the sample's exit status is not EXPECTED_EXIT.
set -eu
valgrind=$1 expected=$2 input=$3
shift 3
[ "$1" = "--" ] && shift
tmp=""
case "$input" in
  -) input=/dev/null ;;
  frames:*)
    text=${input#frames:}
    tmp=$(mktemp)
    python3 -c 'import struct,sys; t=sys.argv[1].encode(); sys.stdout.buffer.write(struct.pack("!i", len(t)) + t)' "$text" > "$tmp"
    input=$tmp ;;
esac
status=0
"$valgrind" -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite,indirect \
  --show-leak-kinds=definite,indirect --trace-children=no --child-silent-after-fork=no \
  "$@" < "$input" || status=$?
[ -n "$tmp" ] && rm -f "$tmp"
if [ "$status" -ne "$expected" ]; then
  echo "valgrind-sample: $1 exited with $status, expected $expected (99: memcheck found errors)" >&2
  exit 1
fi
