"""What a training run shows while it runs.

`make_dashboard(cfg)` gives a live terminal dashboard (rich) when stdout is a terminal, or a
plain logger that prints one compact line every `run.log_interval` seconds when the run is
quiet or its output goes to a file or pipe. The trainer calls `update(metrics)` once per
epoch and `close()` at the end; both are cheap, so the dashboard never slows training:
`update` only stores the metrics, and the drawing happens a few times a second on rich's
refresh thread (or once per interval for the plain logger).
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any, TextIO

from rich.console import Console, RenderableType
from rich.live import Live
from rich.text import Text

from shoal.core.config import Config

TIME_PHASES = (
    ("env", "time_env"),
    ("inference", "time_inference"),
    ("copy", "time_copy"),
    ("learn", "time_learn"),
    ("other", "time_other"),
)
LOSSES = (
    ("policy loss", "policy_loss"),
    ("value loss", "value_loss"),
    ("entropy", "entropy"),
    ("approx KL", "approx_kl"),
    ("clip fraction", "clip_fraction"),
    ("explained var", "explained_variance"),
)
SPARK = "▁▂▃▄▅▆▇█"
MISSING = "—"


def number(metrics: Mapping[str, Any], key: str) -> float | None:
    """metrics[key] as a finite float, or None when absent, NaN, infinite or not a number."""
    value = metrics.get(key)
    if isinstance(value, bool) or value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def fmt_float(value: float | None, digits: int = 4) -> str:
    if value is None:
        return MISSING
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.{max(digits - 2, 1)}e}"
    return f"{value:.{digits}g}"


def fmt_count(value: float | None) -> str:
    """1234567 -> '1.23M'."""
    if value is None:
        return MISSING
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.3g}"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return MISSING
    seconds = int(round(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{days}d {clock}" if days else clock


def sparkline(values: list[float]) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return ""
    low, high = min(finite), max(finite)
    span = high - low
    chars = []
    for v in values:
        if not math.isfinite(v):
            chars.append(" ")
        elif span == 0:
            chars.append(SPARK[len(SPARK) // 2])
        else:
            chars.append(SPARK[min(int((v - low) / span * len(SPARK)), len(SPARK) - 1)])
    return "".join(chars)


class Dashboard:
    """Shows training progress. Subclasses draw; this base tracks what both kinds need."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.metrics: dict[str, Any] = {}
        self.started = time.monotonic()
        self.updated_at = self.started
        self.sps_smoothed: float | None = None
        self.scores: deque[float] = deque(maxlen=48)
        self.closed = False
        self._auto_device: str | None = None

    def update(self, metrics: Mapping[str, Any]) -> None:
        # A copy, so the trainer may reuse its dict while the drawing thread reads this one.
        self.metrics = dict(metrics)
        self.updated_at = time.monotonic()
        sps = number(self.metrics, "sps")
        if sps is not None:
            # Smoothed so the remaining-time estimate doesn't jump with every epoch.
            self.sps_smoothed = sps if self.sps_smoothed is None else 0.7 * self.sps_smoothed + 0.3 * sps
        score = number(self.metrics, "score")
        if score is not None:
            self.scores.append(score)

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> Dashboard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Figures shared by both displays.

    def elapsed(self) -> float:
        wall = number(self.metrics, "wall_time")
        if wall is None:
            return time.monotonic() - self.started
        # The trainer's clock at the last epoch, ticking on between epochs.
        return wall + (time.monotonic() - self.updated_at)

    def total_steps(self) -> int:
        return int(self.cfg.train.total_steps)

    def remaining(self) -> float | None:
        steps = number(self.metrics, "agent_steps")
        if steps is None or not self.sps_smoothed:
            return None
        return max(self.total_steps() - steps, 0) / self.sps_smoothed

    def horizon(self) -> float | None:
        return number(self.metrics, "horizon")

    def device(self) -> str:
        device = self.metrics.get("device") or self.cfg.train.device
        if device == "auto":
            if self._auto_device is None and "torch" in sys.modules:
                # Asked once: the answer doesn't change during a run.
                self._auto_device = "cuda" if sys.modules["torch"].cuda.is_available() else "cpu"
            device = self._auto_device or device
        return str(device)

    def threads(self) -> tuple[str, str, str]:
        """(torch threads, env threads, OMP wait policy) as text.

        The trainer's metrics say what the run uses (the wait policy is the one torch was
        loaded with, "?" when unverified); before the first epoch, the config and environment.
        """
        torch_threads = self.metrics.get("torch_threads")
        if not torch_threads:
            torch = sys.modules.get("torch")
            if torch is not None:
                torch_threads = torch.get_num_threads()
            else:
                torch_threads = self.cfg.train.torch_threads or "auto"
        if self.metrics.get("threads_tuned"):
            # Tuned per phase: rollout/update.
            rollout = self.metrics.get("torch_threads_rollout", torch_threads)
            torch_threads = f"{rollout}/{torch_threads} (tuned)"
        env_threads = self.metrics.get("env_threads") or self.cfg.env.num_threads or "auto"
        omp = self.metrics.get("omp_wait_policy") or os.environ.get("OMP_WAIT_POLICY", "unset")
        asked = getattr(self.cfg.train, "omp_wait_policy", "auto")
        if "omp_wait_policy" in self.metrics and asked != "auto" and str(omp).rstrip("?") != asked:
            # torch was loaded with another policy before shoal could set it.
            omp = f"{omp} (asked {asked})"
        return str(torch_threads), str(env_threads), str(omp)

    def processes(self) -> str:
        """' · N processes' for data-parallel runs (the threads are each process's)."""
        world = self.metrics.get("world_size")
        return f" · {int(world)} processes" if isinstance(world, (int, float)) and world > 1 else ""


