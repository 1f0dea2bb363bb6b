#!/usr/bin/env bash
# The GPU measurement of the training stages in one go, for a session that is lent a GPU machine.
#
#   here:      bash ../shared/gpu/pack.sh                  # fills .gpu/ (wheels, model, SST-2) for the air-gapped GPU
#   then:      the device tool's run, carry [".gpu"], command "bash bench/gpu_measure.sh", timeout 590 s
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

# In order of what matters most, each bounded (50 + 220 + 130 + 110 + 70 = 580 s at most, inside the device's
# 600 s). The bare-loop ceiling for the stage's own shapes, then the stage on full SST-2 with the shipped spec and
# the GPU profile (auto batch, lr scaled, checkpoints by time with background upload, no per-step host sync; the
# distill stage with its bf16 teacher and, the spec's 2 student epochs on 1 GPU, the teacher cache on):
# distill_over_finetune there is issue 12's item 4; teacher_dev_accuracy and teacher_stopped_at_epoch (model
# selection on holdout rows drawn like dev.tsv, early stopping from epoch 1) are item 3, and come as a first JSON
# line in stage_full_sst2.log as soon as fine-tuning ends, so a step that runs out of time in distill still has
# them (stage_full_sst2.json keeps the last line). 220 s: fine-tuning now runs its 2 epochs (it stopped at 0.63).
step ceiling_minilm_bs256 50 python3 .gpu/ceiling.py --model minilm --bs 256 --seq 32
step stage_full_sst2 220 python3 bench/gpu_efficiency.py --rows 67349 --min-words 0 --set 'student.export=[]'
grep '"partial": "finetune"' "$out/stage_full_sst2.log" | tail -n 1 > "$out/stage_full_sst2_finetune.json" || true
# A BERT-base-size model (random init, 12 x 768) at sequence length 128: stage and bare loop.
step stage_bert_base_seq128 130 python3 bench/gpu_efficiency.py --bert-base --rows 67349 --min-words 0 \
  --ceiling-steps 20 --set 'student.export=[]'
# The distill stage with the teacher cache off, on (a fresh pass, stored) and on again (the stored copy read, as
# by a retried pod), on a third of SST-2: teacher_pass_seconds, teacher_cache_store_seconds and
# teacher_cache_read_seconds (reuse_over_pass) size teacher_cache.STORE_MAX_BYTES, raised here to 4 GiB so that
# the cache with hidden states (about 0.5 GB in bf16 for these rows) is stored and read back.
step distill_teacher_cache 110 python3 bench/gpu_efficiency.py --rows 20000 --min-words 0 --compare-teacher-cache \
  --teacher-cache-store-max-mib 4096 --set 'student.export=[]'
# The profile's batch off (the spec's batch 32, as before issue 12), on 10,000 rows (20,000, then 15,000, before the
# seconds went to stage_full_sst2 and distill_teacher_cache; a rate does not need more rows), to compare.
step stage_sst2_bs32 70 python3 bench/gpu_efficiency.py --rows 10000 --min-words 0 \
  --set train.gpu_batch_size=null --set student.gpu_batch_size=null --set 'student.export=[]'
ls -la "$out"
