"""Does the OpenMP wait policy take effect, and what does it cost? (not a test)

    python benchmarks/wait_policy.py                       # passive vs active, 2 threads, +-1 busy core
    python benchmarks/wait_policy.py --policies passive active default --threads 2 --rounds 4

libgomp reads OMP_WAIT_POLICY when torch is imported, so each measurement runs in a fresh child
process started with the policy in its environment (`default` = the variable unset). The
children run one after another, alternating the policy order each round, and each child
alternates undisturbed and busy blocks: a `while True: pass` process (started once, paused with
SIGSTOP, resumed with SIGCONT) keeps one core busy during the busy blocks.

Each child first checks what the policy does: after a parallel region it sleeps 30 ms and
reports the CPU its idle OpenMP workers burnt meanwhile ("spin", in cores): about 0 when
passive, up to threads - 1 when active. Then it times three workloads: `small`, many short
parallel regions (a 1024 x 128 matmul + GELU, the size of rollout inference), `learn`, an
MLP forward/backward/Adam step on 16384 x 118 observations (a minibatch of the Breakout
learner), and `lstm`, the 128-wide LSTM policy's forward/backward over 512 segments of 16
steps (hundreds of small [512, 128] kernels, like the LSTM learner). `spinN` runs with
OMP_WAIT_POLICY unset and GOMP_SPINCOUNT=N: idle workers spin N rounds, then sleep.
Printed: the median time per iteration, the busy/undisturbed throughput ratio, and
the passive/active ratio in each condition. Ratios are the figures to trust on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time

WORKLOADS = ("small", "learn", "lstm")


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    busy_pid = args.busy_pid

    def spin_probe() -> float:
        a = torch.randn(512, 512)
        values = []
        for _ in range(5):
            a @ a
            c0, w0 = time.process_time(), time.perf_counter()
            time.sleep(0.03)
            values.append((time.process_time() - c0) / (time.perf_counter() - w0))
        return statistics.median(values)

    x_small = torch.randn(1024, 128)
    w_small = torch.randn(128, 128) / 11.0
    net = torch.nn.Sequential(
        torch.nn.Linear(118, 128),
        torch.nn.GELU(),
        torch.nn.Linear(128, 128),
        torch.nn.GELU(),
        torch.nn.Linear(128, 5),
    )
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    x_learn = torch.randn(16384, 118)
    import gymnasium
    import numpy as np

    from shoal.policy import Policy

    lstm = Policy(gymnasium.spaces.Box(0, 1, (118,), np.float32), gymnasium.spaces.Discrete(3), 128, True)
    x_lstm = torch.rand(512, 16, 118)
    starts = torch.zeros(512, 16)

    def small(n: int) -> None:
        for _ in range(n):
            torch.nn.functional.gelu(x_small @ w_small)

    def learn(n: int) -> None:
        for _ in range(n):
            opt.zero_grad()
            net(x_learn).square().mean().backward()
            opt.step()

    def lstm_learn(n: int) -> None:
        for _ in range(n):
            logits, values = lstm.forward_sequence(x_lstm, starts)
            (logits.square().mean() + values.square().mean()).backward()

    work = {
        "small": (small, args.small_iters),
        "learn": (learn, args.learn_iters),
        "lstm": (lstm_learn, args.lstm_iters),
    }
    for fn, n in work.values():
        fn(max(1, n // 4))  # warm-up
    result: dict = {"spin_undisturbed": spin_probe(), "times": {k: {"off": [], "on": []} for k in work}}
    for block in range(args.blocks):
        for busy in (("off", "on") if block % 2 == 0 else ("on", "off")):
            if busy == "on":
                os.kill(busy_pid, signal.SIGCONT)
                time.sleep(0.05)
            for name, (fn, n) in work.items():
                t0 = time.perf_counter()
                fn(n)
                result["times"][name][busy].append((time.perf_counter() - t0) / n)
            if busy == "on":
                os.kill(busy_pid, signal.SIGSTOP)
    os.kill(busy_pid, signal.SIGCONT)
    time.sleep(0.05)
    result["spin_busy"] = spin_probe()
    os.kill(busy_pid, signal.SIGSTOP)
    print(json.dumps(result))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", nargs="+", default=["passive", "active"],
                        help="passive, active, default (unset) or spinN (unset, GOMP_SPINCOUNT=N)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="child processes per policy")
    parser.add_argument("--blocks", type=int, default=6, help="undisturbed/busy blocks per child")
    parser.add_argument("--small-iters", type=int, default=400)
    parser.add_argument("--learn-iters", type=int, default=6)
    parser.add_argument("--lstm-iters", type=int, default=4)
    parser.add_argument("--out", default="benchmarks/results/wait_policy.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--busy-pid", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return 0

    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    os.kill(busy.pid, signal.SIGSTOP)
    runs: dict[str, list[dict]] = {p: [] for p in args.policies}
    try:
        for r in range(args.rounds):
            order = args.policies if r % 2 == 0 else list(reversed(args.policies))
            for policy in order:
                env = dict(os.environ)
                root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
                env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
                env.pop("OMP_WAIT_POLICY", None)
                env.pop("GOMP_SPINCOUNT", None)
                if policy.startswith("spin"):
                    env["GOMP_SPINCOUNT"] = policy[4:]
                elif policy != "default":
                    env["OMP_WAIT_POLICY"] = policy.upper()
                cmd = [sys.executable, __file__, "--child", "--busy-pid", str(busy.pid),
                       "--threads", str(args.threads), "--blocks", str(args.blocks),
                       "--small-iters", str(args.small_iters), "--learn-iters", str(args.learn_iters),
                       "--lstm-iters", str(args.lstm_iters)]
                out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
                runs[policy].append(json.loads(out.strip().splitlines()[-1]))
                print(f"round {r + 1} {policy}: done", file=sys.stderr, flush=True)
    finally:
        os.kill(busy.pid, signal.SIGCONT)
        busy.kill()
        busy.wait()

    summary: dict = {}
    print(f"torch threads {args.threads}, cpu_count {os.cpu_count()}, load average at end "
          f"{os.getloadavg()[0]:.2f}; medians over all blocks of {args.rounds} processes per policy")
    for policy, results in runs.items():
        spin_off = statistics.median(r["spin_undisturbed"] for r in results)
        spin_on = statistics.median(r["spin_busy"] for r in results)
        entry = {"spin_cores_undisturbed": spin_off, "spin_cores_busy": spin_on}
        for work in WORKLOADS:
            off = statistics.median(t for r in results for t in r["times"][work]["off"])
            on = statistics.median(t for r in results for t in r["times"][work]["on"])
            entry[work] = {"undisturbed_s": off, "busy_s": on, "busy_over_undisturbed": off / on}
        summary[policy] = entry
        print(f"{policy:8s} spin after a region: {spin_off:.2f} cores undisturbed, {spin_on:.2f} busy")
        for work in WORKLOADS:
            e = entry[work]
            print(f"{policy:8s} {work:5s}: undisturbed {1e3 * e['undisturbed_s']:8.3f} ms  "
                  f"busy {1e3 * e['busy_s']:8.3f} ms  "
                  f"throughput busy/undisturbed {e['busy_over_undisturbed']:.2f}")
    if "passive" in summary and "active" in summary:
        for work in WORKLOADS:
            for cond, key in (("undisturbed", "undisturbed_s"), ("busy", "busy_s")):
                ratio = summary["active"][work][key] / summary["passive"][work][key]
                summary.setdefault("passive_over_active", {})[f"{work}_{cond}"] = ratio
                print(f"throughput passive/active {work:5s} {cond:11s}: {ratio:.2f}")
    report = {"threads": args.threads, "cpu_count": os.cpu_count(), "rounds": args.rounds, "summary": summary,
              "runs": runs}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1)
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