class RichDashboard(Dashboard):
    """A rich Live dashboard, redrawn in place a few times a second."""

    def __init__(self, cfg: Config, console: Console | None = None, refresh_per_second: float = 4.0) -> None:
        super().__init__(cfg)
        self.console = console or Console()
        self._lock = threading.Lock()
        self.live = Live(
            get_renderable=self.renderable,
            console=self.console,
            refresh_per_second=refresh_per_second,
            redirect_stdout=True,
            redirect_stderr=True,
        )
        self.live.start()

    def update(self, metrics: Mapping[str, Any]) -> None:
        with self._lock:
            super().update(metrics)

    def close(self) -> None:
        if self.closed:
            return
        super().close()
        # stop() draws once more, so the final figures stay on screen, and restores the cursor
        # and the redirected stdout/stderr.
        self.live.stop()

    def renderable(self) -> RenderableType:
        with self._lock:
            return self._build()

    def _build(self) -> RenderableType:
        # Plain styled text laid out by hand: rich tables measure every cell on every
        # refresh and cost several times more than this.
        cfg = self.cfg
        left = section("progress", self._progress_rows()) + section("system", self._system_rows())
        right = section("episodes", self._episode_rows()) + section("losses", self._loss_rows())
        lines = [Text.assemble(("shoal ", "bold"), (cfg.env.name, "bold cyan"), f"  {cfg.run.name}".rstrip())]
        blank = Text(" " * SECTION_WIDTH)
        for i in range(max(len(left), len(right))):
            line = (left[i] if i < len(left) else blank).copy()
            line.append("  ")
            line.append_text(right[i] if i < len(right) else blank)
            lines.append(line)
        lines.extend(section("time per epoch", self._timing_rows(), 2 * SECTION_WIDTH + 2))
        text = Text("\n").join(lines)
        # Crop rather than wrap on narrow terminals, so the picture keeps its shape.
        text.no_wrap = True
        text.overflow = "crop"
        return text

    def _progress_rows(self) -> list[tuple[str, str, str]]:
        m = self.metrics
        steps = number(m, "agent_steps")
        total = self.total_steps()
        share = min(max((steps or 0) / total, 0.0), 1.0) if total > 0 else 0.0
        epoch = number(m, "epoch")
        return [
            ("steps/s", fmt_count(number(m, "sps")), "bold cyan"),
            ("agent steps", f"{fmt_count(steps)} / {fmt_count(total)}", ""),
            ("", bar_text(share, 20) + f" {100 * share:5.1f}%", "cyan"),
            ("epoch", MISSING if epoch is None else f"{epoch:.0f}", ""),
            ("elapsed", fmt_duration(self.elapsed()), ""),
            ("remaining", fmt_duration(self.remaining()), ""),
        ]

    def _system_rows(self) -> list[tuple[str, str, str]]:
        cfg = self.cfg
        torch_threads, env_threads, omp = self.threads()
        return [
            ("env", f"{cfg.env.name} ({cfg.env.num_envs} envs, {cfg.env.backend})", "bold"),
            ("device", self.device(), ""),
            ("precision", str(self.metrics.get("precision") or cfg.train.precision), ""),
            ("threads", f"torch {torch_threads} · env {env_threads}{self.processes()}", ""),
            ("OMP wait", omp, ""),
        ]

    def _episode_rows(self) -> list[tuple[str, str, str]]:
        m = self.metrics
        return [
            ("score", fmt_float(number(m, "score")), "bold green"),
            ("score 100 ep", fmt_float(number(m, "score_100")), ""),
            ("return", fmt_float(number(m, "episode_return")), ""),
            ("length", fmt_float(number(m, "episode_length")), ""),
            ("episodes", fmt_count(number(m, "episodes")), ""),
            ("trend", sparkline(list(self.scores)[-SECTION_WIDTH + 16 :]), "green"),
        ]

    def _loss_rows(self) -> list[tuple[str, str, str]]:
        m = self.metrics
        losses = [(label, fmt_float(number(m, key)), "") for label, key in LOSSES]
        losses.append(("learning rate", fmt_float(number(m, "learning_rate")), ""))
        horizon = self.horizon()
        if horizon is not None:
            losses.append(("horizon", f"{horizon:.1f}", ""))
        return losses

    def _timing_rows(self) -> list[tuple[str, str, str]]:
        times = [(label, number(self.metrics, key)) for label, key in TIME_PHASES]
        spent = sum(t for _, t in times if t is not None)
        timing = []
        for label, seconds in times:
            part = seconds / spent if seconds is not None and spent > 0 else None
            value = MISSING if seconds is None else f"{seconds:8.3f}s"
            if part is not None:
                value += f" {100 * part:5.1f}% " + bar_text(part, 2 * SECTION_WIDTH - 34)
            timing.append((label, value, "magenta"))
        return timing


