#!/usr/bin/env bash
# One-shot GPU check of PLRC pre-training (run from the repository root on a machine with a CUDA GPU).
#
#   OUT=/some/folder bash tools/gpu_check.sh        # everything it measures is written under $OUT
#
# 1. the CUDA tests (distillation == naive on the GPU, one model step on the GPU == the same step on the CPU)
#    -> $OUT/cuda_tests.txt
# 2. tools/benchmark.py train at ResNet-50, 224 px, batch 64: full step vs. compute floor, fp32 and AMP
#    (s/iter, images/s, peak GPU memory, ratios) -> $OUT/bench_{fp32,amp}.{txt,json}, and an operator profile of
#    two full steps -> $OUT/profile_{fp32,amp}.txt
# 3. a short real pre-training run on the embedded demo data (configs/plrc_pretrain.yaml, AMP, capped at
#    PRETRAIN_SECONDS) -> $OUT/pretrain/{log.txt,metrics.json,events.out.tfevents.*}
# Nothing is downloaded at run time except in the install block below (if you enable it).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-output/gpu_check}
PY=${PY:-python}
PRETRAIN_SECONDS=${PRETRAIN_SECONDS:-120}  # includes generating the demo data on first use
BENCH_ITERS=${BENCH_ITERS:-10}
mkdir -p "$OUT"

# ----------------------------------------------------------------------------------------------------
# Install block -- adapt to the machine. The checks below only need `python -c "import detectron2, plrc_d2"`
# to work with the machine's own CUDA torch. Example with wheels carried in .whl/ (no index access):
#   $PY -m pip install --no-deps --no-index .whl/*.whl          # requirements/base.txt wheels
#   SITE=$($PY -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
#   $PY -m pip install --no-deps --no-index --target "$SITE" .whl/sal_detectron2-*.whl   # Python-only d2
# plrc_d2 itself is used from this checkout:
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# ----------------------------------------------------------------------------------------------------

status=0
step() { echo "== $*" | tee -a "$OUT/summary.txt"; }

step "environment"
$PY - <<'EOF' 2>&1 | tee "$OUT/env.txt"
import torch, detectron2, plrc_d2
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
print("device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
print("detectron2", detectron2.__version__, detectron2.__file__)
EOF
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true

step "CUDA tests"
$PY -m pytest -q -p no:cacheprovider tests/test_losses.py tests/test_meta_arch.py -k cuda 2>&1 | tee "$OUT/cuda_tests.txt"
[ "${PIPESTATUS[0]}" = 0 ] || status=1
tail -1 "$OUT/cuda_tests.txt" >> "$OUT/summary.txt"

for mode in fp32 amp; do
  flag=""; [ "$mode" = amp ] && flag="--amp"
  step "benchmark train R-50 224 px batch 64 $mode"
  $PY tools/benchmark.py train --config-file configs/Base-PLRC.yaml --batch 64 --size 224 --device cuda \
      --iters "$BENCH_ITERS" --warmup 3 $flag --json "$OUT/bench_$mode.json" \
      --profile "$OUT/profile_$mode.txt" 2>&1 | tee "$OUT/bench_$mode.txt"
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
  tail -3 "$OUT/bench_$mode.txt" >> "$OUT/summary.txt"
done

step "short pre-training on the demo data (AMP, <= ${PRETRAIN_SECONDS}s)"
timeout --signal=INT "$PRETRAIN_SECONDS" $PY tools/train_net.py --config-file configs/plrc_pretrain.yaml \
    MODEL.DEVICE cuda SOLVER.AMP.ENABLED True DATALOADER.NUM_WORKERS 8 \
    PLRC_VIS.PERIOD 100 OUTPUT_DIR "$OUT/pretrain" > "$OUT/pretrain_stdout.txt" 2>&1
rc=$?
echo "train_net exit code $rc (124/130 = stopped by the time cap)" | tee -a "$OUT/summary.txt"
grep -E "eta:|Non-finite|Error|Traceback" "$OUT/pretrain_stdout.txt" | tail -5 >> "$OUT/summary.txt" || true
# keep the outputs small: drop checkpoints (the run is for speed/health, not for weights)
find "$OUT/pretrain" -name "*.pth" -delete 2>/dev/null || true
$PY - "$OUT" <<'EOF' 2>&1 | tee -a "$OUT/summary.txt"
import json, sys, os
out = sys.argv[1]
for mode in ("fp32", "amp"):
    p = os.path.join(out, f"bench_{mode}.json")
    if os.path.exists(p):
        r = json.load(open(p))
        f, fl = r["full"], r["floor"]
        print(f"{mode}: full {f['images_per_s']:.1f} img/s, floor {fl['images_per_s']:.1f} img/s, "
              f"time ratio {r['time_ratio']:.3f}, peak {f['peak_mem_bytes']/2**30:.2f} GiB vs floor "
              f"{fl['peak_mem_bytes']/2**30:.2f} GiB (ratio {r['memory_ratio']:.2f}) on {r.get('device_name')}")
m = os.path.join(out, "pretrain", "metrics.json")
if os.path.exists(m):
    rows = [json.loads(l) for l in open(m) if l.strip()]
    last = rows[-1] if rows else {}
    keys = [k for k in last if k.startswith(("loss_", "plrc_", "time", "total_loss", "iteration"))]
    print("pretrain last metrics:", {k: last[k] for k in sorted(keys)})
EOF
exit $status
