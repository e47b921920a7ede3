#!/usr/bin/env bash
# Unpacks promtool from Debian's `prometheus` package (without installing the daemon) into
#   ${TESSERA_PROMTOOL_CACHE:-$HOME/.cache/tessera/promtool}/usr/bin/promtool
# for the metrics lint test. Exits 0 when apt cannot reach a mirror: the test then skips.
set -uo pipefail
cache="${TESSERA_PROMTOOL_CACHE:-$HOME/.cache/tessera/promtool}"
[ -x "$cache/usr/bin/promtool" ] && exit 0
command -v promtool >/dev/null 2>&1 && exit 0
mkdir -p "$cache" && cd "$cache" || exit 0
if apt-get download prometheus >download.log 2>&1 || \
   { apt-get update -qq >/dev/null 2>&1 && apt-get download prometheus >download.log 2>&1; }; then
  dpkg -x prometheus_*.deb . && rm -f prometheus_*.deb
else
  echo "fetch_promtool: could not download Debian's prometheus package; the lint test skips" >&2
fi
exit 0
