#!/usr/bin/env bash
# `tessera bench serve` against a running `tessera serve` on a tiny model: every request
# completes, the token totals follow --random-input-len / --random-output-len (exactly without
# --random-range-ratio, within its range with it), a --random-prefix-len prefix is shared (the
# server's prefix cache hits), and bad flags fail with a message.
# Usage: bench_serve_test.sh TESSERA_BINARY
set -euo pipefail
tessera="$1"
source "$(dirname "${BASH_SOURCE[0]}")/../lib/serve.sh"
work="$(mktemp -d)"
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
"$tessera" make-model --arch llama --preset tiny --out "$work/model" >/dev/null
port="$(free_port)"
"$tessera" serve "$work/model" --host 127.0.0.1 --port "$port" --max-model-len 512 \
  >"$work/serve.log" 2>&1 &
pid=$!
url="http://127.0.0.1:$port"
wait_ready "$url" $pid "$work/serve.log"
field() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$@"; }
metric() { curl -s "$url/metrics" | awk -v n="$1" '$1 ~ "^"n"[{]" {s += $2} END {print s + 0}'; }

# Fixed lengths: 12 x 16 prompt tokens, 12 x 8 output tokens.
"$tessera" bench serve --base-url "$url" --num-prompts 12 --max-concurrency 4 \
  --random-input-len 16 --random-output-len 8 --random-vocab 4096 --ignore-eos --json \
  >"$work/fixed.json"
[ "$(field "$work/fixed.json" completed)" = 12 ] || { cat "$work/fixed.json"; exit 1; }
[ "$(field "$work/fixed.json" total_input_tokens)" = 192 ] || { cat "$work/fixed.json"; exit 1; }
[ "$(field "$work/fixed.json" total_output_tokens)" = 96 ] || { cat "$work/fixed.json"; exit 1; }
python3 - "$work/fixed.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
for k in ("mean_ttft_ms", "median_tpot_ms", "p99_itl_ms", "mean_e2el_ms", "output_throughput"):
    assert r[k] > 0, (k, r[k])
assert r["p99_ttft_ms"] >= r["median_ttft_ms"] > 0, r
PY

# Lengths uniform in [len * 0.5, len * 1.5] after a shared 32-token prefix (two blocks): all
# but the first requests of each concurrent wave find it cached.
hits_before="$(metric vllm:prefix_cache_hits_total)"
"$tessera" bench serve --base-url "$url" --num-prompts 24 --max-concurrency 4 \
  --random-input-len 16 --random-output-len 8 --random-range-ratio 0.5 --random-prefix-len 32 \
  --random-vocab 4096 --ignore-eos --seed 3 --json >"$work/ranged.json"
python3 - "$work/ranged.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
assert r["completed"] == 24, r
n_in, n_out = r["total_input_tokens"], r["total_output_tokens"]
assert 24 * (32 + 8) <= n_in <= 24 * (32 + 24), n_in
assert 24 * 4 <= n_out <= 24 * 12, n_out
assert n_in != 24 * 48 and n_out != 24 * 8, "lengths did not vary"
assert r["random_range_ratio"] == 0.5 and r["random_prefix_len"] == 32, r
PY
hits_after="$(metric vllm:prefix_cache_hits_total)"
python3 -c "import sys; a, b = map(float, sys.argv[1:]); assert b - a >= (24 - 2 * 4) * 32, (a, b)" \
  "$hits_before" "$hits_after" || { echo "prefix not shared: $hits_before -> $hits_after"; exit 1; }

# Ids beyond the model's vocabulary (4096): the server's 400 message reaches the report.
if "$tessera" bench serve --base-url "$url" --num-prompts 2 --random-input-len 4 \
  --random-output-len 2 >"$work/oov.out" 2>&1; then
  echo "out-of-vocabulary prompts succeeded"; exit 1
fi
grep -q "HTTP 400: .*outside the vocabulary" "$work/oov.out" || { cat "$work/oov.out"; exit 1; }

# Bad flags: a message and a non-zero exit, nothing sent.
for bad in "--random-range-ratio 1" "--random-range-ratio -0.1" "--random-prefix-len -1"; do
  if "$tessera" bench serve --base-url "$url" --num-prompts 1 $bad >"$work/bad.out" 2>&1; then
    echo "accepted $bad"; exit 1
  fi
  grep -q -- "${bad%% *}" "$work/bad.out" || { cat "$work/bad.out"; exit 1; }
done
echo "bench serve: ok"
