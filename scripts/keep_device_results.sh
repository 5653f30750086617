#!/usr/bin/env bash
# Keep a GPU call's raw results in the repository, as measured: benchmarks/YYYY-MM-DD-<gpu>.jsonl (the benchmark's
# JSON lines) and benchmarks/YYYY-MM-DD-<gpu>-checks.jsonl (device_checks'), named from the lines themselves
# (measured_at / device fields); an existing file is never replaced.
#
#   bash scripts/keep_device_results.sh FILES_AT     # the folder the device tool brought $OUT back into
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# = 1 ] && [ -d "$1" ] || { echo "usage: $0 FOLDER (holding bench.jsonl and/or checks.jsonl)" >&2; exit 2; }
python3 - "$1" <<'PY'
import json
import re
import shutil
import sys
from pathlib import Path

src, dest = Path(sys.argv[1]), Path("benchmarks")
kept = 0
for name, suffix in (("bench.jsonl", ""), ("checks.jsonl", "-checks")):
    path = src / name
    if not path.is_file():
        print(f"{path}: not there")
        continue
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a last line cut off mid-write
    first = next((r for r in rows if r.get("device")), None)
    if first is None:
        sys.exit(f"{path}: no line names its device")
    day = str(first.get("measured_at") or first.get("date") or "")[:10]
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", day):
        sys.exit(f"{path}: no measured_at date in its lines")
    gpu = re.sub(r"[^a-z0-9]+", "-", first["device"].lower()).strip("-")
    target = dest / f"{day}-{gpu}{suffix}.jsonl"
    if target.exists():
        sys.exit(f"{target} exists: not replaced (move it away first)")
    dest.mkdir(exist_ok=True)
    shutil.copyfile(path, target)
    print(f"{path} -> {target} ({len(rows)} lines)")
    kept += 1
sys.exit(0 if kept else 1)
PY
