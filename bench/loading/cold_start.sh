#!/usr/bin/env bash
# Cold-start cost of each --load-format: drops the page cache (as root: /proc/sys/vm/drop_caches;
# otherwise evicts the model's files with posix_fadvise DONTNEED), then times `tessera generate`
# of one token, which loads the weights and runs one forward pass (for mmap, that pass is where
# the pages are faulted in). Prints the engine's load line and the wall time.
#   bench/loading/cold_start.sh build/tessera MODEL_DIR [REPEATS]
set -euo pipefail
tessera="$1"
model="$2"
repeats="${3:-2}"
evict() {
  sync
  if [ "$(id -u)" -eq 0 ] && echo 3 >/proc/sys/vm/drop_caches 2>/dev/null; then
    return
  fi
  python3 - "$model" <<'PY'
import os, sys
for name in os.listdir(sys.argv[1]):
    path = os.path.join(sys.argv[1], name)
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
PY
}
for run in $(seq 1 "$repeats"); do
  for format in safetensors mmap; do
    evict
    resident="$(fincore --bytes --noheadings "$model"/*.safetensors 2>/dev/null | awk '{s+=$1} END {print s+0}')"
    start=$(date +%s.%N)
    log="$("$tessera" generate --model "$model" --prompt-ids 1,2,3,4 --max-tokens 1 \
            --temperature 0 --load-format "$format" --json 2>&1 >/dev/null)"
    end=$(date +%s.%N)
    line="$(grep -o 'loaded .*' <<<"$log" | sed 's/ from [^:]*:/:/')"
    printf '%-11s run %d: cached before %s bytes; %s; load + first token %.2f s\n' \
      "$format" "$run" "$resident" "$line" "$(echo "$end - $start" | bc -l)"
  done
done
