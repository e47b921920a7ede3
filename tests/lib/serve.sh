# Shell helpers for the tests that run `tessera serve` as a user would; source it.

# free_port: a TCP port free on 127.0.0.1 now.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_ready URL PID LOG: waits up to 30 s for URL/health to answer 200; if the server (PID)
# dies or never gets ready, prints LOG and exits 1.
wait_ready() {
  local code=000
  for _ in $(seq 1 300); do
    code="$(curl -s -o /dev/null -w '%{http_code}' "$1/health" || true)"
    [ "$code" = 200 ] && return 0
    kill -0 "$2" 2>/dev/null || { cat "$3"; echo "FAIL: server died"; exit 1; }
    sleep 0.1
  done
  cat "$3"
  echo "FAIL: server not ready"
  exit 1
}
