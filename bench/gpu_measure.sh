#!/usr/bin/env bash
# The GPU measurement of the training stages in one go, for a session that is lent a GPU machine.
#
#   here:      EXTRA_WHEELS="$(grep -i '^nvidia-ml-py==' requirements.txt)" bash ../shared/gpu/pack.sh
#                                                         # fills .gpu/ (wheels, model, SST-2) for the air-gapped GPU;
#                                                         # nvidia-ml-py for the stages' energy figures (tasks/cost.py)
#   then:      the device tool's run, carry [".gpu"], command "bash bench/gpu_measure.sh", timeout 590 s
#   after:     copy the JSON lines from $OUT/*.json into docs/benchmarks.md, with this command
#
#   dry run:   bash bench/gpu_measure.sh --dry-run         # or GPU_MEASURE_DRY_RUN=1; CPU, no .gpu/, ~1 min on 2 cores
#
# The dry run checks the plumbing on CPU (tests/test_gpu_efficiency_bench.py, in `make test`): no .gpu/setup.sh,
# no nvidia-smi, .venv/bin/python (or $GPU_MEASURE_PYTHON) instead of python3, and every bench step with exactly
# its flags plus --smoke (tiny random model, 96 rows) and --peak-tflops 0.5 (for MFU; a GPU's peak comes from its
# name). The ceiling step, whose .gpu/ceiling.py needs CUDA, only has its flags checked against
# ../shared/gpu/ceiling.py (the file pack.sh copies; GPU_CEILING_PY to point elsewhere), or is skipped, saying so,
# where that is absent.
#
# Each step is bounded so that a slow one cannot eat the session's device time, and no step runs past
# GPU_MEASURE_BUDGET_S (570 s from the script's start, setup included: the device's 590 s timeout would otherwise
# kill the last step before it writes anything). A failed step still leaves the JSON of the steps before it under
# $OUT; $OUT/steps.tsv has each step's exit status, seconds and limit (124: it ran out of time), and the script
# exits 1 if any step failed. GPU_MEASURE_STEPS="NAME ..." runs only those steps (a rerun of one that failed).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
dry=${GPU_MEASURE_DRY_RUN:-0}
[ "${1:-}" = --dry-run ] && dry=1
out="${OUT:-/tmp/gpu-measure}"
gpu=${GPU_MEASURE_GPU_DIR:-.gpu}  # what pack.sh filled (the test points it at a stand-in)
budget=${GPU_MEASURE_BUDGET_S:-570}
# The limits below are the H100's. The dry run's CPU steps are small but share a test machine that may be busy:
# they get GPU_MEASURE_LIMIT_SCALE times each limit (3 in a dry run) and no script budget of their own (the
# test's subprocess timeout bounds them).
scale=${GPU_MEASURE_LIMIT_SCALE:-1}
if [ "$dry" = 1 ]; then
  scale=${GPU_MEASURE_LIMIT_SCALE:-3}
  budget=${GPU_MEASURE_BUDGET_S:-100000}
fi
mkdir -p "$out"
printf 'step\texit\tseconds\tlimit\n' > "$out/steps.tsv"
if [ "$dry" = 1 ]; then
  py=${GPU_MEASURE_PYTHON:-.venv/bin/python}
  [ -x "$py" ] || py=python3
  # --peak-tflops stands in for the dense peak the GPU run finds from the device's name: the MFU figures get computed.
  smoke=(--smoke --peak-tflops 0.5)
  export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
  echo "dry run on CPU ($py): no .gpu/setup.sh, no nvidia-smi; bench steps with ${smoke[*]}" | tee "$out/device.txt"
else
  py=python3
  smoke=()
  # Not in a pipe: setup.sh exports what the steps need.
  # shellcheck disable=SC1091
  source "$gpu/setup.sh" > "$out/setup.log" 2>&1
  cat "$out/setup.log"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/device.txt"
fi
# DataLoader workers (4 on a GPU) hand batches over in /dev/shm; the distill stage's teacher-cache batches carry
# hidden states, tens of MB each: a container's default 64 MB /dev/shm would fail them ("Bus error").
df -h /dev/shm 2>/dev/null | tail -n 1 | sed 's/^/shm: /' | tee -a "$out/device.txt"
df -h "${TMPDIR:-/tmp}" 2>/dev/null | tail -n 1 | sed 's/^/tmp: /' | tee -a "$out/device.txt"  # the benches' models

failed=0
step() {  # step NAME SECONDS COMMAND...: run it, keep its last JSON line in $OUT/NAME.json, its exit in steps.tsv
  local name=$1 limit=$2 left rc t0
  shift 2
  if [ -n "${GPU_MEASURE_STEPS:-}" ] && [[ " $GPU_MEASURE_STEPS " != *" $name "* ]]; then
    echo "== $name not run: not in GPU_MEASURE_STEPS" | tee "$out/$name.log"
    printf '%s\tnot run\t0\t0\n' "$name" >> "$out/steps.tsv"
    return
  fi
  limit=$((limit * scale))
  left=$((budget - SECONDS))
  if [ "$left" -lt 15 ]; then
    echo "== $name skipped: ${left}s left of the script's ${budget}s" | tee "$out/$name.log"
    printf '%s\tskipped\t0\t0\n' "$name" >> "$out/steps.tsv"
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (at most ${limit}s): $*"
  t0=$SECONDS
  timeout -k 5 "$limit" "$@" > "$out/$name.log" 2>&1
  rc=$?
  [ "$rc" = 0 ] || failed=1
  echo "exit $rc after $SECONDS s of the script" >> "$out/$name.log"
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" "$limit" >> "$out/steps.tsv"
  tail -n 2 "$out/$name.log"
  grep '^{' "$out/$name.log" | tail -n 1 > "$out/$name.json" || true
}

