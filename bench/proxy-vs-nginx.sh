#!/usr/bin/env bash
# The proxy bounce beside nginx: wrk against the same three backends directly, through nginx
# configured as a reverse proxy, and through a nodecloud cluster whose master serves the proxy.
#
#   bench/proxy-vs-nginx.sh [--rounds 3] [--duration 10] [--connections 64] [--threads 2] [--no-build]
#
# Needs wrk and nginx on the PATH (or in /usr/sbin). Everything listens on 127.0.0.1, on ports
# the script finds free; every process it starts is stopped when it exits. The three targets
# are measured in interleaved rounds (direct, nginx, nodecloud, then again), so a change in the
# machine's load touches all three alike, and the table gives the median of the rounds.
# NODECLOUD_BENCH_KEEP=1 keeps the working directory (configurations, logs, wrk outputs);
# NODECLOUD_BIN=PATH measures that nodecloud binary instead of the one built.
set -euo pipefail

rounds=3
duration=10
connections=64
threads=2
build=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --rounds) rounds="$2"; shift 2 ;;
        --duration) duration="$2"; shift 2 ;;
        --connections) connections="$2"; shift 2 ;;
        --threads) threads="$2"; shift 2 ;;
        --no-build) build=0; shift ;;
        -h | --help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "unknown option: $1" >&2; exit 2 ;;
    esac
done

repo="$(cd "$(dirname "$0")/.." && pwd)"
export PATH="$PATH:/usr/sbin:/sbin"
for tool in wrk nginx python3 curl; do
    command -v "$tool" >/dev/null || { echo "$tool is needed on the PATH" >&2; exit 2; }
done

work="$(mktemp -d -t nodecloud-bench.XXXXXX)"
pids=()
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ "${NODECLOUD_BENCH_KEEP:-0}" == 1 ]]; then
        echo "kept $work" >&2
    else
        rm -rf "$work"
    fi
    exit "$status"
}
trap cleanup EXIT INT TERM

if [[ $build == 1 ]]; then
    (cd "$repo" && cargo build -q --release --bin nodecloud --example web_backend)
fi
target="${CARGO_TARGET_DIR:-$repo/target}/release"
# NODECLOUD_BIN measures another build of nodecloud (to compare two versions of the proxy).
nodecloud="${NODECLOUD_BIN:-$target/nodecloud}"
backend="$target/examples/web_backend"

