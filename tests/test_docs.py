"""The `shoal` commands shown in README.md and docs/*.md use real subcommands, options and config keys.

A doc command that names a flag the CLI does not have, a config key that does not exist, or a
batch geometry the trainer refuses fails here, without training anything.
"""

from __future__ import annotations

import contextlib
import re
import shlex
from pathlib import Path

import pytest

from shoal.cli import build_parser, main
from shoal.core.config import CONFIG_DIR, ConfigError, load_config, split_config_flags
from shoal.train.validation import validate

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
# Envs whose agents per env is 1, so num_agents = env.num_envs.
SINGLE_AGENT = {"cartpole", "breakout", "pong", "bandit", "memory"}


def doc_commands() -> list[tuple[str, list[str], str | None]]:
    """(where, argv after 'shoal', the error it is shown to print) of every shoal command in a block."""
    found = []
    for path in DOCS:
        for match in FENCE.finditer(path.read_text()):
            if match.group(1) not in ("bash", "console", ""):
                continue
            # A command continued with a trailing backslash is one command.
            lines = match.group(2).replace("\\\n", " ").splitlines()
            for i, line in enumerate(lines):
                line = line.removeprefix("$ ").strip()
                if not line.startswith("shoal "):
                    continue
                line = re.sub(r"\s+#.*$", "", line)
                word = line.split()[1]
                # The synopsis line "shoal sweep | analyze | ..." and error output "shoal train: ..."
                if "|" in word or word.endswith(":"):
                    continue
                after = lines[i + 1] if i + 1 < len(lines) else ""
                error = after.split(": error: ", 1)[1] if re.match(r"shoal \S+: error: ", after) else None
                found.append((f"{path.name}: {line}", shlex.split(line)[1:], error))
    return found


COMMANDS = doc_commands()


def help_text(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    with contextlib.suppress(SystemExit):
        main(argv)
    return capsys.readouterr().out


def test_docs_show_shoal_commands() -> None:
    # Guards the extraction itself: the README tour alone has more than ten.
    assert len(COMMANDS) > 30, [where for where, _, _ in COMMANDS]


def test_top_level_help_lists_every_documented_subcommand() -> None:
    listed = build_parser().format_help()
    for where, argv, _ in COMMANDS:
        assert re.search(rf"^\s+{re.escape(argv[0])}(\s|$)", listed, re.M), (where, listed)


@pytest.mark.parametrize("where,argv,error", COMMANDS, ids=[where for where, _, _ in COMMANDS])
def test_documented_command_uses_real_options(
    where: str, argv: list[str], error: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    regular, dotted = split_config_flags(argv)
    options = help_text(capsys, [argv[0], "--help"])
    for arg in regular[1:]:
        if arg.startswith("-"):
            name = arg.split("=", 1)[0]
            assert re.search(rf"(^|[\s\[,]){re.escape(name)}([\s,=\]]|$)", options), (where, name)
    env = regular[1] if len(regular) > 1 and not regular[1].startswith("-") else None
    if argv[0] not in ("train", "config", "eval", "sweep", "mup-check") or env is None or "<" in env:
        return
    config_file = None
    if "--config" in regular:
        candidate = ROOT / regular[regular.index("--config") + 1]
        # Files an earlier example writes (cartpole-mine.toml) are not in the repository.
        config_file = candidate if candidate.exists() else None
    if error is not None:
        # A documented mistake: the config layer reports it with the message shown.
        with pytest.raises(ConfigError, match=re.escape(error)):
            load_config(env, dotted, config_file=config_file, config_dir=CONFIG_DIR)
        return
    cfg = load_config(env, dotted, config_file=config_file, config_dir=CONFIG_DIR)
    if argv[0] == "train" and (env in SINGLE_AGENT or env.startswith("gym:")):
        validate(cfg, cfg.env.num_envs)
