#!/bin/sh
# The sample project's test suite: every tests/*.sh, TAP output, a report (the job's artifact).
# A case is `check EXPECTED COMMAND [ARG...]`: COMMAND.sh with those arguments must print EXPECTED.
n=0
failed=0
check() {
  want=$1 cmd=$2
  shift 2
  n=$((n + 1))
  got=$(sh "./$cmd.sh" "$@" 2>&1)
  if [ "$got" = "$want" ]; then
    echo "ok $n - $cmd${*:+ $*}"
  else
    echo "not ok $n - $cmd${*:+ $*}: want '$(echo "$want" | tr '\n' '|')', got '$(echo "$got" | tr '\n' '|')'"
    failed=$((failed + 1))
  fi
}
for t in tests/*.sh; do . "./$t"; done
echo "1..$n"
tools=$(cat /opt/tools/VERSION 2>/dev/null || echo "no CI tools")
echo "$n tests, $failed failed ($tools, uid $(id -u))" | tee report.txt
[ "$failed" -eq 0 ]
