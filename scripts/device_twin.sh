#!/usr/bin/env bash
# The device twin: the GPU call (`scripts/device_benchmark.sh`, TINY=1, on the CPU) run here under the GPU image's
# versions (Python 3.12, torch 2.11.0, numpy 2.5.2, onnx 1.23.1, ...; no diffusers), installed exactly as on the GPU
# machine (the carried wheels --no-deps into a target folder, the project editable without build isolation), and then
# a check that bench.jsonl has a measured row for every engine at every resolution. It finds what breaks on those
# versions before a device call does.
#
#   bash scripts/device_twin.sh                          # build the environment once (cached), run, check
#   RESOLUTIONS=64x48 bash scripts/device_twin.sh        # one resolution
#   bash scripts/device_twin.sh --build                  # only make (or reuse) the environment
#   bash scripts/device_twin.sh --python                 # print the twin's python (after making the environment)
#   bash scripts/device_twin.sh --check FILE [ENGINES [RESOLUTIONS]]   # only the row check of a bench.jsonl
#
# Environment: FE2E_TWIN_DIR (the cache; default ~/.cache/fe2e-deploy/device-twin), TWIN_BASE_PYTHON (the Python
# the environment is made from; default pyenv's 3.12, else python3.12 on PATH), OUT (outputs; default a new temp
# folder), RESOLUTIONS (default "64x48 96x64 128x32"), ENGINES (default: device_benchmark.sh's), BUDGET and LIMIT
# (seconds; defaults sized for this 2-core machine so that the budget skips nothing), CHECK_PYTHON (python of --check).
# The environment counts as made only once its stamp (the version list, written last) is there; a changed list, or
# a build that was killed half-way, makes it anew.
set -uo pipefail
# The whole script is one brace group, which bash reads whole before running it: an edit of this file during a run
# (others work in this checkout) does not change the run.
{
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

# The GPU image's versions (the device tool's KINDS.md); the unpinned ones are there in some version.
TWIN_PINNED=(
  torch==2.11.0 triton==3.6.0 numpy==2.5.2 onnx==1.23.1 onnx-ir==1.0.0 onnxruntime==1.30.0 onnxscript==0.7.2
  safetensors==0.8.0 huggingface_hub==1.33.0 transformers==5.17.0 accelerate==1.15.0
)
TWIN_UNPINNED=(
  peft typer pillow tqdm matplotlib deflate plyfile setuptools regex requests filelock zipp psutil packaging
)
TWIN_FORMAT=1  # raise to make every cached environment anew

die() { echo "device_twin: $*" >&2; exit 2; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# The row check: every engine of ENGINES has a measured row (e2e_median_s; for `attention`, at least one
# attention-<backend> row with median_s) at every resolution; prints what is missing or skipped, exit 1 if any.
check_rows() {
  local py=${CHECK_PYTHON:-python3}
  "$py" - "$@" <<'PY'
import json
import sys

path = sys.argv[1]
engines = [e.strip() for e in sys.argv[2].split(",") if e.strip()]
resolutions = []
for text in sys.argv[3].replace(",", " ").split():
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        sys.exit(f"check: resolution {text!r} is not WIDTHxHEIGHT")
    resolutions.append(f"{w}x{h}")
if not engines or not resolutions:
    sys.exit("check: no engines or no resolutions to check")
try:
    with open(path) as fh:
        lines = [line for line in fh if line.strip()]
except OSError as exc:
    print(f"check: cannot read {path}: {exc}")
    sys.exit(1)
rows, bad = [], 0
for number, line in enumerate(lines, 1):
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        print(f"check: {path}:{number} is not JSON ({exc})")
        bad += 1
        continue
    if isinstance(row, dict):
        rows.append(row)
problems, notes = [], []
for res in resolutions:
    here = [r for r in rows if r.get("resolution") == res]
    for engine in engines:
        if engine == "attention":
            mine = [r for r in here if r.get("kind") == "attention" or r.get("engine") == "attention"]
            measured = [r for r in mine if r.get("median_s") is not None and "skipped" not in r]
            skipped = [r for r in mine if "skipped" in r]
            if measured:
                names = ", ".join(r.get("engine", "?") for r in measured)
                notes += [f"  {r.get('engine', '?')} @ {res}: {r['skipped']}" for r in skipped]
                print(f"ok       attention @ {res}: {names}")
            elif skipped:
                problems.append(f"SKIPPED  attention @ {res}: " + "; ".join(str(r["skipped"]) for r in skipped))
            else:
                problems.append(f"MISSING  attention @ {res}")
            continue
        mine = [r for r in here if r.get("engine") == engine]
        measured = [r for r in mine if r.get("e2e_median_s") is not None and "skipped" not in r]
        if measured:
            print(f"ok       {engine} @ {res}: e2e {measured[-1]['e2e_median_s'] * 1e3:.1f} ms")
        elif any("failed" in r for r in mine):
            problems.append(f"FAILED   {engine} @ {res}: " + "; ".join(str(r["failed"]) for r in mine if "failed" in r))
        elif mine and any("skipped" in r for r in mine):
            reasons = "; ".join(str(r["skipped"]) for r in mine if "skipped" in r)
            problems.append(f"SKIPPED  {engine} @ {res}: {reasons}")
        else:
            problems.append(f"MISSING  {engine} @ {res}")
if notes:
    print("attention backends that do not run here (not counted as missing):")
    print("\n".join(notes))
if problems:
    print("\n".join(problems))
total = len(engines) * len(resolutions)
if problems or bad:
    not_json = f", {bad} line(s) not JSON" if bad else ""
    print(f"check: {len(problems)} of {total} engine x resolution rows missing or skipped{not_json} in {path}")
    sys.exit(1)
print(f"check: all {total} engine x resolution rows measured in {path}")
PY
}

default_engines() {
  sed -n 's/^ENGINES=\${ENGINES:-\(.*\)}$/\1/p' scripts/device_benchmark.sh | head -n 1
}

if [ "${1:-}" = --check ]; then
  [ $# -ge 2 ] || die "usage: $0 --check FILE [ENGINES [RESOLUTIONS]]"
  check_rows "$2" "${3:-$(default_engines)}" "${4:-${RESOLUTIONS:-64x48 96x64 128x32}}"
  exit $?
fi
case "${1:-}" in
  "" | --build | --python) ;;
  -h | --help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) die "unknown argument ${1} (see --help)" ;;
esac

# --python: only the path on standard output, everything else on standard error
exec 3>&1
[ "${1:-}" = --python ] && exec 1>&2

# --- the base Python: the GPU image has 3.12 ---
find_base_python() {
  local candidate real
  if [ -n "${TWIN_BASE_PYTHON:-}" ]; then echo "$TWIN_BASE_PYTHON"; return; fi
  for candidate in /root/.pyenv/versions/3.12.1/bin/python3.12 "$HOME"/.pyenv/versions/3.12*/bin/python3.12; do
    if [ -x "$candidate" ]; then echo "$candidate"; return; fi
  done
  if command -v python3.12 >/dev/null && real=$(python3.12 -c 'import sys; print(sys.executable)' 2>/dev/null); then
    echo "$real"; return
  fi
  echo "device_twin: WARNING: no Python 3.12 found (the GPU image has 3.12.3); using $(command -v python3)" >&2
  command -v python3
}
BASE=$(find_base_python) || die "no python found"
BASE_VERSION=$("$BASE" -c 'import sys; print(".".join(map(str, sys.version_info[:3])))') || die "$BASE does not run"
case "$BASE_VERSION" in
  3.12.*) ;;
  *) echo "device_twin: WARNING: the twin uses Python $BASE_VERSION ($BASE), not 3.12 like the GPU image" >&2 ;;
