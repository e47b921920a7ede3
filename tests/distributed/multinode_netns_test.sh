#!/usr/bin/env bash
# Two "nodes" for real: two network namespaces joined by a veth pair, one rank in each, MPI over
# TCP on the veth (btl tcp; shared memory is off), mpirun starting the remote rank through an
# rsh agent that enters the other namespace (as it would ssh to another host). Measures the
# all-reduce latency over TCP, serves one request end to end with `serve -tp 2` and generates
# with `-pp 2` (one stage per namespace).
# Usage: multinode_netns_test.sh TESSERA_BINARY ALLREDUCE_BENCH MPIRUN. Exit 77 (skipped) when
# not root or `ip netns` is unavailable. All traffic stays inside the namespaces.
set -euo pipefail
tessera="$1"
bench="$2"
mpirun="$3"
if [ "$(id -u)" -ne 0 ]; then echo "SKIP: needs root for ip netns"; exit 77; fi
if ! command -v ip >/dev/null || ! ip netns list >/dev/null 2>&1; then
  echo "SKIP: ip netns is not available"
  exit 77
fi
id="$$"
ns_a="tsr_a_$id" ns_b="tsr_b_$id"
subnet="10.$((id % 200 + 20)).$((id / 200 % 250)).0"
net="${subnet%.0}"
ip_a="$net.1" ip_b="$net.2"
work="$(mktemp -d)"
cleanup() {
  [ -n "${server:-}" ] && kill -9 "$server" 2>/dev/null || true
  ip netns pids "$ns_a" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
  ip netns pids "$ns_b" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
  ip netns del "$ns_a" 2>/dev/null || true
  ip netns del "$ns_b" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
if ! ip netns add "$ns_a" 2>/dev/null; then echo "SKIP: cannot create network namespaces"; exit 77; fi
ip netns add "$ns_b"
ip link add "va$id" type veth peer name "vb$id"
ip link set "va$id" netns "$ns_a"
ip link set "vb$id" netns "$ns_b"
ip -n "$ns_a" addr add "$ip_a/24" dev "va$id"
ip -n "$ns_b" addr add "$ip_b/24" dev "vb$id"
for ns in "$ns_a" "$ns_b"; do ip -n "$ns" link set lo up; done
ip -n "$ns_a" link set "va$id" up
ip -n "$ns_b" link set "vb$id" up

# The rsh agent: host $ip_a is namespace $ns_a, $ip_b is $ns_b.
cat >"$work/rsh" <<AGENT
#!/bin/sh
host="\$1"; shift
case "\$host" in
  $ip_a) ns=$ns_a ;;
  $ip_b) ns=$ns_b ;;
  *) echo "unknown host \$host" >&2; exit 1 ;;
esac
exec ip netns exec "\$ns" sh -c "\$*"
AGENT
chmod +x "$work/rsh"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpi=(ip netns exec "$ns_a" "$mpirun" --oversubscribe --bind-to none --mca plm_rsh_agent "$work/rsh"
  --mca btl self,tcp --mca btl_tcp_if_include "$subnet/24" --mca oob_tcp_if_include "$subnet/24"
  -H "$ip_a:1,$ip_b:1" -np 2 -x OMPI_ALLOW_RUN_AS_ROOT -x OMPI_ALLOW_RUN_AS_ROOT_CONFIRM)

# One rank per namespace, and the bytes go over the veth.
where="$(timeout 60 "${mpi[@]}" sh -c 'echo $OMPI_COMM_WORLD_RANK $(readlink /proc/self/ns/net)' | sort)"
echo "$where"
[ "$(echo "$where" | awk '{print $2}' | sort -u | wc -l)" = 2 ] || { echo "FAIL: ranks share a namespace"; exit 1; }
before="$(ip -n "$ns_a" -s link show "va$id" | awk 'NR==4 {print $1}')"
timeout 120 "${mpi[@]}" "$bench" 2048 500
after="$(ip -n "$ns_a" -s link show "va$id" | awk 'NR==4 {print $1}')"
echo "veth received $((after - before)) bytes"
[ $((after - before)) -gt 1000000 ] || { echo "FAIL: the all-reduce did not use the veth"; exit 1; }

# Serving across the two namespaces.
"$tessera" make-model --arch llama --preset tiny --dtype f32 --out "$work/model" >/dev/null 2>&1
prompt="5,6,7,8,9"
want="$("$tessera" generate --model "$work/model" --prompt-ids "$prompt" --max-tokens 12 \
  --temperature 0 --ignore-eos --json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["output_ids"])')"
port=18555
"${mpi[@]}" "$tessera" serve "$work/model" --host "$ip_a" --port "$port" -tp 2 --max-model-len 512 \
  >"$work/serve.log" 2>&1 &
server=$!
code=000
for _ in $(seq 1 300); do
  code="$(ip netns exec "$ns_a" curl -s -o /dev/null -w '%{http_code}' "http://$ip_a:$port/health" || true)"
  [ "$code" = 200 ] && break
  kill -0 "$server" 2>/dev/null || break
  sleep 0.1
done
[ "$code" = 200 ] || { cat "$work/serve.log"; echo "FAIL: server not ready"; exit 1; }
got="$(ip netns exec "$ns_a" curl -s "http://$ip_a:$port/v1/completions" -H 'Content-Type: application/json' \
  -d "{\"model\":\"$work/model\",\"prompt\":[$prompt],\"max_tokens\":12,\"temperature\":0,\"ignore_eos\":true,\"return_tokens_as_token_ids\":true,\"logprobs\":1}" |
  python3 -c 'import json,sys; r=json.load(sys.stdin); print([int(t.split(":")[1]) for t in r["choices"][0]["logprobs"]["tokens"]])')"
echo "one rank: $want; two namespaces: $got"
[ "$want" = "$got" ] || { cat "$work/serve.log"; echo "FAIL: tokens differ"; exit 1; }
kill -TERM "$server"
wait "$server" || true
server=

# Pipeline parallelism across the namespaces: one stage per "node", hidden states and logits
# over TCP, several prompts (groups in flight, a long prompt shared by both groups' steps).
prompts=(--prompt-ids "$prompt" --prompt-ids "$(seq -s, 10 80)" --prompt-ids 3,4)
want_pp="$("$tessera" generate --model "$work/model" "${prompts[@]}" --max-tokens 12 \
  --temperature 0 --ignore-eos --json 2>/dev/null)"
got_pp="$(timeout 120 "${mpi[@]}" "$tessera" generate --model "$work/model" "${prompts[@]}" \
  --max-tokens 12 --temperature 0 --ignore-eos --json -pp 2 2>"$work/pp.log")" ||
  { cat "$work/pp.log"; echo "FAIL: -pp 2"; exit 1; }
ids() { python3 -c 'import json,sys; print([json.loads(l)["output_ids"] for l in sys.stdin if l.startswith("{")])'; }
echo "one rank: $(echo "$want_pp" | ids); two stages: $(echo "$got_pp" | ids)"
[ "$(echo "$want_pp" | ids)" = "$(echo "$got_pp" | ids)" ] || { cat "$work/pp.log"; echo "FAIL: -pp 2 tokens differ"; exit 1; }
grep -q "pp stage 1/2" "$work/pp.log" || { cat "$work/pp.log"; echo "FAIL: no second stage"; exit 1; }
echo PASS