# Free ports, all bound at once before any is released, so that no two are the same.
read -r -a ports <<<"$(python3 -c '
import socket
socks = [socket.socket() for _ in range(10)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
')"
backend_ports=("${ports[@]:0:3}")
nginx_port=${ports[3]}
proxy_port=${ports[4]}
peer_ports=("${ports[@]:5:4}")

# Wait until URL answers 200 (with extra curl arguments), for at most 30 s.
wait_for() {
    local url="$1"
    shift
    for _ in $(seq 300); do
        if [[ "$(curl -s -o /dev/null -w '%{http_code}' "$@" "$url" || true)" == 200 ]]; then
            return 0
        fi
        sleep 0.1
    done
    echo "no answer from $url $* (logs in $work)" >&2
    NODECLOUD_BENCH_KEEP=1
    exit 1
}

# --- the backends: one web_backend process per worker; both proxies forward to these three.
for i in 1 2 3; do
    "$backend" --node "worker-$i" --listen "127.0.0.1:${backend_ports[$((i - 1))]}" \
        >"$work/backend-$i.log" 2>&1 &
    pids+=($!)
done
for p in "${backend_ports[@]}"; do
    wait_for "http://127.0.0.1:$p/"
done

# --- nodecloud: a star whose master serves the proxy and whose workers advertise a backend each.
cat >"$work/star.toml" <<EOF
[cluster]
name = "proxy-bench"
topology = "star"
secret = "proxy-bench-secret-0123456789"

[[nodes]]
name = "master"
role = "master"
listen = "127.0.0.1:${peer_ports[0]}"
proxy = "127.0.0.1:$proxy_port"
EOF
for i in 1 2 3; do
    cat >>"$work/star.toml" <<EOF

[[nodes]]
name = "worker-$i"
listen = "127.0.0.1:${peer_ports[$i]}"
http = "127.0.0.1:${backend_ports[$((i - 1))]}"
EOF
done
for node in master worker-1 worker-2 worker-3; do
    RUST_LOG=warn "$nodecloud" --config "$work/star.toml" --node "$node" >"$work/$node.log" 2>&1 &
    pids+=($!)
    [[ $node == master ]] && master_pid=$!
done
# The proxy answers for a worker once the master has seen it up.
for i in 1 2 3; do
    wait_for "http://127.0.0.1:$proxy_port/" -H "X-Nodecloud-Node: worker-$i"
done

# --- nginx as a reverse proxy to the same backends, tuned as one would in production.
mkdir -p "$work/nginx"
{
    # As root, nginx's workers would switch to `nobody` and could not write the temp paths below.
    [[ $EUID == 0 ]] && echo "user root;"
    cat <<EOF
# One worker process per core: nginx's own advice, and how it uses both cores.
worker_processes auto;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events {
    worker_connections 4096;
}
http {
    # Logging each request costs a write; nodecloud's proxy logs none.
    access_log off;
    client_body_temp_path $work/nginx/body;
    proxy_temp_path $work/nginx/proxy;
    fastcgi_temp_path $work/nginx/fastcgi;
    uwsgi_temp_path $work/nginx/uwsgi;
    scgi_temp_path $work/nginx/scgi;
    # nginx closes a client connection after 1000 requests by default, and wrk then opens a
    # new one; hyper keeps a connection for as long as the client wants. The same here.
    keepalive_requests 1000000;
    upstream backends {
        server 127.0.0.1:${backend_ports[0]};
        server 127.0.0.1:${backend_ports[1]};
        server 127.0.0.1:${backend_ports[2]};
        # Keep up to 64 idle connections to the backends per worker, as nodecloud's pooled
        # client does; without it nginx opens a connection per request.
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$nginx_port;
        location / {
            proxy_pass http://backends;
            # Keep-alive to a backend needs HTTP/1.1 (nginx speaks 1.0 upstream by default).
            proxy_http_version 1.1;
            # nginx sends "Connection: close" upstream by default, which would end each pooled
            # connection after one request.
            proxy_set_header Connection "";
            # The headers nodecloud's proxy adds, so that both do the same work.
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$host;
            proxy_set_header Forwarded "for=\$remote_addr;proto=\$scheme;host=\"\$host\"";
        }
    }
}
EOF
} >"$work/nginx/nginx.conf"
nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" >"$work/nginx/stdout.log" 2>&1 &
pids+=($!)
nginx_pid=$!
wait_for "http://127.0.0.1:$nginx_port/"

declare -A url=(
    [direct]="http://127.0.0.1:${backend_ports[0]}/"
    [nginx]="http://127.0.0.1:$nginx_port/"
    [nodecloud]="http://127.0.0.1:$proxy_port/"
)
targets=(direct nginx nodecloud)
# The processes whose CPU time a target costs (beside wrk and the backends): the backend
# itself, nginx's master and workers, the nodecloud master.
cpu_pids() {
    case "$1" in
        direct) echo "${pids[0]}" ;;
        nginx) echo "$nginx_pid $(pgrep -P "$nginx_pid" | tr '\n' ' ')" ;;
        nodecloud) echo "$master_pid" ;;
    esac
}

# User and system CPU time of the processes given, in clock ticks.
cpu_ticks() {
    local pid total=0
    for pid in "$@"; do
        # Fields 14 and 15 of /proc/PID/stat, counted after the ")" that ends the name.
        total=$((total + $(sed 's/.*) //' "/proc/$pid/stat" | awk '{ print $12 + $13 }')))
    done
    echo "$total"
}

# A wrk latency figure (like 812.00us, 1.20ms, 2.01s) in microseconds.
to_us() {
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) print n; else if (v ~ /ms$/) print n * 1000;
        else if (v ~ /s$/) print n * 1000000; else print n
    }'
}

