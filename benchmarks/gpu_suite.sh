#!/usr/bin/env bash
# The performance benchmarks on one GPU, as one prepared script (about 8-10 minutes on an H100/H200 per part; steps 1-5
# are the epoch figures, step 6 the experiments, step 7 the batched verifier, step 8 the exact gradient: drop parts when
# device time is short).
#
#   bash benchmarks/gpu_suite.sh [OUTDIR] [main|experiments|verifier|exact|all]  (defaults: $OUT if set, else gpu_results; all)
# "main" (steps 1-5, at most 10 min by the step limits), "experiments" (step 6, at most 7 min), "verifier" (step 7,
# at most 10 min) and "exact" (step 8, at most 4 min) fit one 10-minute device call each.
#
# Models are the real SD1.4 architecture and the CLIP-FlanT5-XL/XXL shapes with random weights (no download: a machine
# without network can run it), plus the toy world when it is installed. Timings do not depend on the weights' values;
# scores do, so the precision check uses the trained toy world only.
# Offline GPU machine without diffusers/transformers: on a machine with PyPI first run
#   pip download --no-deps -d gpu_wheels diffusers==0.42.1 transformers==5.24.0 accelerate==1.15.0 \
#       huggingface_hub safetensors tokenizers tqdm regex
# (matching requirements.txt), carry gpu_wheels/, and this script installs them with --no-index.
set -u
cd "$(dirname "$0")/.."
OUTDIR="${1:-${OUT:-gpu_results}}"
PARTS="${2:-all}"
mkdir -p "$OUTDIR"
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] && .venv/bin/python -c "import torch; assert torch.cuda.is_available()" 2>/dev/null && PY=.venv/bin/python
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
if ! "$PY" -c "import diffusers, transformers, accelerate" 2>/dev/null && [ -d gpu_wheels ]; then
  "$PY" -m pip install -q --no-index --no-deps --find-links gpu_wheels gpu_wheels/*.whl >"$OUTDIR/pip.log" 2>&1
fi
LOG="$OUTDIR/gpu_suite.md"
{ echo "# GPU suite $(date -u +%FT%TZ)"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)"
} >"$LOG" 2>&1

step() {  # step NAME SECONDS COMMAND...: run with a time limit, keep going on failure
  local name=$1 limit=$2; shift 2
  echo -e "\n## $name\n\n\`$*\`\n" >>"$LOG"
  local start=$SECONDS
  timeout "$limit" "$@" >"$OUTDIR/$name.out" 2>"$OUTDIR/$name.err"
  local rc=$?
  sed -n '/^\*\*/,$p' "$OUTDIR/$name.out" >>"$LOG"
  echo -e "\n(exit $rc, $((SECONDS - start)) s)" >>"$LOG"
  [ $rc -ne 0 ] && tail -5 "$OUTDIR/$name.err" >>"$LOG"
}

B=benchmarks
if [ "$PARTS" = main ] || [ "$PARTS" = all ]; then
# 1. SD1.4 (fp16) + CLIP-FlanT5-XL (bf16): parts vs physical minimum, batch 1 and 4, peak memory (target <= 24 GB)
step sd14_fp16_xl 140 "$PY" $B/epoch_cost.py --preset sd14 --dtype float16 --verifier_shape clip-flant5-xl \
  --vqa_dtype bfloat16 --batch_size 1 4 --epochs 3 --repeats 2 --json "$OUTDIR/sd14_fp16_xl.json"
# 2. the authors' precision: SD1.4 in fp32, batch 1
step sd14_fp32_xl 80 "$PY" $B/epoch_cost.py --preset sd14 --dtype float32 --verifier_shape clip-flant5-xl \
  --vqa_dtype bfloat16 --batch_size 1 --epochs 3 --repeats 2 --json "$OUTDIR/sd14_fp32_xl.json"
# 3. CLIP-FlanT5-XXL: peak memory (target <= 48 GB) and epoch time, batch 1
step sd14_fp16_xxl 100 "$PY" $B/epoch_cost.py --preset sd14 --dtype float16 --verifier_shape clip-flant5-xxl \
  --vqa_dtype bfloat16 --batch_size 1 --epochs 3 --repeats 1 --json "$OUTDIR/sd14_fp16_xxl.json"
# 4. ours (fp16, batch 4) vs the authors' loop structure (fp32, one image at a time), same models (target >= 2x)
step reference_sd14 140 "$PY" $B/reference_loop.py --preset sd14 --dtype float16 --verifier_shape clip-flant5-xl \
  --vqa_dtype bfloat16 --batch_size 4 --epochs 3 --rounds 1 --json "$OUTDIR/reference_sd14.json"
