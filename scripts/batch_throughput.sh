#!/usr/bin/env bash
# Throughput of `batch` to Parquet / WebDataset shards against infer's files, on the tiny model, the same
# images, on this machine (each run starts its own local Ray on 127.0.0.1; its rate counts after the start).
#   bash scripts/batch_throughput.sh        # 96 images 1024x768, processed at 256x192, maps at 1024x768
# Environment: OUT (default: a new temp folder), N (images, default 96), SIZE (images, default 1024x768),
# RES (processing, default 256x192), WORKERS (default 1). Results: $OUT/batch_throughput.log.
# The load average is printed before and after each run: other jobs on the machine slow every run.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)} N=${N:-96} SIZE=${SIZE:-1024x768} RES=${RES:-256x192} WORKERS=${WORKERS:-1}
LOG="$OUT/batch_throughput.log"
mkdir -p "$OUT"
export RAY_USAGE_STATS_ENABLED=0
load() { echo "load average $(cut -d' ' -f1-3 /proc/loadavg)"; }
{
  echo "== $(date -u +%FT%TZ) $(nproc) CPUs; N=$N SIZE=$SIZE RES=$RES WORKERS=$WORKERS"
  fe2e-deploy init-tiny "$OUT/tiny" >/dev/null
  python - "$OUT/images" "$N" "$SIZE" <<'PY'
import sys
from pathlib import Path
from fe2e_deploy.scenes import synthetic_scene
folder, n, (w, h) = Path(sys.argv[1]), int(sys.argv[2]), map(int, sys.argv[3].split("x"))
folder.mkdir(parents=True, exist_ok=True)
for i in range(n):
    synthetic_scene(w, h, seed=1000 + i).save(folder / f"scene{i:03d}.png")
PY
  common=(--engine "$OUT/tiny" --processing-res "$RES" --workers "$WORKERS" --no-progress)
  run() {  # NAME ARGS...: one batch run, its summary, its output bytes per image
    local name=$1; shift
    echo "-- $name: $(load)"
    /usr/bin/time -f "wall %e s" fe2e-deploy batch "$OUT/images" -o "$OUT/$name" "${common[@]}" "$@" 2>&1 \
      | grep -E "written|wall"
    echo "   $(load); $(du -sb "$OUT/$name" | cut -f1) bytes, $(( $(du -sb "$OUT/$name" | cut -f1) / N )) per image"
  }
  run files_all                                            # infer's default: 5 maps per image
  run files_f16 --outputs depth_npy,normals_npy --npy-dtype float16   # the same maps as the shards, as files
  run parquet --output-format parquet
  run webdataset --output-format webdataset
  run parquet_u8 --output-format parquet --normals-dtype uint8
} 2>&1 | tee "$LOG"
