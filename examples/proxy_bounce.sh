#!/usr/bin/env bash
# The README's "Proxy bounce", run and checked: the cluster of config/star.toml in one process,
# examples/web_backend beside each worker on the address its `http` names, and requests through
# the master's proxy (127.0.0.1:8000) that land on all three workers; then one pinned request.
# Exits non-zero if any of that does not happen within 30 s. Needs curl and the release build:
#
#   cargo build --release --example web_backend && cargo build --release
#   bash examples/proxy_bounce.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release
for b in "$bin/nodecloud" "$bin/examples/web_backend"; do
  [ -x "$b" ] || { echo "build first: $b is missing (see the top of $0)" >&2; exit 1; }
done
logs=$(mktemp -d)
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$logs"
}
trap cleanup EXIT

"$bin/nodecloud" --config config/star.toml >"$logs/cluster.log" 2>&1 &
pids+=($!)
for i in 1 2 3; do
  "$bin/examples/web_backend" --node "worker-$i" --listen "127.0.0.1:900$i" >"$logs/web-$i.log" 2>&1 &
  pids+=($!)
done

# The proxy answers 503 until the workers are up; ask until three workers have answered.
declare -A seen=()
deadline=$((SECONDS + 30))
while [ "${#seen[@]}" -lt 3 ]; do
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "proxy_bounce: only ${!seen[*]} answered within 30 s; the cluster said:" >&2
    tail -20 "$logs/cluster.log" >&2
    exit 1
  fi
  body=$(curl -s --max-time 2 http://127.0.0.1:8000/ || true)
  case "$body" in
    "hello from worker-"*) echo "$body"; seen[$body]=1 ;;
    *) sleep 0.2 ;;
  esac
done
pinned=$(curl -s --max-time 2 -H 'X-Nodecloud-Node: worker-2' http://127.0.0.1:8000/)
echo "$pinned (pinned to worker-2)"
[ "$pinned" = "hello from worker-2" ] || { echo "proxy_bounce: the pin was not followed" >&2; exit 1; }
echo "proxy_bounce: ok"
