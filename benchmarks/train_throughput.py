"""Training throughput on Breakout (not a test): steps/s and the time per phase.

    python benchmarks/train_throughput.py                                  # default + lstm128 settings
    python benchmarks/train_throughput.py --settings default --busy 1      # also with one core taken
    python benchmarks/train_throughput.py --settings lstm128 --precisions bfloat16 float32
    python benchmarks/train_throughput.py --settings default --torch-threads 1 2 --busy 1 --rounds 2
    python benchmarks/train_throughput.py --settings lstm128 --alternate-threads 2 1 --busy 1 --epochs 9
    python benchmarks/train_throughput.py --batch-sizes 262144 524288      # custom: precision x batch
    python benchmarks/train_throughput.py --num-envs 256 --batch-sizes 16384 --epochs 3   # quick check
    python benchmarks/train_throughput.py --settings lstm128 -- --train.compile true      # compiled
    python benchmarks/train_throughput.py --settings lstm128 --precisions bfloat16 --compile on \
        --processes 1 2 --rounds 2                                          # train.processes
    python benchmarks/train_throughput.py --settings lstm128 --num-envs 1024 4096 8192 \
        --precisions bfloat16 --minibatch-size 65536 -- --train.device cuda            # on a GPU
    python benchmarks/train_throughput.py --settings cnn --envs breakout gym:ALE/Pong-v5 \
        --precisions float32 bfloat16 --compile off on --epochs 6                      # the CNN grid
    python benchmarks/train_throughput.py --settings cnn --env gym:ALE/Pong-v5 --precisions bfloat16 \
        --backends multiprocessing envpool --rounds 3 --epochs 12        # ale-py workers vs EnvPool

Settings:
  default   shoal/configs/breakout.toml as it is (MLP, bfloat16, 1024 envs, batch 65536, 4 update epochs)
  lstm128   the 128-wide LSTM policy: policy.lstm, hidden 128, 4096 envs, batch 262144,
            minibatch 32768, 1 update epoch, for each of --precisions (and of --num-envs)
  custom    breakout with each (--precisions x --batch-sizes), minibatch --minibatch-size or
            batch / 8, envs --num-envs (the old form of this script; picked by --batch-sizes)
  cnn       pixels through the Nature CNN with the recipe `shoal train` derives for images (16
            envs, batch 2048, minibatch 128, 4 update epochs): a native game in its pixel mode
            (--env.options.obs pixels, 4 x 84 x 84 frames drawn in C) or an Atari id
            (gym:ALE/Pong-v5, ale-py in worker processes), for each of --precisions
--backends compares env.backend values ("auto": what the recipe derives), each setting with each.
--processes N runs a setting as N data-parallel processes (train.processes: the envs, batch and
minibatch split between them), started as `shoal train` starts them; rank 0 measures.
Flags after `--` go to every run's config (e.g. `-- --train.torch-threads 1`).

Each setting trains for --epochs epochs in one process and drops the first (warm-up). With
--busy N the remaining epochs alternate, undisturbed / busy / undisturbed / ..., where busy
epochs run while N `while True: pass` processes keep N cores busy (started once, resumed with
SIGCONT before a busy epoch and paused with SIGSTOP after it), and the figures of both kinds of
epoch are printed with their ratio busy/undisturbed. --rounds repeats the settings in turn
(setting A, B, A, B, ...), so that settings are compared under the same conditions.

The OpenMP wait policy (--omp-wait-policy, like train.omp_wait_policy) is set before torch is
imported, because torch reads it only then; every figure is printed with the torch threads,
env threads and wait policy it ran with. The JSON (--out) has every epoch's figures.
On a shared machine trust ratios measured in the same run, not the absolute figures.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from shoal.core.config import load_config
from shoal.train import recipe
from shoal.train import threads as thread_setup

PHASES = ("time_env", "time_inference", "time_copy", "time_learn", "time_other")


class BusyCores:
    """`count` busy-loop processes, paused until `on()`."""

    def __init__(self, count: int) -> None:
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
        self.running = True
        self.off()

    def on(self) -> None:
        if not self.running:
            for p in self.procs:
                os.kill(p.pid, signal.SIGCONT)
            self.running = True

    def off(self) -> None:
        if self.running:
            for p in self.procs:
                os.kill(p.pid, signal.SIGSTOP)
            self.running = False

    def close(self) -> None:
        for p in self.procs:
            for sig in (signal.SIGCONT, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, sig)
            p.wait()


def settings(args: argparse.Namespace) -> list[dict[str, Any]]:
    """(name, label, config overrides) of every configuration to measure."""
    out = []
    for setting in args.settings:
        if setting == "default":
            out.append({"setting": "default", "precision": None, "batch_size": None, "overrides": []})
        elif setting == "cnn":
            for precision in args.precisions:
                spec = {"setting": "cnn", "precision": precision, "batch_size": None}
                out.append({**spec, "overrides": ["--train.precision", precision]})
        elif setting == "lstm128":
            for num_envs in args.num_envs or [4096]:
                # At least 64 steps per agent (one BPTT segment) and 262,144 steps per epoch.
                batch_size = max(262_144, num_envs * 64)
                minibatch = str(args.minibatch_size or 32_768)
                for precision in args.precisions:
                    out.append(
                        {
                            "setting": "lstm128",
                            "precision": precision,
                            "batch_size": batch_size,
                            "overrides": [
                                "--policy.lstm", "true",
                                "--policy.hidden-size", "128",
                                "--env.num-envs", str(num_envs),
                                "--train.batch-size", str(batch_size),
                                "--train.minibatch-size", minibatch,
                                "--train.max-minibatch-size", minibatch,
                                "--train.update-epochs", "1",
                                "--train.precision", precision,
                            ],
                        }
                    )  # fmt: skip
        else:
            grid = itertools.product(
                args.num_envs or [0], args.precisions, args.batch_sizes or [262_144, 524_288]
            )
            for num_envs, precision, batch_size in grid:
                minibatch = min(args.minibatch_size or batch_size // 8, batch_size)
                overrides = [
                    "--train.precision", precision,
                    "--train.batch-size", str(batch_size),
                    "--train.minibatch-size", str(minibatch),
                    "--train.max-minibatch-size", str(minibatch),
                ]  # fmt: skip
                if num_envs:
                    overrides += ["--env.num-envs", str(num_envs)]
                spec = {"setting": "custom", "precision": precision, "batch_size": batch_size}
                out.append({**spec, "overrides": overrides})
    result = []
    grid = itertools.product(
        args.envs or [args.env],
        args.hidden_sizes or [None],
        args.compile or [None],
        out,
        args.torch_threads,
        args.processes,
        args.backends,
    )
    for env, hidden, compiled, s, threads, processes, backend in grid:
        extra = [] if backend == "auto" else ["--env.backend", backend]
        if s["setting"] == "cnn" and not env.startswith("gym:"):
            extra += ["--env.options.obs", "pixels"]
        if compiled is not None:
            extra += ["--train.compile", "true" if compiled == "on" else "false"]
        if hidden is not None:
            extra += ["--policy.hidden-size", str(hidden)]
        result.append(
            {
                **s,
                "env": env,
                "overrides": s["overrides"] + extra,
                "torch_threads": threads,
                "processes": processes,
            }
        )
    return result


def run_setting(
    spec: dict[str, Any],
    args: argparse.Namespace,
    flags: list[str],
    run_dir: str,
    busy: BusyCores | None,
    tag: str,
) -> dict[str, Any]:
    from shoal.train import train

    # A fixed count when this run switches counts itself (no ThreadTuner then).
    threads_flag = str(args.alternate_threads[0] if args.alternate_threads else spec["torch_threads"])
    overrides = [
        "--run.dir", run_dir,
        "--run.name", f"tp_{tag}",
        "--run.quiet", "true",
        "--run.log-interval", "1000000",
        "--train.checkpoint-interval", "1000000",
        "--train.omp-wait-policy", args.omp_wait_policy,
        "--train.torch-threads", threads_flag,
        "--train.processes", str(spec.get("processes", 1)),
        *spec["overrides"],
    ]
    # The CNN setting measures what `shoal train` runs: the recipe derived for image observations.
    derive = recipe.derive_into if spec["setting"] == "cnn" else None
    cfg = load_config(spec["env"], overrides + flags, derive=derive)
    cfg.train.total_steps = cfg.train.batch_size * args.epochs
    # The condition of every epoch after the first (warm-up) one cycles through these:
    # (torch threads or None = as configured, busy or not).
    threads = args.alternate_threads or [None]
    cycle = [(n, b) for b in ([False, True] if busy is not None else [False]) for n in threads]
    kinds: list[tuple[int | None, bool]] = [(None, False)]

    def apply(state: tuple[int | None, bool]) -> None:
        import torch

        n, on = state
        if n is not None:
            torch.set_num_threads(n)
        if busy is not None:
            (busy.on if on else busy.off)()

    def on_epoch(metrics: dict[str, Any]) -> bool:
        # Sets the condition of the next epoch.
        state = cycle[(int(metrics["epoch"]) - 1) % len(cycle)]
        kinds.append(state)
        apply(state)
        return True

    try:
        result = train(cfg, on_epoch=on_epoch)
    finally:
        if busy is not None:
            busy.off()
    import torch

    epochs = []
    for m, (n, on) in zip(result.history, kinds, strict=False):
        condition = "busy" if on else "undisturbed"
        epochs.append(dict(m, condition=condition, torch_threads=n or m["torch_threads"]))
    last = result.metrics
    row: dict[str, Any] = {
        "env": spec["env"],
        "setting": spec["setting"],
        "precision": last.get("precision", cfg.train.precision),
        "batch_size": cfg.train.batch_size,
        "minibatch_size": cfg.train.minibatch_size,
        "update_epochs": cfg.train.update_epochs,
        "lstm": cfg.policy.lstm,
        "hidden_size": cfg.policy.hidden_size,
        "num_envs": cfg.env.num_envs,
        "backend": cfg.env.backend,
        "processes": cfg.train.processes,
        "torch_threads": "/".join(map(str, threads)) if args.alternate_threads else last.get("torch_threads"),
        "env_threads": last.get("env_threads"),
        "omp_wait_policy": last.get("omp_wait_policy"),
        "threads_tuned": bool(last.get("threads_tuned")),
        "device": str(last.get("device", cfg.train.device)),
        "compile": cfg.train.compile,
        "compile_mode": cfg.train.compile_mode,
        "cuda_graph": cfg.train.cuda_graph,
        "epochs": epochs,
    }
    torch.set_num_threads(int(last.get("torch_threads") or 1))
    measured = epochs[1:] or epochs
    for n in threads:
        target = row if n is None else row.setdefault("by_threads", {}).setdefault(str(n), {})
        for condition in ("undisturbed", "busy"):
            chosen = [
                m for m in measured if m["condition"] == condition and (n is None or m["torch_threads"] == n)
            ]
            if not chosen:
                continue
            summary = {"epochs_measured": len(chosen), "sps": statistics.mean(m["sps"] for m in chosen)}
            for key in PHASES:
                summary[key] = statistics.mean(float(m.get(key, 0.0)) for m in chosen)
            target[condition] = summary
        if "undisturbed" in target and "busy" in target:
            target["busy_over_undisturbed"] = target["busy"]["sps"] / target["undisturbed"]["sps"]
    return row


def run_in_processes(
    spec: dict[str, Any], args: argparse.Namespace, flags: list[str], run_dir: str, tag: str
) -> dict[str, Any]:
    """run_setting with train.processes > 1: this script again, as that many ranks of a
    torch.distributed job (the way `shoal train` starts them), in worker mode; rank 0 runs the
    busy processes, the epochs' conditions and the figures, and hands back its row in a file."""
    from shoal.train import launch

    with tempfile.TemporaryDirectory(prefix="shoal_tp_worker_") as tmp:
        job, result = Path(tmp) / "job.json", Path(tmp) / "row.json"
        payload = {"spec": spec, "args": vars(args), "flags": flags, "run_dir": run_dir, "tag": tag}
        job.write_text(json.dumps(payload))
        program = [str(Path(__file__).resolve()), "--worker", str(job), str(result)]
        env = dict(os.environ, OMP_NUM_THREADS=launch.omp_threads(spec["processes"]))
        done = subprocess.run(launch.command(spec["processes"], program), env=env)
        if done.returncode != 0 or not result.exists():
            raise RuntimeError(f"the {spec['processes']}-process run failed (exit status {done.returncode})")
        return json.loads(result.read_text())


