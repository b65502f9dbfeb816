#!/usr/bin/env bash
# The GPU figures of issues #18 and #28 in one run, for a GPU host; nothing here has run on a GPU yet.
#
#   OUT=gpu-check tests/bench/gpu_check.sh        # ~30 min without TensorRT; engine builds add minutes each
#   # a dry run of the script on a CPU-only machine (tiny backbone, few files, the slow steps left out):
#   BACKBONE=tiny IMAGES=32 TENSOR_IMAGES=32 TENSOR_FACES=16 TENSOR_VIDEOS=4 TENSOR_DECODER=pillow \
#     SKIP="parity bench_b64 bench_b256" OUT=/tmp/gpu-check tests/bench/gpu_check.sh
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
step() {  # step NAME SECONDS CMD...: run, log to $OUT/NAME.log, record its status (SKIP="a b": not these)
    local name=$1 limit=$2; shift 2
    case " ${SKIP:-} " in *" $name "*) say "$name: skipped (SKIP)"; return;; esac
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
#    Device-resident batches (#28): images, faces and videos as CUDA tensors score like the host path (p_fake within
#    1e-4, crops within a grey level), DALI's GPU decoder among the decoders.
step parity 420 "$PY" -m pytest -q -rs -s -p no:cacheprovider \
    tests/test_dali.py tests/test_torch_runtime.py tests/test_tensorrt.py tests/test_fp16.py tests/test_tensor_path.py \
    tests/test_sequences.py  # sequences on every runtime (#28 A): torch video program, TensorRT 5-D engine
grep -E "^(SKIPPED|FAILED|ERROR)|[0-9]+ (passed|failed)|delta p_fake|logit delta" "$OUT/parity.log" | tee -a "$OUT/summary.txt"

# 2. One ResNeXt-50 export (random weights: speed does not depend on them) with model.pt2 beside it;
#    with TensorRT, its FP16 graph and a Q/DQ INT8 file for the int8 engine.
step export 180 "$PY" -c "from dfscan.detector.export import export_untrained; export_untrained('$BACKBONE', '$WORK/model')"
if "$PY" -c "from dfscan.trt.engine import tensorrt_status as s; raise SystemExit(0 if s()[0] else 1)"; then
    "$PY" -c "from tests._images import write_jpegs; write_jpegs(__import__('pathlib').Path('$WORK/calib'), 128)"
    step quantize_trt 240 "$PY" -m dfscan.cli quantize "$WORK/model/model.onnx" --calibrate "$WORK/calib" \
        --target tensorrt --out "$WORK/model/model_int8.onnx" --json
fi

# 2b. Videos on one runtime per process (#28 A): peak RSS of a video scan with each runtime, and which runtime each
#     graph ran on (no ONNX Runtime session beside torch or TensorRT).
step sequence_rss 420 "$PY" tests/bench/sequence_rss.py --model "$WORK/model/model.onnx" --runtime onnxruntime \
    --runtime torch --runtime tensorrt
grep -E "^sequence_rss" "$OUT/sequence_rss.log" | tee -a "$OUT/summary.txt"

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

# 4. Device-resident batches (#28), DALI on the GPU: whole images, faces (MTCNN on CUDA, crops on the device) and
#    videos of 16 frames, --batches host vs device, through torch fp16 and bf16 (and TensorRT fp16 where installed):
#    items/s, torch's peak GPU memory, and the parity of the two paths (max |delta p_fake|, rows agree).
#    Goals on one H100 with DALI + torch fp16: >= 5,000 images/s, >= 2,000 with faces, >= 100 videos/s.
step tensor_path 600 "$PY" tests/bench/bench_gpu.py --model "$WORK/model/model.onnx" --tensor-path \
    --images "${TENSOR_IMAGES:-8192}" --faces "${TENSOR_FACES:-2048}" --videos "${TENSOR_VIDEOS:-256}" --frames 16 \
    --batch 256 --decoder "${TENSOR_DECODER:-dali-gpu}" --json "$OUT/tensor_path.json"
grep -E "^tensor|^parity" "$OUT/tensor_path.log" | tee -a "$OUT/summary.txt"
say "done $(date -u +%FT%TZ)"