esac

TWIN_DIR=${FE2E_TWIN_DIR:-$HOME/.cache/fe2e-deploy/device-twin}
VENV=$TWIN_DIR/venv
STAMP=$VENV/.twin-stamp
TPY=$VENV/bin/python
KEY=$(printf 'format %s\npython %s %s\n' "$TWIN_FORMAT" "$BASE_VERSION" "$BASE"; printf '%s\n' "${TWIN_PINNED[@]}" "${TWIN_UNPINNED[@]}")
mkdir -p "$TWIN_DIR" || die "cannot make $TWIN_DIR"

# Each pinned version as PyPI has it; a missing one becomes the nearest that exists, said loudly.
resolve_pins() {
  "$TPY" - "${TWIN_PINNED[@]}" <<'PY'
import subprocess
import sys

from pip._vendor.packaging.version import InvalidVersion, Version


def parse(text):
    try:
        return Version(text)
    except InvalidVersion:
        return None


def distance(version, wanted):
    a, b = ((list(v.release) + [0, 0, 0])[:3] for v in (version, wanted))
    return (abs(a[0] - b[0]), abs(a[1] - b[1]), abs(a[2] - b[2]), version > wanted)


for spec in sys.argv[1:]:
    name, _, want = spec.partition("==")
    proc = subprocess.run([sys.executable, "-m", "pip", "index", "versions", name], capture_output=True, text=True)
    found = [line.split(":", 1)[1] for line in proc.stdout.splitlines() if line.startswith("Available versions:")]
    versions = [v.strip() for v in found[0].split(",")] if found else []
    known = [v for v in map(parse, versions) if v is not None and not v.is_prerelease]
    if want in versions or not known:
        if not known:
            why = proc.stderr.strip()[-200:]
            print(f"device_twin: cannot list the versions of {name} ({why}); asking for {spec}", file=sys.stderr)
        print(spec)
        continue
    nearest = min(known, key=lambda v: distance(v, Version(want)))
    bar = "!" * 78
    print(
        f"{bar}\ndevice_twin: {name}=={want} is NOT on the index; using the nearest, {name}=={nearest}\n{bar}",
        file=sys.stderr,
    )
    print(f"{name}=={nearest}")
PY
}