def worker(job_path: str, result_path: str) -> int:
    """One rank of run_in_processes."""
    payload = json.loads(Path(job_path).read_text())
    args = argparse.Namespace(**payload["args"])
    main_rank = os.environ.get("RANK", "0") == "0"
    busy = BusyCores(args.busy) if args.busy and main_rank else None
    try:
        row = run_setting(payload["spec"], args, payload["flags"], payload["run_dir"], busy, payload["tag"])
    finally:
        if busy is not None:
            busy.close()
    if main_rank:
        Path(result_path).write_text(json.dumps(row))
    return 0


def print_figures(row: dict[str, Any], busy: int) -> None:
    parts = [("", row)]
    if "by_threads" in row:
        parts = [(f"torch threads {n}: ", r) for n, r in row["by_threads"].items()]
    for prefix, figs in parts:
        for condition in ("undisturbed", "busy"):
            if condition in figs:
                label = condition if condition == "undisturbed" else f"busy ({busy})"
                print(f"  {prefix}{label:13s} {figures(figs[condition])}", flush=True)
        if "busy_over_undisturbed" in figs:
            print(f"  {prefix}busy/undisturbed steps/s: {figs['busy_over_undisturbed']:.2f}", flush=True)
    if "by_threads" in row and len(row["by_threads"]) == 2:
        (a, ra), (b, rb) = row["by_threads"].items()
        for condition in ("undisturbed", "busy"):
            if condition in ra and condition in rb:
                ratio = rb[condition]["sps"] / ra[condition]["sps"]
                print(f"  {condition}: steps/s with {b} torch threads / with {a}: {ratio:.2f}", flush=True)