# 5. toy world: batch 1 vs 64, and fp32 vs fp16 scores/decisions (trained weights)
step toy 50 "$PY" $B/epoch_cost.py --preset toy --batch_size 1 64 --epochs 4 --repeats 2 --json "$OUTDIR/toy.json"
step precision_toy 40 "$PY" $B/precision.py --preset toy --low_dtype float16 --batch_size 16 --json "$OUTDIR/precision_toy.json"
fi
if [ "$PARTS" = experiments ] || [ "$PARTS" = all ]; then
# 6. experiments: VAE checkpointing at batch 4 (memory), timesteps on the CPU (no host sync per sampler step),
#    torch.compile of the UNet
step sd14_fp16_xl_vaeckpt 100 "$PY" $B/epoch_cost.py --preset sd14 --dtype float16 --verifier_shape clip-flant5-xl \
  --vqa_dtype bfloat16 --batch_size 4 --epochs 3 --repeats 1 --vae_checkpointing --json "$OUTDIR/sd14_fp16_xl_vaeckpt.json"
step sd14_sync_baseline 60 "$PY" $B/epoch_cost.py --preset sd14 --dtype float16 --verifier_shape clip-l --vqa_dtype float16 \
  --batch_size 1 --epochs 3 --repeats 2 --json "$OUTDIR/sd14_sync_baseline.json"
step sd14_cpu_timesteps 60 "$PY" $B/epoch_cost.py --preset sd14 --dtype float16 --verifier_shape clip-l --vqa_dtype float16 \
  --batch_size 1 --epochs 3 --repeats 2 --cpu_timesteps --json "$OUTDIR/sd14_cpu_timesteps.json"
step sd14_compile 180 "$PY" $B/epoch_cost.py --preset sd14 --dtype float16 --verifier_shape clip-l --vqa_dtype float16 \
  --batch_size 1 --epochs 3 --repeats 2 --compile --json "$OUTDIR/sd14_compile.json"
fi
if [ "$PARTS" = verifier ] || [ "$PARTS" = all ]; then
# 7. the batched verifier: time per image batched vs one at a time, full CLIP-FlanT5-XL/XXL shapes in bf16; the
#    verifier's memory options inside an epoch at batch 4 (peak memory vs step 1); the epoch breakdown at full size
#    with nothing reduced (50 steps, VAE at 512, verifier at 23 and 24 layers: the 24-layer row is the real model)
step verifier_xl 120 "$PY" $B/verifier_cost.py --device cuda:0 --shape clip-flant5-xl --layers 24 --dtype bfloat16 \
  --batch_size 1 4 8 --repeats 3 --json "$OUTDIR/verifier_xl.json"
step verifier_xxl 120 "$PY" $B/verifier_cost.py --device cuda:0 --shape clip-flant5-xxl --layers 24 --dtype bfloat16 \
  --batch_size 1 4 --repeats 2 --json "$OUTDIR/verifier_xxl.json"
step sd14_fp16_xl_vqackpt 90 "$PY" $B/epoch_cost.py --preset sd14 --dtype float16 --verifier_shape clip-flant5-xl \
  --vqa_dtype bfloat16 --batch_size 4 --epochs 3 --repeats 1 --vqa_checkpointing --json "$OUTDIR/sd14_fp16_xl_vqackpt.json"
step sd14_fp16_xl_vqamicro 90 "$PY" $B/epoch_cost.py --preset sd14 --dtype float16 --verifier_shape clip-flant5-xl \
  --vqa_dtype bfloat16 --batch_size 4 --epochs 3 --repeats 1 --vqa_micro_batch 1 --json "$OUTDIR/sd14_fp16_xl_vqamicro.json"
step epoch_breakdown_full 150 "$PY" $B/epoch_breakdown.py --device cuda:0 --num_steps 50 --vae_size 512 \
  --verifier_layers 23 24 --dtype float16 --vqa_dtype bfloat16 --batch_size 1 4 --repeats 2 \
  --json "$OUTDIR/epoch_breakdown_full.json"
fi
if [ "$PARTS" = exact ] || [ "$PARTS" = all ]; then
# 8. the exact gradient through every UNet call against the replay, at the real shapes (SD1.4 512², 50 DDIM steps,
#    CFG; SD-Turbo 512², 1 Euler step): time and peak memory, fp16; a variant whose estimate exceeds the GPU is skipped
step exact_gradient_full 240 "$PY" $B/exact_gradient_cost.py --device cuda:0 --full --dtype float16 --repeats 2 \
  --json "$OUTDIR/exact_gradient_full.json"
fi
echo "wrote $LOG"
