#!/usr/bin/env bash
# Run CMD as N cooperating JAX processes on this machine (127.0.0.1), process 0 coordinating.
#   launch/local.sh N CMD [ARGS...]
# Each process gets JAXDISTILL_COORDINATOR / _NUM_PROCESSES / _PROCESS_ID; jaxdistill calls
# jax.distributed.initialize() with them. Output of process i goes to stdout prefixed "[i]".
# Exits with the first non-zero exit code of any process (0 if all succeed).
# Env: JAXDISTILL_PORT (default: a free port), DRY_RUN=1 prints the commands instead.
set -euo pipefail
if [ "$#" -lt 2 ] || [ "$1" = "--help" ] || [ "$1" = "-h" ]; then
  sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
  [ "$#" -ge 1 ] && [ "$1" != "--help" ] && [ "$1" != "-h" ] && exit 2
  exit 0
fi
n="$1"; shift
case "$n" in ''|*[!0-9]*) echo "error: N must be a positive integer, got '$n'" >&2; exit 2;; esac
port="${JAXDISTILL_PORT:-$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}"
pids=()
trap 'kill -TERM "${pids[@]}" 2>/dev/null || true' TERM INT
for ((i = 0; i < n; i++)); do
  if [ "${DRY_RUN:-0}" = "1" ]; then
    echo "JAXDISTILL_COORDINATOR=127.0.0.1:$port JAXDISTILL_NUM_PROCESSES=$n JAXDISTILL_PROCESS_ID=$i $*"
    continue
  fi
  JAXDISTILL_COORDINATOR="127.0.0.1:$port" JAXDISTILL_NUM_PROCESSES="$n" JAXDISTILL_PROCESS_ID="$i" \
    "$@" > >(sed -u "s/^/[$i] /") 2>&1 &
  pids+=("$!")
done
rc=0
for pid in "${pids[@]}"; do
  wait "$pid" || { code=$?; [ "$rc" -eq 0 ] && rc=$code; }
done
exit "$rc"
