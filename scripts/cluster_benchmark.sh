#!/usr/bin/env bash
# Throughput of `batch` (1 and 2 workers) against `infer`, and of `serve` under concurrent load, on the
# tiny model, on this machine (a local Ray cluster on 127.0.0.1). Results: $OUT/cluster_benchmark.log.
#   bash scripts/cluster_benchmark.sh                 # 48 images 256x192 processed at 256x192
# Environment: OUT (default: a new temp folder), N (images, default 48), RES (default 256x192),
# REQUESTS (serve requests per load level, default 200), PORT (default 8765).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)} N=${N:-48} RES=${RES:-256x192} REQUESTS=${REQUESTS:-200} PORT=${PORT:-8765}
LOG="$OUT/cluster_benchmark.log"
mkdir -p "$OUT"
export RAY_USAGE_STATS_ENABLED=0
{
  echo "== $(date -u +%FT%TZ) $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg); N=$N RES=$RES"
  fe2e-deploy init-tiny "$OUT/tiny" >/dev/null
  python - "$OUT/images" "$N" "$RES" <<'PY'
import sys
from pathlib import Path
from fe2e_deploy.scenes import synthetic_scene
folder, n, (w, h) = Path(sys.argv[1]), int(sys.argv[2]), map(int, sys.argv[3].split("x"))
folder.mkdir(parents=True, exist_ok=True)
for i in range(n):
    synthetic_scene(w, h, seed=1000 + i).save(folder / f"scene{i:03d}.png")
PY
  common=(--engine "$OUT/tiny" --processing-res "$RES" --no-progress)
  echo "-- infer (one process)"
  /usr/bin/time -f "wall %e s" fe2e-deploy infer "$OUT/images" -o "$OUT/infer" "${common[@]}" 2>&1 | tail -2
  for w in 1 2; do
    echo "-- batch --workers $w (local Ray cluster started by the command)"
    /usr/bin/time -f "wall %e s" fe2e-deploy batch "$OUT/images" -o "$OUT/batch$w" --workers "$w" "${common[@]}" \
      2>&1 | grep -E "written|wall"
  done
  echo "-- serve (1 replica, max batch 8) under load"
  fe2e-deploy serve --engine "$OUT/tiny" --processing-res "$RES" --port "$PORT" >"$OUT/serve.log" 2>&1 &
  pid=$!
  for _ in $(seq 240); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.5; done
  for c in 1 8; do
    echo "concurrency $c: $(python -m fe2e_deploy.cluster.load_test "http://127.0.0.1:$PORT" "$OUT/images/scene000.png" \
      --requests "$REQUESTS" --concurrency "$c")"
  done
  kill -TERM "$pid"; wait "$pid" || true
} 2>&1 | tee "$LOG"