build_env() {
  echo "== twin: making the environment in $VENV from $BASE (Python $BASE_VERSION)"
  rm -rf "$VENV" || die "cannot remove the old $VENV"
  "$BASE" -m venv "$VENV" || die "venv failed"
  local pins
  pins=$(resolve_pins) || die "resolving the pinned versions failed"
  # shellcheck disable=SC2086
  "$TPY" -m pip install --no-input --progress-bar off $pins "${TWIN_UNPINNED[@]}" \
    || die "pip install failed: the environment is not made (its stamp is not written)"
  "$TPY" - $pins <<'PY' || die "the environment does not have the versions asked for"
import importlib
import importlib.metadata as md
import sys

wrong = [s for s in sys.argv[1:] if md.version(s.split("==")[0]) != s.split("==")[1]]
modules = "torch numpy onnx onnxruntime onnxscript safetensors huggingface_hub transformers accelerate peft typer PIL"
for module in [*modules.split(), "matplotlib", "deflate", "plyfile"]:
    importlib.import_module(module)
try:
    import diffusers  # noqa: F401
except ImportError:
    pass
else:
    wrong.append("diffusers is installed (the GPU image has none; it comes from the carried wheels)")
if wrong:
    sys.exit(f"wrong versions: {wrong}")
PY
  "$TPY" -m pip freeze >"$VENV/.twin-freeze.txt"
  printf '%s\n' "$pins" >"$VENV/.twin-resolved.txt"
  printf '%s\n' "$KEY" >"$STAMP.tmp" && mv "$STAMP.tmp" "$STAMP" || die "cannot write $STAMP"
}

# One maker at a time: exclusive lock to make the environment, then a shared one while it is used.
exec 9>"$TWIN_DIR/.lock"
command -v flock >/dev/null && flock -x 9
started=$(now)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$KEY" ] && [ -x "$TPY" ]; then
  ENV_STATE=warm
else
  [ -e "$VENV" ] && echo "== twin: $VENV is stale or half-made (no matching stamp): making it anew"
  build_env
  ENV_STATE=cold
