"""How well can Breakout be played at all? A scripted planner's score (not a test).

    python benchmarks/breakout_ceiling.py                       # the default options
    python benchmarks/breakout_ceiling.py --ball-widths 2 8     # a 2-pixel ball (before) and 8 (now)
    python benchmarks/breakout_ceiling.py --ball-widths 2 --paddle-speeds 2.5 4 --shrink 0

The planner reads the ball's position and velocity from the observation, predicts where and on
which frame the ball next reaches the paddle's height (side walls reflected, bricks ignored, so
its prediction is wrong while the ball is in or above the bricks), and picks the action that
lets the paddle be nearest that point on that frame, given that every agent step repeats its
action for `frameskip` frames. It is no upper bound on what a policy can score, but it shows
what the game's controls allow: when one agent step moves the paddle further than the shrunk
paddle's catch window, the positions the paddle can have when the ball arrives form a grid
coarser than that window, and some balls cannot be caught by any play.

Prints the mean score of the episodes finished after a warm-up, per setting.
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np

from shoal.envs.native import NativeVecEnv

WIDTH, HEIGHT, PADDLE_Y = 144.0, 200.0, 186.0


def reflect(x: np.ndarray) -> np.ndarray:
    """x after bouncing between the side walls at 0 and WIDTH."""
    x = np.mod(x, 2 * WIDTH)
    return np.where(x > WIDTH, 2 * WIDTH - x, x)


def plan(obs: np.ndarray, frameskip: int, paddle_speed: float, top_speed: float) -> np.ndarray:
    """Actions (0 NOOP, 1 LEFT, 2 RIGHT) for a batch of Breakout observations."""
    paddle_x, half = obs[:, 0] * WIDTH, obs[:, 1] * WIDTH / 2
    ball_x, ball_y = obs[:, 2] * WIDTH, obs[:, 3] * HEIGHT
    vx, vy = obs[:, 4] * top_speed, obs[:, 5] * top_speed
    # Frames until the ball is at the paddle's height: straight down, or up to the back wall first.
    frames = np.where(
        vy > 0, (PADDLE_Y - ball_y) / np.maximum(vy, 1e-3), (ball_y + PADDLE_Y) / np.maximum(-vy, 1e-3)
    )
    frames = np.maximum(np.ceil(frames), 1)
    landing = reflect(ball_x + vx * frames)
    # The paddle moves `step_move` per whole step before the arrival step, then `last * speed`.
    whole_steps = (frames - 1) // frameskip
    last = frames - frameskip * whole_steps
    moves = np.clip(np.arange(-64, 65)[None, :], -whole_steps[:, None], whole_steps[:, None])
    best_cost = np.full(len(obs), np.inf)
    best_dir = np.zeros(len(obs))
    for final_dir in (-1, 0, 1):
        position = (
            paddle_x[:, None] + frameskip * paddle_speed * moves + paddle_speed * last[:, None] * final_dir
        )
        position = np.clip(position, half[:, None], WIDTH - half[:, None])
        # Fewer moves break ties: stay put when it makes no difference.
        cost = np.abs(position - landing[:, None]) + 0.01 * np.abs(moves)
        pick = cost.argmin(axis=1)
        rows = np.arange(len(obs))
        first_dir = np.where(whole_steps > 0, np.sign(moves[rows, pick]), final_dir)
        better = cost[rows, pick] < best_cost
        best_cost = np.where(better, cost[rows, pick], best_cost)
        best_dir = np.where(better, first_dir, best_dir)
    return np.where(best_dir < 0, 1, np.where(best_dir > 0, 2, 0)).astype(np.int32)


def play(options: dict[str, float], num_envs: int, steps: int, warmup: int, seed: int) -> dict[str, float]:
    env = NativeVecEnv("breakout", num_envs, seed=seed, **options)
    frameskip = int(env.options["frameskip"])
    paddle_speed = float(env.options["paddle_speed"])
    top_speed = 2.0 * float(env.options["ball_speed"])
    obs, _ = env.reset()
    scores, episodes = 0.0, 0
    for step in range(steps):
        obs, *_ = env.step(plan(obs, frameskip, paddle_speed, top_speed))
        if step + 1 == warmup:
            env.log()  # drop the episodes that began before the warm-up ended
        elif step + 1 > warmup and (step + 1) % 1000 == 0:
            log = env.log()
            if log:
                scores += log["score"] * log["episodes"]
                episodes += log["episodes"]
    env.close()
    return {"mean_score": scores / max(episodes, 1), "episodes": episodes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--ball-widths",
        type=float,
        nargs="+",
        default=[None],
        metavar="PX",
        help="ball_width values to try (default: the env's default)",
    )
    parser.add_argument(
        "--paddle-speeds",
        type=float,
        nargs="+",
        default=[None],
        metavar="PX",
        help="paddle_speed values to try (default: the env's default)",
    )
    parser.add_argument("--frameskip", type=int, default=None)
    parser.add_argument("--shrink", type=int, choices=[0, 1], default=None, help="shrink_paddle option")
    parser.add_argument("--num-envs", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20_000, help="agent steps per env")
    parser.add_argument("--warmup", type=int, default=4_000, help="steps before episodes are counted")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if not 0 < args.warmup < args.steps:
        parser.error("--warmup must be positive and smaller than --steps")
    for width, speed in itertools.product(args.ball_widths, args.paddle_speeds):
        options: dict[str, float] = {}
        if width is not None:
            options["ball_width"] = width
        if speed is not None:
            options["paddle_speed"] = speed
        if args.frameskip is not None:
            options["frameskip"] = args.frameskip
        if args.shrink is not None:
            options["shrink_paddle"] = args.shrink
        start = time.perf_counter()
        result = play(options, args.num_envs, args.steps, args.warmup, args.seed)
        shown = ", ".join(f"{k}={v}" for k, v in options.items()) or "defaults"
        print(
            f"breakout ({shown}): scripted planner mean score {result['mean_score']:.1f} of 864 "
            f"over {result['episodes']} episodes ({time.perf_counter() - start:.0f} s)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
