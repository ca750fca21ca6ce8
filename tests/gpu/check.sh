#!/usr/bin/env bash
# Tokenscope's GPU accounting against a real NVIDIA GPU, in under 5 minutes.
#
#   sudo tests/gpu/check.sh            # TOKENSCOPE_BIN=... to use a built agent
#
# Needs: root (the agent loads its eBPF probes), an NVIDIA driver
# (libnvidia-ml.so.1), python3 with PyTorch on CUDA, curl.
#
# 1. The agent runs with `--gpu nvml`.
# 2. tests/gpu/duty.py runs a matmul loop at a 40 % duty cycle for 30 s and
#    measures its own GPU busy time with CUDA events.
# 3. tests/gpu/gpu_server.py, a tiny OpenAI-compatible server doing real GPU
#    work per token, answers calls from two clients (models team-a and team-b,
#    3:1 in tokens), over loopback, while the agent watches.
# 4. It prints what the agent attributed (busy GPU-seconds per process, each
#    client's share of the server's time) against the CUDA-event measurements
#    and the token ratio, and fails when one is off by more than 10 %.
#
# Put its output in the closing note of the GPU issue.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
here="$repo/tests/gpu"
bin="${TOKENSCOPE_BIN:-$repo/target/debug/tokenscope}"
if [ ! -x "$bin" ]; then
    (cd "$repo" && cargo build -p tokenscope --bins)
fi
work="$(mktemp -d "${TMPDIR:-/tmp}/tokenscope-gpu-check.XXXXXX")"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
window_s=5
"$bin" run --gpu nvml --gpu-interval-ms 500 --gpu-window-s "$window_s" \
    --usd-per-gpu-hour 3.6 --listen "127.0.0.1:$port" --events "$work/events.jsonl" \
    --log-level info 2>"$work/agent.log" &
pids+=($!)
for _ in $(seq 1 120); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break
    sleep 0.5
done
curl -sf "http://127.0.0.1:$port/readyz" >/dev/null || { cat "$work/agent.log"; exit 1; }
if grep -q gpu_unavailable "$work/agent.log"; then
    echo "NVML is not available to the agent:" >&2
    grep gpu_unavailable "$work/agent.log" >&2
    exit 1
fi

python3 "$here/duty.py" 30 0.4 >"$work/duty.out" &
duty_job=$!
pids+=($duty_job)

coproc SERVER { python3 "$here/gpu_server.py"; }
pids+=($SERVER_PID)
read -r ready server_port server_pid <&"${SERVER[0]}"
[ "$ready" = READY ] || { echo "gpu_server.py did not start" >&2; exit 1; }

client() { # model calls max_tokens
    for _ in $(seq 1 "$2"); do
        curl -s -H 'content-type: application/json' \
            -d "{\"model\":\"$1\",\"max_tokens\":$3,\"messages\":[{\"role\":\"user\",\"content\":\"hello there\"}]}" \
            "http://127.0.0.1:$server_port/v1/chat/completions" >/dev/null
    done
}
client team-a 12 48 &
a_job=$!
client team-b 4 48 &
b_job=$!
wait "$a_job" "$b_job"
curl -s "http://127.0.0.1:$server_port/stats" >"$work/server.json"
wait "$duty_job"
# The last accounting window closes, then the next publish.
sleep $((window_s + 3))
curl -s "http://127.0.0.1:$port/metrics" >"$work/metrics.txt"

python3 - "$work" "$server_pid" <<'PY'
import json, re, sys
work, server_pid = sys.argv[1], int(sys.argv[2])
duty = json.loads(open(f"{work}/duty.out").read().splitlines()[-1])
server = json.load(open(f"{work}/server.json"))
metrics = open(f"{work}/metrics.txt").read()

def busy_of(pid):
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith("tokenscope_gpu_busy_seconds_total{") and f'pod="pid:{pid} ' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total

records = [json.loads(l) for l in open(f"{work}/events.jsonl") if l.strip()]
served = [r for r in records if r["side"] == "server" and r["process"]["pid"] == server_pid]
share = {m: sum(r.get("gpu_seconds") or 0.0 for r in served if r["request_model"] == m)
         for m in ("team-a", "team-b")}
tokens = {m: sum((r.get("input_tokens") or 0) + (r.get("output_tokens") or 0)
                 for r in served if r["request_model"] == m) for m in ("team-a", "team-b")}

rows, failed = [], False
def row(what, agent, truth):
    global failed
    off = abs(agent - truth) / truth if truth else float("inf")
    ok = off <= 0.10
    failed |= not ok
    rows.append(f"{what:<38} agent {agent:10.3f}   measured {truth:10.3f}   {off*100:6.1f} %  {'ok' if ok else 'OFF'}")

row(f"duty loop busy GPU-s (pid {duty['pid']})", busy_of(duty["pid"]), duty["busy_s"])
row(f"server busy GPU-s (pid {server_pid})", busy_of(server_pid), server["busy_s"])
all_share = share["team-a"] + share["team-b"]
all_tokens = tokens["team-a"] + tokens["team-b"]
if all_share and all_tokens:
    row("team-a share of served GPU time", share["team-a"] / all_share, tokens["team-a"] / all_tokens)
else:
    rows.append(f"no served calls with GPU shares: {len(served)} served records")
    failed = True
print(f"duty cycle target {duty['target_duty']:.2f}, CUDA events {duty['duty']:.3f} over {duty['wall_s']:.1f} s")
print(f"served calls: {len(served)} ({server['calls']} answered), shares {share}, tokens {tokens}")
print("\n".join(rows))
for line in metrics.splitlines():
    if line.startswith(("hw_gpu_", "tokenscope_gpu_idle_seconds_total", "tokenscope_gpu_device_seconds_total", "tokenscope_gpu_source_up")):
        print(line)
sys.exit(1 if failed else 0)
PY
