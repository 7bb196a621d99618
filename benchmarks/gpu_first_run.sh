#!/usr/bin/env bash
# md4's first run on a GPU: every check of docs/benchmarks.md "The first GPU run", on one H100/H200 in under
# 8 minutes. Needs torch with CUDA and `pip install -e .`; no network (OpenWebText-shaped rows use random tokens).
#
#   bash benchmarks/gpu_first_run.sh [OUT_DIR]        (default OUT_DIR: /tmp/md4-gpu-first-run)
#
# Each check prints one line, "PASS name: detail" or "FAIL name: detail" (its log is OUT_DIR/logs/NAME.log), and
# the end prints one markdown table (also OUT_DIR/table.md) to paste into docs/benchmarks.md. The exit code is the
# number of failed checks.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/md4-gpu-first-run}
rm -rf "$OUT" && mkdir -p "$OUT/logs"
export MD4_CACHE_DIR=$OUT/cache MASTER_ADDR=127.0.0.1 MASTER_PORT=29517 OUT
PY=${PYTHON:-python}
CORPUS=$OUT/corpus.txt
for _ in $(seq 30); do cat README.md docs/*.md; done > "$CORPUS"   # ~2 MB of characters
ROWS=()
FAILED=0

# check NAME TIMEOUT_S COMMAND...: run it, log it, record pass/fail, seconds and the last line of its output.
check() {
  local name=$1 limit=$2; shift 2
  local start=$SECONDS status detail
  if timeout "$limit" "$@" > "$OUT/logs/$name.log" 2>&1; then status=PASS; else status=FAIL; FAILED=$((FAILED + 1)); fi
  detail=$(grep -v '^\s*$' "$OUT/logs/$name.log" | tail -1 | cut -c1-160)
  echo "$status $name ($((SECONDS - start)) s): $detail"
  ROWS+=("| $name | $status | $((SECONDS - start)) | ${detail//|//} |")
}

$PY - <<'EOF' | tee "$OUT/machine.txt"
import torch
print(torch.__version__, "CUDA", torch.version.cuda, torch.cuda.get_device_name(0),
      f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
EOF

# 1. training: fp32 (TF32 matmuls), bf16, bf16 + compile + activation checkpointing; graph breaks are logged.
T=(--preset text8 --data "$CORPUS" --no-progress train.device=cuda train.batch_size=64 train.steps=30
   train.warmup_steps=5 train.log_every=5 train.eval_every=30 train.eval_batches=2 train.sample_every=30
   train.sample_steps=32 train.checkpoint_every=15)
check train-fp32 150 md4 train "${T[@]}" --out "$OUT/fp32" train.precision=fp32
check train-bf16 120 md4 train "${T[@]}" --out "$OUT/bf16"
check train-bf16-compile-ckpt 240 env TORCH_LOGS=graph_breaks,recompiles md4 train "${T[@]}" --out "$OUT/comp" \
  net.n_layers=4 train.compile=true train.activation_checkpointing=true
check compile-no-graph-breaks 5 bash -c "! grep -i 'graph break' '$OUT/logs/train-bf16-compile-ckpt.log'"

# 2. resume: 15 -> 30 on a copy against the uninterrupted run (on a GPU: small differences, not zero), then a
#    GPU checkpoint resumed on the CPU and a CPU-made checkpoint resumed on the GPU (generators of another device).
cp -r "$OUT/bf16" "$OUT/res"
check resume-same-device 120 md4 train --out "$OUT/res" --resume --checkpoint 15 --no-progress
check resume-matches 30 $PY - <<'EOF'
import os
from safetensors.torch import load_file
a, b = (load_file(f"{os.environ['OUT']}/{d}/checkpoints/step_00000030/model.safetensors") for d in ("bf16", "res"))
diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
print(f"max |weight difference| after resuming at 15: {diff:.2e}")
assert diff < 1e-2, diff
EOF
cp -r "$OUT/bf16" "$OUT/xcpu"
check resume-gpu-on-cpu 180 md4 train --out "$OUT/xcpu" --resume --checkpoint 15 --no-progress train.device=cpu \
  train.steps=17 train.eval_every=17 train.checkpoint_every=17
check train-cpu 120 md4 train "${T[@]}" --out "$OUT/cpu" train.device=cpu net.n_layers=1 train.batch_size=8 \
  train.steps=4 train.checkpoint_every=2 train.eval_every=4 train.sample_every=100
check resume-cpu-on-gpu 120 md4 train --out "$OUT/cpu" --resume --checkpoint 2 --no-progress train.device=cuda

# 3. sampling with every sampler, and the bound at the preset's batch (512 rows, micro-batched).
for s in "ancestral --precision bf16" "top_p" "mean" "exact --length 64" "confident --steps 32"; do
  check "sample-${s%% *}" 60 md4 sample "$OUT/bf16" --device cuda --num 4 --steps 64 --sampler $s
done
check eval-preset-batch 120 md4 eval "$OUT/bf16" --device cuda --precision bf16 --batch-size 512 --max-batches 1 \
  --steps 100 --json

# 4. torchrun: `--nproc 1` joins a one-rank NCCL group, so DDP and FSDP2 (bf16 gathers, fp32 reductions) run on
#    one GPU; FSDP2 + compile crashed at its first checkpoint before, so it also resumes. Then the GPU tests
#    (tests/test_gpu.py: TF32, CUDA -> CPU -> CUDA resume, DDP/FSDP2 plain and compiled on a tiny model) and the
#    check that the default suite hides the GPU.
D=(--preset text8 --data "$CORPUS" --no-progress train.device=cuda net.n_layers=2 train.batch_size=16
   train.grad_accum=2 train.steps=10 train.checkpoint_every=5 train.eval_every=10 train.eval_batches=2
   train.sample_every=10 train.sample_steps=16)
for p in "ddp false" "fsdp true"; do
  set -- $p
  check "nproc1-$1-compile-$2" 240 md4 train --nproc 1 "${D[@]}" --out "$OUT/$1-$2" train.parallel=$1 train.compile=$2
  check "nproc1-$1-compile-$2-resume" 240 md4 train --nproc 1 --out "$OUT/$1-$2" --resume --checkpoint 5 --no-progress
done
check pytest-gpu 300 $PY -m pytest -q -m gpu tests/test_gpu.py
check pytest-hides-gpu 60 $PY -m pytest -q tests/test_devices.py::test_the_suite_sees_no_gpu

# 5. throughput: tokens/s, MFU (measured peak and datasheet) and peak memory of text8 and owt-gpt2-small.
check bench 420 md4 bench --device cuda --models text8 owt-gpt2-small --modes bf16 bf16-compile --sampling \
  --markdown --json "$OUT/bench.json"
check owt-mfu-target 5 $PY - <<'EOF'
import json, os
rows = json.load(open(f"{os.environ['OUT']}/bench.json"))["train"]
row = next(r for r in rows if r["model"] == "owt-gpt2-small" and r["mode"] == "bf16-compile")
print(f"owt-gpt2-small bf16+compile: {row['tokens_per_second']:,.0f} tok/s, MFU {row.get('mfu_datasheet', 0):.1%} "
      f"of the datasheet peak (target 50%), peak {row['peak_cuda_mib'] / 1024:.1f} GiB")
assert row.get("mfu_datasheet", 0) >= 0.5
EOF
check owt-eval-preset-batch 180 $PY - <<'EOF'
import torch
from md4.config import build_config, data_spec_guess
from md4.evaluate import estimate_nelbo
from md4.models import build_model
config = build_config("owt-gpt2-small", ["train.device=cuda"])  # batch 512 x 1024, grad_accum 1: md4 eval's default
model = build_model(config, data_spec_guess(config)).cuda().eval()
x = torch.randint(0, 50257, (config.train.batch_size, 1024), generator=torch.Generator().manual_seed(0))
estimate = estimate_nelbo(model, [(x, None)], precision="bf16", micro_batch=config.train.batch_size)
print(f"owt-gpt2-small bound on one batch of 512 x 1024 in one micro-batch: {estimate.bits_per_token:.3f} "
      f"bits/token, peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
EOF

{
  echo "md4 first GPU run, $(date -u +%Y-%m-%d): $(cat "$OUT/machine.txt")"
  echo
  echo "| check | result | seconds | last line |"
  echo "| --- | --- | ---: | --- |"
  printf '%s\n' "${ROWS[@]}"
  echo
  sed -n '/^| model | mode/,$p' "$OUT/logs/bench.log"
} > "$OUT/table.md"
echo; cat "$OUT/table.md"
echo "$FAILED check(s) failed; logs in $OUT/logs"
exit "$FAILED"