# Run wrk against TARGET for SECONDS; append "req/s p50_us p99_us errors cpu_us_per_request"
# to its results.
measure() {
    local target="$1" seconds="$2" out="$work/wrk-$1-$3.txt"
    local -a cpu
    read -r -a cpu <<<"$(cpu_pids "$target")"
    local ticks_before
    ticks_before=$(cpu_ticks "${cpu[@]}")
    wrk -c "$connections" -t "$threads" -d "${seconds}s" --latency "${url[$target]}" >"$out"
    local ticks=$(($(cpu_ticks "${cpu[@]}") - ticks_before))
    local rps p50 p99 errors requests cpu_us
    rps=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
    p50=$(to_us "$(awk '$1 == "50%" { print $2 }' "$out")")
    p99=$(to_us "$(awk '$1 == "99%" { print $2 }' "$out")")
    # Socket errors and non-2xx answers both count.
    errors=$(awk '/Socket errors/ { gsub(",", ""); s += $4 + $6 + $8 + $10 }
                  /Non-2xx/ { s += $NF } END { print s + 0 }' "$out")
    requests=$(awk '/requests in/ { print $1 }' "$out")
    cpu_us=$(awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" -v n="$requests" \
        'BEGIN { print (n > 0) ? t * 1000000 / hz / n : 0 }')
    echo "$rps $p50 $p99 $errors $cpu_us" >>"$work/results-$target"
}

median() {
    sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores; wrk -c $connections -t $threads, $rounds rounds of ${duration}s" >&2
# A short warm-up fills both proxies' pools of backend connections.
for t in "${targets[@]}"; do
    measure "$t" 2 warmup
    rm -f "$work/results-$t"
done
for r in $(seq "$rounds"); do
    for t in "${targets[@]}"; do
        measure "$t" "$duration" "$r"
        echo "round $r $t: $(tail -n1 "$work/results-$t")" >&2
    done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

declare -A rps p50 p99 errors cpu
for t in "${targets[@]}"; do
    cpu[$t]=$(awk '{ print $5 }' "$work/results-$t" | median)
    rps[$t]=$(awk '{ print $1 }' "$work/results-$t" | median)
    p50[$t]=$(awk '{ print $2 }' "$work/results-$t" | median)
    p99[$t]=$(awk '{ print $3 }' "$work/results-$t" | median)
    errors[$t]=$(awk '{ s += $4 } END { print s + 0 }' "$work/results-$t")
done

# CPU µs/req: CPU time (user + system) of the server measured (the backend itself, nginx,
# the nodecloud master) per request answered: the figure the machine's load disturbs least.
printf '\n%-10s %10s %10s %10s %8s %12s\n' target 'req/s' 'p50 ms' 'p99 ms' errors 'CPU us/req'
for t in "${targets[@]}"; do
    printf '%-10s %10.0f %10.3f %10.3f %8d %12.1f\n' "$t" "${rps[$t]}" \
        "$(awk -v v="${p50[$t]}" 'BEGIN { print v / 1000 }')" \
        "$(awk -v v="${p99[$t]}" 'BEGIN { print v / 1000 }')" "${errors[$t]}" "${cpu[$t]}"
done
awk -v nr="${rps[nodecloud]}" -v gr="${rps[nginx]}" -v n99="${p99[nodecloud]}" -v g99="${p99[nginx]}" \
    -v n50="${p50[nodecloud]}" -v g50="${p50[nginx]}" -v d50="${p50[direct]}" 'BEGIN {
    printf "\nnodecloud/nginx: req/s %.2fx, p99 %.2fx (target: req/s >= 1.00x, p99 <= 1.20x)\n", nr / gr, n99 / g99
    printf "added p50 over direct: nodecloud %+.3f ms, nginx %+.3f ms\n", (n50 - d50) / 1000, (g50 - d50) / 1000
}'
awk -v n="${cpu[nodecloud]}" -v g="${cpu[nginx]}" 'BEGIN {
    if (g > 0) printf "proxy CPU per request: nodecloud/nginx %.2fx\n", n / g
}'
