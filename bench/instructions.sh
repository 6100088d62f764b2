#!/usr/bin/env bash
# Instructions per event of each process of a bench workload, counted by valgrind's callgrind:
# within about 1 % from run to run on a busy or noisy machine, where throughput moves by a
# fifth.
#
#   bench/instructions.sh [--workload w1] [--size 64] [--roles "source sink"] [--bench PATH] [--no-build]
#
# Each role (`source`: the publishing node, `sink`: the receiving one) is run under callgrind
# twice, with 20,000 and with 60,000 events, the other process running at full speed; the
# figure is the difference divided by 40,000, so start-up and shutdown do not count. Prints one
# line per role: `role=source workload=w1 size=64 instructions_per_event=2472`. Needs valgrind.
# `--bench PATH` measures another build (a second worktree's `target/release/examples/bench`),
# so a change is compared with the commit before it run for run.
set -euo pipefail

workload=w1
size=64
roles="source sink"
bench=""
build=1
small=20000
large=60000
while [[ $# -gt 0 ]]; do
    case "$1" in
        --workload) workload="$2"; shift 2 ;;
        --size) size="$2"; shift 2 ;;
        --roles) roles="$2"; shift 2 ;;
        --bench) bench="$2"; shift 2 ;;
        --no-build) build=0; shift ;;
        -h | --help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "unknown option: $1" >&2; exit 2 ;;
    esac
done
command -v valgrind > /dev/null || { echo "valgrind is not on the PATH" >&2; exit 1; }
root="$(cd "$(dirname "$0")/.." && pwd)"
if [[ -z "$bench" ]]; then
    bench="$root/target/release/examples/bench"
    if [[ $build == 1 ]]; then
        (cd "$root" && cargo build --release -q --example bench)
    fi
fi
[[ -x "$bench" ]] || { echo "no bench at $bench" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Instructions of one run of `role` under callgrind, with `count` events.
count_instructions() {
    local role="$1" count="$2"
    rm -f "$work"/cg.*
    if ! BENCH_WRAP="$role=valgrind --tool=callgrind --callgrind-out-file=$work/cg.%p" \
        "$bench" --workload "$workload" --size "$size" --count "$count" > "$work/run.out" 2>&1; then
        echo "the bench failed ($role, $count events):" >&2
        tail -5 "$work/run.out" >&2
        exit 1
    fi
    local out
    out="$(ls "$work"/cg.* 2> /dev/null | head -1)"
    [[ -n "$out" ]] || { echo "no callgrind output for $role" >&2; exit 1; }
    grep -E '^(summary|totals):' "$out" | head -1 | awk '{print $2}'
}

for role in $roles; do
    a="$(count_instructions "$role" "$small")"
    b="$(count_instructions "$role" "$large")"
    echo "role=$role workload=$workload size=$size instructions_per_event=$(( (b - a) / (large - small) ))"
done
