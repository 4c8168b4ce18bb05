#!/usr/bin/env bash
# GPU checks and training throughput on one CUDA device (not a test; prints figures).
#
#   bash benchmarks/gpu_throughput.sh [OUT_DIR]      # default benchmarks/results/gpu
#
# 1. Breakout training steps/s with the 128-wide LSTM policy (bfloat16, inference step from a
#    CUDA graph: train.cuda_graph) at 1024, 4096 and 8192 envs, then at 8192 envs: float32, no
#    CUDA graph, a larger minibatch, the MLP policy of shoal/configs/breakout.toml, and compiled (the
#    training forward and backward in CUDA graphs too: train.compile_mode = reduce-overhead).
# 2. The CUDA tests (tests/test_cuda.py: graphed step = eager, pinned copies = CPU rollout,
#    compiled = eager, training and resume on the GPU).
# Each step has its own time limit, so one that hangs or fails leaves the others' figures.
set -u
out=${1:-benchmarks/results/gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
bench() {  # bench NAME LIMIT_S ARGS... : one train_throughput.py run, its figures on stdout
    local name=$1 limit=$2
    shift 2
    echo "== $name"
    timeout "$limit" python3 benchmarks/train_throughput.py --out "$out/$name.json" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    grep -E "^lstm128|^custom|steps/s|Error" "$out/$name.log" | grep -v "^\[" | tail -4
    [ $rc -eq 0 ] || echo "   (exit $rc; log in $out/$name.log)"
}
python3 -c "import torch; print('torch', torch.__version__, '|', torch.cuda.get_device_name(0))"
lstm=(--settings lstm128 --precisions bfloat16 --epochs 4)
cuda=(-- --train.device cuda --train.cuda-graph true)
bench lstm_1024 60 "${lstm[@]}" --num-envs 1024 "${cuda[@]}"
bench lstm_4096 60 "${lstm[@]}" --num-envs 4096 "${cuda[@]}"
bench lstm_8192 60 "${lstm[@]}" --num-envs 8192 "${cuda[@]}"
bench lstm_8192_fp32 60 --settings lstm128 --precisions float32 --epochs 4 --num-envs 8192 "${cuda[@]}"
bench lstm_8192_nograph 60 "${lstm[@]}" --num-envs 8192 "${cuda[@]}" --train.cuda-graph false
bench lstm_8192_mb131k 60 "${lstm[@]}" --num-envs 8192 --minibatch-size 131072 "${cuda[@]}"
bench mlp_8192 60 --settings custom --precisions bfloat16 --epochs 4 --num-envs 8192 \
    --batch-sizes 524288 --minibatch-size 131072 "${cuda[@]}"
echo "== CUDA tests"
timeout 200 python3 -m pytest -x -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tail -15
bench lstm_8192_compiled 180 "${lstm[@]}" --num-envs 8192 --epochs 5 "${cuda[@]}" \
    --train.compile true --train.compile-mode reduce-overhead
