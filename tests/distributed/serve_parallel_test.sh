#!/usr/bin/env bash
# `tessera serve -tp 2` as a user runs it (it starts its own ranks under mpirun):
#  1. a completion through the server gives the tokens `tessera generate` gives with one rank;
#  1b. so do concurrent completions through `serve -pp 2`;
#  2. a rank that hangs (SIGSTOP) mid-request: /health turns 503, the client gets an error naming
#     the rank, and every process exits within 10 s;
#  2b. a rank that hangs while the server is idle: the idle heartbeat turns /health 503 and
#     every process exits within 15 s;
#  3. a rank killed (SIGKILL) mid-request: /health turns 503, every other rank exits within 10 s,
#     the client gets an error, and no process is left behind.
# Usage: serve_parallel_test.sh TESSERA_BINARY
set -euo pipefail
tessera="$1"
source "$(dirname "${BASH_SOURCE[0]}")/../lib/serve.sh"
work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
"$tessera" make-model --arch llama --preset tiny --dtype f32 --out "$work/model" >/dev/null 2>&1


# start_server PORT [LAYOUT...]: serve (-tp 2 unless LAYOUT is given) in the background; sets
# $server (the mpirun process).
start_server() {
  local port="$1"
  shift
  local layout=("$@")
  [ ${#layout[@]} -gt 0 ] || layout=(-tp 2)
  "$tessera" serve "$work/model" --host 127.0.0.1 --port "$port" "${layout[@]}" \
    --distributed-timeout 3 --max-model-len 512 >"$work/serve.log" 2>&1 &
  server=$!
  pids+=("$server")
  wait_ready "http://127.0.0.1:$port" "$server" "$work/serve.log"
}

# rank_pid N: the pid of world rank N among the server's children.
rank_pid() {
  for p in $(pgrep -P "$server"); do
    if tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$1"; then
      echo "$p"
      return
    fi
  done
}

# wait_exit SECONDS: waits for the server to exit; fails after SECONDS.
wait_exit() {
  local deadline=$((SECONDS + $1))
  while kill -0 "$server" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || { echo "FAIL: still running after $1 s"; exit 1; }
    sleep 0.1
  done
  wait "$server" 2>/dev/null || true
}

# watch_health PORT SECONDS INTERVAL: polls /health every INTERVAL s until the server exits or
# SECONDS have passed since $start; sets saw503=1 if it ever answered 503.
watch_health() {
  saw503=0
  while kill -0 "$server" 2>/dev/null && [ $((SECONDS - start)) -lt "$2" ]; do
    [ "$(curl -s -m 1 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/health" || true)" = 503 ] && saw503=1
    sleep "$3"
  done
}

# stopped_with_503 WHAT: waits (at most 10 s) for the server to exit after the fault injected at
# $start, reports how long it took, and fails unless /health answered 503 meanwhile.
stopped_with_503() {
  wait_exit 10
  echo "$1: exited after $((SECONDS - start)) s; /health 503 seen: $saw503"
  [ $saw503 = 1 ] || { echo "FAIL: /health never answered 503 before the exit"; exit 1; }
}

no_leftovers() {
  sleep 0.5
  if pgrep -f -- "--port $1 " >/dev/null; then
    ps -ef | grep -- "--port $1 " | grep -v grep
    echo "FAIL: processes left behind"
    exit 1
  fi
}

# 1. Same tokens as one rank.
prompt="5,6,7,8,9"
want="$("$tessera" generate --model "$work/model" --prompt-ids "$prompt" --max-tokens 12 \
  --temperature 0 --ignore-eos --json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["output_ids"])')"
port="$(free_port)"
start_server "$port"
got="$(curl -s "http://127.0.0.1:$port/v1/completions" -H 'Content-Type: application/json' \
  -d "{\"model\":\"$work/model\",\"prompt\":[$prompt],\"max_tokens\":12,\"temperature\":0,\"ignore_eos\":true,\"return_tokens_as_token_ids\":true,\"logprobs\":1}" |
  python3 -c 'import json,sys; r=json.load(sys.stdin); print([int(t.split(":")[1]) for t in r["choices"][0]["logprobs"]["tokens"]])')"
echo "one rank: $want; served with -tp 2: $got"
[ "$want" = "$got" ] || { echo "FAIL: tokens differ"; exit 1; }
grep -q "rank 1/2 (tp rank 1/2" "$work/serve.log" || { echo "FAIL: no shard log of rank 1"; exit 1; }
kill -TERM "$server"
wait_exit 15
no_leftovers "$port"

# 1b. -pp 2 through the server: concurrent requests (both pipeline groups busy, long prompts
# whose prefill the groups share) give one rank's tokens and log-probs.
prompts=("5,6,7,8,9" "$(seq -s, 10 80)" "3,4" "$(seq -s, 100 190)" "7,7,7" "$(seq -s, 200 240)")
args=()
for p in "${prompts[@]}"; do args+=(--prompt-ids "$p"); done
"$tessera" generate --model "$work/model" "${args[@]}" --max-tokens 12 --temperature 0 \
  --ignore-eos --logprobs 1 --json 2>/dev/null >"$work/want_pp.jsonl"
port="$(free_port)"
start_server "$port" -pp 2
python3 - "http://127.0.0.1:$port" "$work/model" "$work/want_pp.jsonl" "${prompts[@]}" <<'PY'
import json, sys, threading, urllib.request
url, model, want_file, prompts = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
want = [json.loads(l) for l in open(want_file) if l.startswith("{")]
got = [None] * len(prompts)
def ask(i):
    body = {"model": model, "prompt": [int(t) for t in prompts[i].split(",")], "max_tokens": 12,
            "temperature": 0, "ignore_eos": True, "return_tokens_as_token_ids": True, "logprobs": 1}
    req = urllib.request.Request(url + "/v1/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    got[i] = json.load(urllib.request.urlopen(req, timeout=60))["choices"][0]["logprobs"]
threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
for t in threads: t.start()
for t in threads: t.join()
for i, (g, w) in enumerate(zip(got, want)):
    ids = [int(t.split(":")[1]) for t in g["tokens"]]
    assert ids == w["output_ids"], (i, ids, w["output_ids"])
    for a, b in zip(g["token_logprobs"], w["logprobs"]):
        assert abs(a - b[0][1]) < 1e-4, (i, a, b)
print("served with -pp 2, %d concurrent requests: same tokens and log-probs as one rank" % len(prompts))
PY
grep -q "pp stage 1/2" "$work/serve.log" || { echo "FAIL: no shard log of stage 1"; exit 1; }
kill -TERM "$server"
wait_exit 15
no_leftovers "$port"

# 2. A rank that hangs.
port="$(free_port)"
start_server "$port"
r1="$(rank_pid 1)"
[ -n "$r1" ] || { echo "FAIL: rank 1 not found"; exit 1; }
kill -STOP "$r1"
start=$SECONDS
curl -sN "http://127.0.0.1:$port/v1/completions" -H 'Content-Type: application/json' \
  -d "{\"model\":\"$work/model\",\"prompt\":[1,2,3],\"max_tokens\":400,\"ignore_eos\":true,\"stream\":true}" \
  >"$work/stream.txt" 2>&1 &
watch_health "$port" 15 0.1
stopped_with_503 "hung rank"
[ $((SECONDS - start)) -le 10 ] || { echo "FAIL: took longer than 10 s"; exit 1; }
grep -q "no answer from rank 1" "$work/stream.txt" || { cat "$work/stream.txt"; echo "FAIL: no error to the client"; exit 1; }
kill -9 "$r1" 2>/dev/null || true
no_leftovers "$port"

# 2b. A rank that hangs while the server is idle: the idle heartbeat (every 5 s) finds it.
port="$(free_port)"
start_server "$port"
r1="$(rank_pid 1)"
kill -STOP "$r1"
start=$SECONDS
watch_health "$port" 20 0.1
stopped_with_503 "rank hung while idle"
[ $((SECONDS - start)) -le 15 ] || { echo "FAIL: took longer than 15 s"; exit 1; }
grep -q "heartbeat failed.*no answer from rank 1" "$work/serve.log" || { cat "$work/serve.log"; echo "FAIL: the log does not name rank 1"; exit 1; }
kill -9 "$r1" 2>/dev/null || true
no_leftovers "$port"

# 3. A rank that dies mid-request.
port="$(free_port)"
start_server "$port"
r1="$(rank_pid 1)"
for i in $(seq 1 16); do
  curl -sN "http://127.0.0.1:$port/v1/completions" -H 'Content-Type: application/json' \
    -d "{\"model\":\"$work/model\",\"prompt\":[1,2,$i],\"max_tokens\":500,\"ignore_eos\":true,\"stream\":true}" \
    >"$work/stream$i.txt" 2>&1 &
done
sleep 0.3
kill -9 "$r1"
start=$SECONDS
# mpirun notices the death and sends SIGTERM before SIGKILL: /health answers 503 in between.
watch_health "$port" 15 0.05
stopped_with_503 "killed rank"
wait  # the clients
complete=0
for i in $(seq 1 16); do grep -q '\[DONE\]' "$work/stream$i.txt" && complete=$((complete + 1)); done
echo "$complete of 16 streams completed"
[ $complete -lt 16 ] || { echo "FAIL: every client finished normally"; exit 1; }
grep -q "rank 1" "$work/serve.log" || { cat "$work/serve.log"; echo "FAIL: the log does not name rank 1"; exit 1; }
no_leftovers "$port"
echo PASS