def tuned(row: dict[str, Any]) -> str:
    """The torch threads of every epoch's rollout/update, e.g. '2/2 2/1 1/1'."""
    return " ".join(f"{m.get('torch_threads_rollout', '?')}/{m['torch_threads']}" for m in row["epochs"])


def describe(row: dict[str, Any]) -> str:
    model = f"lstm{row['hidden_size']}" if row["lstm"] else f"mlp{row['hidden_size']}"
    if row["setting"] == "cnn":
        model = f"nature cnn {row['hidden_size']}" + (" + lstm" if row["lstm"] else "")
    return (
        f"{row['env']} {row['setting']} ({model}, {row['precision']}, batch {row['batch_size']}, minibatch "
        f"{row['minibatch_size']}, {row['update_epochs']} update epoch(s), {row['num_envs']} envs, "
        f"{row.get('backend', '?')}) | "
        f"{str(row['processes']) + ' processes x ' if row.get('processes', 1) > 1 else ''}"
        f"torch threads {row['torch_threads']}"
        f"{' (tuned; rollout/update per epoch: ' + tuned(row) + ')' if row.get('threads_tuned') else ''}, "
        f"env threads {row['env_threads']}, "
        f"OMP wait {row['omp_wait_policy']} | device {row['device']}"
        f"{' cuda graph' if row['device'].startswith('cuda') and row['cuda_graph'] else ''}"
        f"{', compiled (' + row['compile_mode'] + ')' if row['compile'] else ''}"
    )


