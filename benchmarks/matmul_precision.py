"""Matrix-product speed in float32 and under bfloat16 autocast (not a test): GFLOP/s per shape.

    python benchmarks/matmul_precision.py
    python benchmarks/matmul_precision.py --threads 1 2
    ONEDNN_MAX_CPU_ISA=AVX512_CORE python benchmarks/matmul_precision.py   # as if without BF16

The shapes are the 128-wide policy's: a square reference, the rollout's input and recurrent
products at 4096 agents, a training step's recurrent product (512 segments) and the whole
sequence's input projection (32,768 rows). `train.precision = "auto"` picks bfloat16 only where
the hardware multiplies it natively; this shows what that is worth on a machine, and what
emulated bfloat16 costs (oneDNN's ONEDNN_MAX_CPU_ISA caps the instructions it uses).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

# (rows, inner, outputs) of F.linear(x [rows, inner], w [outputs, inner]).
SHAPES = [
    (1024, 1024, 1024),
    (4096, 118, 128),
    (4096, 128, 512),
    (512, 128, 512),
    (32768, 128, 512),
]


def gflops(fn, flops: float, seconds: float) -> float:
    for _ in range(3):
        fn()
    count, start = 0, time.perf_counter()
    while True:
        fn()
        count += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return flops * count / elapsed / 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    parser.add_argument("--seconds", type=float, default=0.5, help="per measurement")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        print(f"{threads} thread(s)          float32   bf16 autocast   ratio (GFLOP/s)")
        for rows, inner, outputs in SHAPES:
            x, w = torch.randn(rows, inner), torch.randn(outputs, inner)
            flops = 2.0 * rows * inner * outputs

            def plain(x: torch.Tensor = x, w: torch.Tensor = w) -> None:
                F.linear(x, w)

            def autocast(x: torch.Tensor = x, w: torch.Tensor = w) -> None:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    F.linear(x, w)

            fp32 = gflops(plain, flops, args.seconds)
            bf16 = gflops(autocast, flops, args.seconds)
            print(f"  {rows:>5}x{inner:<4}x{outputs:<4} {fp32:9.0f} {bf16:15.0f} {bf16 / fp32:8.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
