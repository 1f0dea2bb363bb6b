#!/usr/bin/env bash
# The GPU measurement of the training stages in one go, for a session that is lent a GPU machine.
#
#   here:      bash ../shared/gpu/pack.sh                  # fills .gpu/ (wheels, model, SST-2) for the air-gapped GPU
#   then:      the device tool's run, carry [".gpu"], command "bash bench/gpu_measure.sh", timeout ~540 s
#   after:     copy the JSON lines from $OUT/*.json into docs/benchmarks.md, with this command
#
# Each step is bounded so that a slow one cannot eat the session's device time; a failed step still leaves the
# JSON of the steps before it under $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp/gpu-measure}"
mkdir -p "$out"
# shellcheck disable=SC1091
source .gpu/setup.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/device.txt"

step() {  # step NAME SECONDS COMMAND...: run it, keep its last line (the JSON) in $OUT/NAME.json
  local name=$1 limit=$2
  shift 2
  echo "== $name (at most ${limit}s): $*"
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  echo "exit $? after $SECONDS s of the script" >> "$out/$name.log"
  tail -n 2 "$out/$name.log"
  grep '^{' "$out/$name.log" | tail -n 1 > "$out/$name.json" || true
}

# The bare-loop ceiling for the stage's own shapes, then the stage on full SST-2 with the shipped spec.
step ceiling_minilm_bs256 60 python3 .gpu/ceiling.py --model minilm --bs 256 --seq 32
step stage_full_sst2 300 python3 bench/gpu_efficiency.py --rows 67349 --min-words 0
# The same stage with the GPU batch the issue asks the profile to pick, for comparison.
step stage_full_sst2_bs256 240 python3 bench/gpu_efficiency.py --rows 67349 --min-words 0 \
  --set train.batch_size=256 --set student.batch_size=256 --set train.learning_rate=3e-4
ls -la "$out"