fi
ENV_S=$(elapsed "$started")
command -v flock >/dev/null && flock -s 9
echo "== twin: environment $ENV_STATE in ${ENV_S} s: $TPY ($("$TPY" -c 'import sys, torch, numpy; print(f"Python {sys.version.split()[0]}, torch {torch.__version__}, numpy {numpy.__version__}")'))"
[ "${1:-}" = --build ] && exit 0
if [ "${1:-}" = --python ]; then echo "$TPY" >&3; exit 0; fi

# --- the carried wheels, then the GPU call ---
if ! bash scripts/fetch_device_wheels.sh --missing; then
  bash scripts/fetch_device_wheels.sh || die "fetching the carried wheels failed"
fi
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT" || die "cannot make $OUT"
OUT=$(cd "$OUT" && pwd)
RESOLUTIONS=${RESOLUTIONS:-64x48 96x64 128x32}
ENGINES_CHECKED=${ENGINES:-$(default_engines)}
[ -n "$ENGINES_CHECKED" ] || die "cannot read the default ENGINES of scripts/device_benchmark.sh"
nres=$(echo "$RESOLUTIONS" | wc -w)
# The benchmark skips an engine whose estimated cost exceeds what is left of BUDGET; the compiled engines' cold
# compiles take minutes on a loaded 2-core machine, so the twin gives each resolution 20 minutes.
BUDGET=${BUDGET:-$((1200 * nres))}
LIMIT=${LIMIT:-$((BUDGET + 600))}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
echo "== twin: TINY=1 scripts/device_benchmark.sh, RESOLUTIONS=\"$RESOLUTIONS\", BUDGET=$BUDGET, LIMIT=$LIMIT, OUT=$OUT"
started=$(now)
# As on the GPU machine: nothing of this machine's Python on the path, a cold compile cache, the wheels and the
# project installed by the script itself. The script is read whole first (bash -c, $0 its own path), so that an
# edit of it during the run (others work in this checkout) cannot break the run half-way.
script=$(cat scripts/device_benchmark.sh) || die "cannot read scripts/device_benchmark.sh"
env -u PYTHONPATH -u PYTHONHOME -u VIRTUAL_ENV PYTHONNOUSERSITE=1 PATH="$VENV/bin:$PATH" \
  PYTHON="$TPY" TINY=1 RESOLUTIONS="$RESOLUTIONS" OUT="$OUT" SITE="$scratch/site" BUDGET="$BUDGET" LIMIT="$LIMIT" \
  TORCHINDUCTOR_CACHE_DIR="$scratch/inductor" TRITON_CACHE_DIR="$scratch/triton" \
  ${ENGINES:+ENGINES="$ENGINES"} bash -c "$script" "$ROOT/scripts/device_benchmark.sh"
rc=$?
BENCH_S=$(elapsed "$started")

echo "== twin: row check"
CHECK_PYTHON=$TPY check_rows "$OUT/bench.jsonl" "$ENGINES_CHECKED" "$RESOLUTIONS"
check_rc=$?

main_rc=0
if [ -x .venv/bin/python ]; then
  if where=$(.venv/bin/python -c 'import fe2e_deploy; print(fe2e_deploy.__file__)' 2>&1); then
    echo "== twin: the main .venv still imports fe2e_deploy ($where)"
  else
    echo "== twin: the main .venv no longer imports fe2e_deploy: $where"
    main_rc=5
  fi
fi
printf '{"env": "%s", "env_s": %s, "benchmark_s": %s, "benchmark_rc": %s, "check_rc": %s, "python": "%s"}\n' \
  "$ENV_STATE" "$ENV_S" "$BENCH_S" "$rc" "$check_rc" "$TPY" >"$OUT/twin_times.json"
echo "== twin: environment $ENV_STATE ${ENV_S} s; benchmark wall ${BENCH_S} s (exit code $rc); row check exit code $check_rc"
[ "$rc" != 0 ] && exit "$rc"
[ "$check_rc" != 0 ] && exit 1
exit "$main_rc"
}
