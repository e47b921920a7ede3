#!/usr/bin/env bash
# Starts `tessera serve` on a tiny random model with the built-in tokenizer, runs the official
# OpenAI client against it (openai_client_test.mjs), then checks graceful shutdown: a stream in
# flight when SIGTERM arrives still completes, and the server exits 0.
# Usage: openai_client_test.sh TESSERA_BINARY. Exit 77 (CTest: skipped) without the npm packages.
set -euo pipefail
tessera="$1"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../lib/serve.sh"
modules="${TESSERA_NPM_CACHE:-$HOME/.cache/tessera/npm}/node_modules"
if [ ! -d "$modules/openai" ] || ! command -v node >/dev/null; then
  echo "SKIP: the openai npm package is not available (tests/npm/fetch_assets.sh)"
  exit 77
fi
work="$(mktemp -d)"
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
"$tessera" make-model --arch llama --preset tiny --out "$work/model" >/dev/null
port="$(free_port)"
"$tessera" serve "$work/model" --host 127.0.0.1 --port "$port" --served-model-name tiny \
  --api-key test-key --max-model-len 512 --enable-auto-tool-choice --tool-call-parser llama3_json \
  >"$work/serve.log" 2>&1 &
pid=$!
wait_ready "http://127.0.0.1:$port" $pid "$work/serve.log"

node "$here/openai_client_test.mjs" "http://127.0.0.1:$port/v1" "$modules"

# Graceful shutdown with a stream in flight.
curl -sN "http://127.0.0.1:$port/v1/completions" -H 'Authorization: Bearer test-key' \
  -H 'Content-Type: application/json' \
  -d '{"model":"tiny","prompt":"a","max_tokens":400,"ignore_eos":true,"stream":true}' \
  >"$work/stream.txt" &
curl_pid=$!
sleep 0.3
kill -TERM $pid
set +e
wait $pid
rc=$?
wait $curl_pid
set -e
[ $rc -eq 0 ] || { cat "$work/serve.log"; echo "serve exited $rc after SIGTERM"; exit 1; }
tail -c 200 "$work/stream.txt" | grep -q 'data: \[DONE\]' || {
  echo "the in-flight stream did not complete"; tail -c 500 "$work/stream.txt"; exit 1; }
grep -q '"finish_reason":"length"' "$work/stream.txt" || { echo "no finish_reason"; exit 1; }
echo "graceful shutdown: ok"
