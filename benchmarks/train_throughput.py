"""Training throughput on Breakout (not a test): steps/s and the time per phase.

    python benchmarks/train_throughput.py --precisions float32 bfloat16 --batch-sizes 262144 524288
    python benchmarks/train_throughput.py --num-envs 256 --batch-sizes 16384 --epochs 2   # quick check

For each (precision, batch size) it trains for --epochs epochs, drops the first (warm-up), and
records the mean steps/s and seconds per phase (env, inference, copy, learn, other) per epoch,
written to a JSON file.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from shoal.config import load_config
from shoal.train import train

PHASES = ("time_env", "time_inference", "time_copy", "time_learn", "time_other")


def measure(
    precision: str, batch_size: int, args: argparse.Namespace, flags: list[str], run_dir: str
) -> dict:
    minibatch = min(args.minibatch_size or batch_size // 8, batch_size)
    overrides = [
        "--run.dir",
        run_dir,
        "--run.name",
        f"tp_{precision}_{batch_size}",
        "--run.quiet",
        "true",
        "--train.precision",
        precision,
        "--train.batch-size",
        str(batch_size),
        "--train.minibatch-size",
        str(minibatch),
        "--train.max-minibatch-size",
        str(minibatch),
        "--train.total-steps",
        str(batch_size * args.epochs),
        "--train.checkpoint-interval",
        "100000",
    ]
    if args.num_envs:
        overrides += ["--env.num-envs", str(args.num_envs)]
    cfg = load_config(args.env, overrides + flags)
    result = train(cfg)
    epochs = result.history[1:] or result.history
    row = {
        "precision": precision,
        "batch_size": batch_size,
        "minibatch_size": minibatch,
        "num_envs": cfg.env.num_envs,
        "torch_threads": result.metrics.get("torch_threads"),
        "env_threads": cfg.env.num_threads,
        "device": cfg.train.device,
        "compile": cfg.train.compile,
        "epochs_measured": len(epochs),
        "sps": statistics.mean(m["sps"] for m in epochs),
    }
    for key in PHASES:
        row[key] = statistics.mean(m[key] for m in epochs)
    return row


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    flags: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, flags = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="breakout")
    parser.add_argument("--precisions", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[262_144, 524_288])
    parser.add_argument("--minibatch-size", type=int, default=0, help="default: batch size / 8")
    parser.add_argument("--num-envs", type=int, default=0, help="default: the env config's")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per setting; the first is dropped")
    parser.add_argument("--out", default="benchmarks/results/train_throughput.json")
    args = parser.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory(prefix="shoal_tp_") as run_dir:
        for precision in args.precisions:
            for batch_size in args.batch_sizes:
                row = measure(precision, batch_size, args, flags, run_dir)
                rows.append(row)
                phases = " ".join(f"{k[5:]} {row[k]:.3f}s" for k in PHASES)
                print(
                    f"{precision:9s} batch {batch_size:>8d}: {row['sps']:>10.0f} steps/s | {phases}",
                    flush=True,
                )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "env": args.env,
        "flags": flags,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "results": rows,
    }
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    os.replace(tmp, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
