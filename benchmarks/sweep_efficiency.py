"""How well each sampler traces the (cost, score) front on synthetic cost-aware problems.

Every problem (shoal/sweep/synthetic.py) has a run-length key (train.total_steps) whose cost
grows with it, a score that saturates with it, and other keys with an unknown best setting.
A trial's values are its noisy final score and simulated cost; its curve (ten points) is
stored as for real runs, so the pareto sampler can use it. The measure is the hypervolume of
the front of the trials' noise-free scores, with cost on a log scale normalized to the
problem's cost range (reference point: most expensive cost, score 0), so 1.0 is unreachable
and larger is better.

    python benchmarks/sweep_efficiency.py            # 10 seeds, 100 trials (slow: GP fits)
    python benchmarks/sweep_efficiency.py --quick    # 3 seeds
    python benchmarks/sweep_efficiency.py --jobs 16  # seeds in parallel processes
    python benchmarks/sweep_efficiency.py --samplers pareto,pareto-independent
        # curve points weighted per run (the default) vs counted as independent results

Each row gives the median over seeds and its interquartile range; below the table, every
sampler after the first is compared with the first seed by seed (same problem seed, same
start-up points): the median of the paired differences and how many seeds it won and lost.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import sys
import time
from pathlib import Path

import numpy as np
import optuna

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shoal.sweep.pareto import hypervolume_2d  # noqa: E402
from shoal.sweep.sampler import SAMPLERS, ParetoSampler, make_sampler  # noqa: E402
from shoal.sweep.space import SearchSpace  # noqa: E402
from shoal.sweep.synthetic import PROBLEMS, Problem  # noqa: E402


def normalized_hypervolume(problem: Problem, trials: list[optuna.trial.FrozenTrial]) -> float:
    lo, hi = (math.log(c) for c in problem.cost_range)
    costs, scores = [], []
    for t in trials:
        cost = t.values[1]
        costs.append(min(max((math.log(cost) - lo) / (hi - lo), 0.0), 1.0))
        scores.append(problem.score(t.params, t.params["train.total_steps"]))
    return hypervolume_2d(costs, scores, ref_cost=1.0, ref_score=0.0)


def run(
    problem_name: str, sampler_name: str, seed: int, checkpoints: list[int], run_noise: float = 0.0
) -> list[float]:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    problem = PROBLEMS[problem_name]
    space = SearchSpace.from_dict(problem.space)
    if sampler_name == "pareto-independent":
        sampler = ParetoSampler(space, seed=seed, curve_weighting="independent")
    else:
        sampler = make_sampler(sampler_name, space, seed=seed)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    rng = np.random.default_rng(seed)
    out = []
    for n in range(1, max(checkpoints) + 1):
        trial = study.ask(fixed_distributions=space.distributions())
        curve = problem.curve(trial.params, rng, run_noise=run_noise)
        trial.set_user_attr("curve", [list(p) for p in curve])
        study.tell(trial, [curve[-1][2], curve[-1][0]])
        if n in checkpoints:
            out.append(normalized_hypervolume(problem, study.trials))
    return out


def summary(runs: list[list[float]]) -> str:
    """Median [interquartile range] over seeds, per checkpoint."""
    q1, medians, q3 = np.percentile(np.array(runs), [25, 50, 75], axis=0)
    return " ".join(f"{m:8.4f} [{a:.3f}-{b:.3f}]" for m, a, b in zip(medians, q1, q3, strict=True))


def print_paired(problem: str, by_sampler: dict[str, list[list[float]]], checkpoints: list[int]) -> None:
    """Each sampler against the first, seed by seed: median difference, seeds won and lost."""
    names = list(by_sampler)
    base = np.array(by_sampler[names[0]])
    for name in names[1:]:
        diff = np.array(by_sampler[name]) - base
        cells = [
            f"HV@{n}: median {np.median(d):+.4f}, won {(d > 0).sum()} lost {(d < 0).sum()} of {len(d)}"
            for n, d in zip(checkpoints, diff.T, strict=True)
        ]
        print(f"{problem:10s} {name} - {names[0]}: " + "; ".join(cells))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="3 seeds instead of 10")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument(
        "--samplers",
        default=",".join(SAMPLERS),
        help=f"comma-separated, of {', '.join(SAMPLERS)}, pareto-independent",
    )
    parser.add_argument("--problems", default=",".join(PROBLEMS))
    parser.add_argument("--trials", default="50,100", help="checkpoints (trial counts)")
    parser.add_argument(
        "--run-noise",
        type=float,
        default=0.0,
        help="std of a per-run score offset shared by its curve points (correlated curves)",
    )
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (processes)")
    parser.add_argument("--out", default=None, help="write the raw results as JSON here")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    seeds = args.seeds or (3 if args.quick else 10)
    checkpoints = [int(n) for n in args.trials.split(",")]
    results: dict[str, dict[str, list[list[float]]]] = {}
    print(
        f"seeds={seeds} checkpoints={checkpoints} run_noise={args.run_noise:g} "
        "(median normalized hypervolume, higher is better)"
    )
    header = f"{'problem':10s} {'sampler':8s} " + " ".join(f"{'HV@' + str(n):>22s}" for n in checkpoints)
    print(header + f" {'seconds':>8s}")
    problems = args.problems.split(",")
    samplers = args.samplers.split(",")
    pool = multiprocessing.get_context("spawn").Pool(args.jobs) if args.jobs > 1 else None
    try:
        for problem_name in problems:
            results[problem_name] = {}
            for sampler_name in samplers:
                start = time.perf_counter()
                jobs = [
                    (problem_name, sampler_name, seed, checkpoints, args.run_noise) for seed in range(seeds)
                ]
                runs = pool.starmap(run, jobs) if pool is not None else [run(*job) for job in jobs]
                results[problem_name][sampler_name] = runs
                cells = summary(runs)
                elapsed = time.perf_counter() - start
                print(f"{problem_name:10s} {sampler_name:8s} {cells} {elapsed:8.1f}", flush=True)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    for problem_name, by_sampler in results.items():
        print_paired(problem_name, by_sampler, checkpoints)
    if args.out:
        tmp = Path(args.out).with_suffix(".tmp")
        tmp.write_text(json.dumps({"seeds": seeds, "checkpoints": checkpoints, "results": results}, indent=1))
        tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