def figures(summary: dict[str, Any]) -> str:
    phases = " ".join(f"{k[5:]} {summary[k]:.3f}s" for k in PHASES)
    return f"{summary['sps']:>9.0f} steps/s | {phases} (per epoch, mean of {summary['epochs_measured']})"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    flags: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, flags = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--env", default="breakout")
    parser.add_argument("--envs", nargs="+", default=None, help="several envs, each measured in turn")
    parser.add_argument("--hidden-sizes", nargs="+", type=int, default=None,
                        help="policy widths to measure (default: each setting's)")
    parser.add_argument("--compile", nargs="+", choices=["off", "on"], default=None,
                        help="train.compile values to measure (default: the config's)")
    parser.add_argument("--settings", nargs="+", default=None,
                        choices=["default", "lstm128", "custom", "cnn"],
                        help="default: default lstm128 (custom when --batch-sizes is given)")
    parser.add_argument("--precisions", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=None, help="custom setting")
    parser.add_argument("--minibatch-size", type=int, default=0,
                        help="custom: default batch size / 8; lstm128: default 32768")
    parser.add_argument("--num-envs", type=int, nargs="+", default=None,
                        help="envs per run, each measured in turn (custom: default the env config's; "
                        "lstm128: default 4096, batch max(262144, 64 x envs))")
    parser.add_argument("--epochs", type=int, default=0,
                        help="epochs per run, the first dropped (default: 2 of each condition + 1)")
    parser.add_argument("--busy", type=int, default=0, metavar="N",
                        help="alternate epochs with N cores kept busy by other processes")
    parser.add_argument("--torch-threads", nargs="+", type=int, default=[0],
                        help="train.torch_threads values to compare (0 = automatic)")
    parser.add_argument("--alternate-threads", nargs="+", type=int, default=None, metavar="N",
                        help="switch torch threads between these counts epoch by epoch in one run")
    parser.add_argument("--omp-wait-policy", choices=thread_setup.WAIT_POLICIES, default="auto")
    parser.add_argument("--rounds", type=int, default=1, help="run every setting this many times, in turn")
    parser.add_argument("--processes", nargs="+", type=int, default=[1],
                        help="train.processes values to compare (data-parallel processes; the envs, "
                        "batch and minibatch are split between them)")
    parser.add_argument("--backends", nargs="+", default=["auto"],
                        help="env.backend values to compare (auto: the config's or the recipe's)")
    parser.add_argument("--out", default="benchmarks/results/train_throughput.json")
    parser.add_argument("--worker", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        thread_setup.prepare_wait_policy(args.omp_wait_policy)
        return worker(*args.worker)
    if any(n < 1 for n in args.processes):
        parser.error("--processes must be >= 1")
    if args.alternate_threads and max(args.processes) > 1:
        parser.error("--alternate-threads switches one process's threads; it can't take --processes > 1")
    if args.settings is None:
        args.settings = ["custom"] if args.batch_sizes else ["default", "lstm128"]
    if not args.epochs:
        args.epochs = 1 + 2 * (2 if args.busy else 1) * len(args.alternate_threads or [None])
    if args.busy and args.epochs < 3:
        parser.error("--busy needs --epochs >= 3 (a warm-up, an undisturbed and a busy epoch)")

    # Before torch loads (train() imports it): libgomp reads OMP_WAIT_POLICY only then.
    thread_setup.prepare_wait_policy(args.omp_wait_policy)
    import torch

    specs = settings(args)
    busy = BusyCores(args.busy) if args.busy else None
    rows = []
    print(f"cpu cores available {thread_setup.available_cores()}, load average {os.getloadavg()[0]:.2f}, "
          f"busy processes {args.busy}", flush=True)
    try:
        with tempfile.TemporaryDirectory(prefix="shoal_tp_") as run_dir:
            for r in range(args.rounds):
                for i, spec in enumerate(specs):
                    if spec["processes"] > 1:
                        row = run_in_processes(spec, args, flags, run_dir, f"{r}_{i}")
                    else:
                        row = run_setting(spec, args, flags, run_dir, busy, f"{r}_{i}")
                    row["round"] = r
                    rows.append(row)
                    print(describe(row), flush=True)
                    print_figures(row, args.busy)
    finally:
        if busy is not None:
            busy.close()
    if args.rounds > 1 or len(specs) > 1:
        print("summary (mean over rounds):")
        for i in range(len(specs)):
            mine = rows[i :: len(specs)]
            first = mine[0]
            procs = f"{first['processes']} processes x " if first.get("processes", 1) > 1 else ""
            groups = [(f"{procs}torch threads {first['torch_threads']}", mine)]
            if "by_threads" in first:
                by = first["by_threads"]
                groups = [(f"torch threads {n}", [r["by_threads"][n] for r in mine]) for n in by]
            for label, figs in groups:
                compiled = f", compiled ({first['compile_mode']})" if first["compile"] else ""
                line = (
                    f"  {describe(first).split(' | ')[0]}{compiled} {label}, "
                    f"OMP wait {first['omp_wait_policy']}:"
                )
                for condition in ("undisturbed", "busy"):
                    if all(condition in f for f in figs):
                        sps = statistics.mean(f[condition]["sps"] for f in figs)
                        line += f" {condition} {sps:.0f} steps/s"
                if all("busy_over_undisturbed" in f for f in figs):
                    ratio = statistics.mean(f["busy_over_undisturbed"] for f in figs)
                    line += f", busy/undisturbed {ratio:.2f}"
                print(line)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "envs": args.envs or [args.env],
        "flags": flags,
        "busy_processes": args.busy,
        "omp_wait_policy": args.omp_wait_policy,
        "cpu_count": os.cpu_count(),
        "cores_available": thread_setup.available_cores(),
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
