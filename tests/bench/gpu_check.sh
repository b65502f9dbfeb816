#!/usr/bin/env bash
# The GPU figures of issue #18 in one run, for a GPU host; nothing here has run on a GPU yet.
#
#   OUT=gpu-check tests/bench/gpu_check.sh        # ~10 min without TensorRT; engine builds add minutes each
#
# Needs: dfscan installed with a CUDA build of torch and DALI (`make install`); TensorRT 10.x/11.x is
# optional (`pip install 'dfscan[tensorrt]'`): without it its tests skip with the reason and its rows are absent.
# Writes to $OUT: summary.txt (what ran, what skipped, the figures), doctor.json, pytest logs, bench JSON.
# Every step has its own timeout and the script goes on after a failure: a partial run still reports.
set -u
OUT=${OUT:-gpu-check}
PY=${PY:-.venv/bin/python}
IMAGES=${IMAGES:-1024}
BACKBONE=${BACKBONE:-resnext50_32x4d}  # tiny: a quick dry run of the script itself
mkdir -p "$OUT"
WORK=$(mktemp -d -t dfscan-gpu-check-XXXX)
trap 'rm -rf "$WORK"' EXIT
say() { echo "== $*" | tee -a "$OUT/summary.txt"; }
step() {  # step NAME SECONDS CMD...: run, log to $OUT/NAME.log, record its status
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    say "$name: exit $? in $((SECONDS - t0)) s"
}

say "$(date -u +%FT%TZ) $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -1)"
step doctor 60 "$PY" -m dfscan.cli doctor
"$PY" -m dfscan.cli doctor --json >"$OUT/doctor.json" 2>/dev/null
tee -a "$OUT/summary.txt" <"$OUT/doctor.log"

# 1. Parity on the GPU: DALI mixed decoding vs Pillow (p_fake within 0.02), torch CUDA fp16/bf16 vs ONNX Runtime,
#    TensorRT fp32/fp16/int8 engines built from strongly typed networks (fp16 p_fake within 0.01 of ONNX Runtime).
step parity 360 "$PY" -m pytest -q -rs -s -p no:cacheprovider \
    tests/test_dali.py tests/test_torch_runtime.py tests/test_tensorrt.py tests/test_fp16.py
grep -E "^(SKIPPED|FAILED|ERROR)|[0-9]+ (passed|failed)|delta p_fake|logit delta" "$OUT/parity.log" | tee -a "$OUT/summary.txt"

# 2. One ResNeXt-50 export (random weights: speed does not depend on them) with model.pt2 beside it;
#    with TensorRT, its FP16 graph and a Q/DQ INT8 file for the int8 engine.
step export 180 "$PY" -c "from dfscan.detector.export import export_untrained; export_untrained('$BACKBONE', '$WORK/model')"
if "$PY" -c "from dfscan.trt.engine import tensorrt_status as s; raise SystemExit(0 if s()[0] else 1)"; then
    "$PY" -c "from tests._images import write_jpegs; write_jpegs(__import__('pathlib').Path('$WORK/calib'), 128)"
    step quantize_trt 240 "$PY" -m dfscan.cli quantize "$WORK/model/model.onnx" --calibrate "$WORK/calib" \
        --target tensorrt --out "$WORK/model/model_int8.onnx" --json
fi

# 3. Speed: decode (pillow, dali-gpu), inference and the end-to-end scan for each decoder x runtime pair, dali-gpu +
#    torch among them. Batch 64 with every runtime (onnxruntime on the CPU is the baseline); batch 256 with the
#    GPU runtimes only. bench_gpu prints each figure as it is measured, so a step cut short still reports.
step bench_b64 420 "$PY" tests/bench/bench_gpu.py --model "$WORK/model/model.onnx" --images "$IMAGES" \
    --batch 64 --repeats 2 --decoder pillow --decoder dali-gpu --json "$OUT/bench_b64.json"
step bench_b256 420 "$PY" tests/bench/bench_gpu.py --model "$WORK/model/model.onnx" --images "$IMAGES" \
    --batch 256 --repeats 2 --decoder pillow --decoder dali-gpu --runtime torch --runtime tensorrt \
    --json "$OUT/bench_b256.json"
for batch in 64 256; do
    grep -E "^measured|^[0-9]+ JPEGs|^stage|^(decode|infer|scan) " "$OUT/bench_b$batch.log" | tee -a "$OUT/summary.txt"
done
say "done $(date -u +%FT%TZ)"