bench() {  # bench NAME SECONDS FLAGS...: bench/gpu_efficiency.py FLAGS (and --smoke --peak-tflops 0.5 in a dry run)
  local name=$1 limit=$2
  shift 2
  step "$name" "$limit" "$py" bench/gpu_efficiency.py "$@" ${smoke[@]+"${smoke[@]}"}
}

# The dry run's stand-in for ceiling.py: each flag the step passes is one ceiling.py defines (an int where it
# says type=int), and the model is one of its names. One JSON line, with no figures.
check_ceiling_flags='
import ast, json, sys
path, argv = sys.argv[1], sys.argv[2:]
tree = ast.parse(open(path).read())
defined = {}
for node in ast.walk(tree):
    if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
        kinds = {k.arg: getattr(k.value, "id", None) for k in node.keywords}
        for a in node.args:
            defined[a.value] = kinds.get("type")
names = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
for i, flag in enumerate(argv):
    if not flag.startswith("--"):
        continue
    if flag not in defined:
        sys.exit(f"{path} defines no {flag} (it has {sorted(defined)})")
    if defined[flag] == "int":
        int(argv[i + 1])
    if flag == "--model" and argv[i + 1] not in names:
        sys.exit(f"{path} knows no model {argv[i + 1]!r}")
print(json.dumps({"dry_run": True, "ceiling_py": path, "flags_checked": argv}))
'

# In order of what matters most, each bounded (50 + 220 + 130 + 110 + 70 = 580 s at most; GPU_MEASURE_BUDGET_S cuts
# the last ones short when earlier ones run to their limits). The bare-loop ceiling for the stage's own shapes, then
# the stage on full SST-2 with the shipped spec and the GPU profile (auto batch, lr scaled, checkpoints by time with
# background upload, no per-step host sync; the distill stage with its bf16 teacher and, the spec's 2 student epochs
# on 1 GPU, the live teacher: auto wants 3 epochs): distill_over_finetune there is issue 12's item 4; teacher_dev_accuracy and
# teacher_stopped_at_epoch (model selection on holdout rows drawn like dev.tsv, early stopping from epoch 1) are
# item 3, and come as a first JSON line in stage_full_sst2.log as soon as fine-tuning ends (with the fine-tune
# stage's samples_per_second), so a step that runs out of time in distill still has them (stage_full_sst2.json
# keeps the last line). 220 s: fine-tuning now runs its 2 epochs (it stopped at 0.63).
ceiling_args=(--model minilm --bs 256 --seq 32)
if [ "$dry" = 1 ]; then
  ceiling_py=${GPU_CEILING_PY:-../shared/gpu/ceiling.py}
  if [ -f "$ceiling_py" ]; then
    echo "== ceiling_minilm_bs256: dry run, .gpu/ceiling.py needs CUDA; checking its flags against $ceiling_py"
    check=$(mktemp --suffix=.py)
    printf '%s' "$check_ceiling_flags" > "$check"
    step ceiling_minilm_bs256 50 "$py" "$check" "$ceiling_py" "${ceiling_args[@]}"
    rm -f "$check"
  else
    echo "== ceiling_minilm_bs256 skipped: dry run, and $ceiling_py (what pack.sh copies to .gpu/) is absent" \
      | tee "$out/ceiling_minilm_bs256.log"
    printf '%s\tskipped\t0\t0\n' ceiling_minilm_bs256 >> "$out/steps.tsv"
  fi
else
  step ceiling_minilm_bs256 50 "$py" "$gpu/ceiling.py" "${ceiling_args[@]}"
fi
bench stage_full_sst2 220 --rows 67349 --min-words 0 --set 'student.export=[]'
grep '"partial": "finetune"' "$out/stage_full_sst2.log" 2>/dev/null | tail -n 1 > "$out/stage_full_sst2_finetune.json" \
  || true
# A BERT-base-size model (random init, 12 x 768) at sequence length 128: stage and bare loop.
bench stage_bert_base_seq128 130 --bert-base --rows 67349 --min-words 0 --ceiling-steps 20 --set 'student.export=[]'
# The distill stage with the teacher cache off, on (a fresh pass, stored) and on again (the stored copy read, as
# by a retried pod), on a third of SST-2: teacher_pass_seconds, teacher_cache_store_seconds and
# teacher_cache_read_seconds (reuse_over_pass) size teacher_cache.STORE_MAX_BYTES, raised here to 4 GiB so that
# the cache with hidden states (about 0.5 GB in bf16 for these rows) is stored and read back. A JSON line after
# each of the three runs (teacher_cache_compare so far), so a step that runs out of time keeps those done.
bench distill_teacher_cache 110 --rows 20000 --min-words 0 --compare-teacher-cache \
  --teacher-cache-store-max-mib 4096 --set 'student.export=[]'
# The profile's batch off (the spec's batch 32, as before issue 12), on 6,000 rows (20,000, then 15,000 and 10,000,
# before the seconds went to stage_full_sst2 and distill_teacher_cache, and batch 32 really applied: ~340 steps in
# 2 epochs, at the old stage's 400-700 samples/s 15-30 s of fine-tuning; a rate does not need more rows), to
# compare. Its fine-tune rate is in the first JSON line, kept if the step runs out of time in distill.
bench stage_sst2_bs32 70 --rows 6000 --min-words 0 \
  --set train.gpu_batch_size=null --set student.gpu_batch_size=null --set 'student.export=[]'
ls -la "$out"
cat "$out/steps.tsv"
exit "$failed"  # 1 when a step failed or ran out of time (its log says which); skipped steps do not count