SECTION_WIDTH = 44
LABEL_WIDTH = 14


def bar_text(share: float, width: int) -> str:
    cells = round(width * min(max(share, 0.0), 1.0))
    return "█" * cells + "·" * (width - cells)


def section(title: str, rows: list[tuple[str, str, str]], width: int = SECTION_WIDTH) -> list[Text]:
    """A titled block of 'label  value' lines, each exactly `width` cells wide."""
    lines = [Text(f"── {title} ".ljust(width, "─"), style="dim")]
    for label, value, style in rows:
        line = Text(f"{label:<{LABEL_WIDTH}}", style="dim")
        line.append(value[: width - LABEL_WIDTH], style=style or None)
        line.pad_right(width - line.cell_len)
        lines.append(line)
    return lines


class PlainLogger(Dashboard):
    """One compact line every `interval` seconds (and at the end), for logs and quiet runs."""

    def __init__(self, cfg: Config, stream: TextIO | None = None, interval: float | None = None) -> None:
        super().__init__(cfg)
        self.stream = stream if stream is not None else sys.stdout
        self.interval = float(cfg.run.log_interval if interval is None else interval)
        self.last_print: float | None = None
        self.printed_current = False

    def update(self, metrics: Mapping[str, Any]) -> None:
        super().update(metrics)
        self.printed_current = False
        now = time.monotonic()
        if self.last_print is None or now - self.last_print >= self.interval:
            self._print()
            self.last_print = now

    def close(self) -> None:
        if self.closed:
            return
        super().close()
        if self.metrics and not self.printed_current:
            self._print()

    def line(self) -> str:
        m = self.metrics
        steps = number(m, "agent_steps")
        total = self.total_steps()
        percent = f" ({100 * steps / total:.0f}%)" if steps is not None and total > 0 else ""
        epoch = number(m, "epoch")
        parts = [
            f"epoch {MISSING if epoch is None else f'{epoch:.0f}'}",
            f"steps {fmt_count(steps)}/{fmt_count(total)}{percent}",
            f"sps {fmt_count(number(m, 'sps'))}",
            f"score {fmt_float(number(m, 'score'))}",
            f"return {fmt_float(number(m, 'episode_return'))}",
            f"len {fmt_float(number(m, 'episode_length'))}",
            f"pg {fmt_float(number(m, 'policy_loss'))}",
            f"vf {fmt_float(number(m, 'value_loss'))}",
            f"ent {fmt_float(number(m, 'entropy'))}",
            f"kl {fmt_float(number(m, 'approx_kl'))}",
            f"lr {fmt_float(number(m, 'learning_rate'), 3)}",
        ]
        horizon = self.horizon()
        if horizon is not None:
            parts.append(f"horizon {horizon:.1f}")
        parts.append(f"elapsed {fmt_duration(self.elapsed())}")
        parts.append(f"eta {fmt_duration(self.remaining())}")
        return f"[{self.cfg.env.name}] " + " | ".join(parts)

    def _print(self) -> None:
        print(self.line(), file=self.stream, flush=True)
        self.printed_current = True


def make_dashboard(cfg: Config, console: Console | None = None) -> Dashboard:
    """A live dashboard on a terminal; the plain logger when quiet or not on a terminal."""
    console = console or Console()
    if cfg.run.quiet or not console.is_terminal or console.is_dumb_terminal:
        return PlainLogger(cfg, stream=console.file)
    return RichDashboard(cfg, console=console)
