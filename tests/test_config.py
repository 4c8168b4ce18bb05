"""The typed Config: layering, flags, error messages, sweep tables, TOML round trips."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from shoal.core.config import (
    CONFIG_DIR,
    Config,
    ConfigError,
    all_keys,
    from_dict,
    load_config,
    parse_overrides,
    set_key,
    to_toml,
)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def layered(tmp_path: Path) -> Path:
    """A config folder with a default and a cartpole layer."""
    folder = tmp_path / "configs"
    folder.mkdir()
    write(
        folder / "default.toml",
        """
[env]
num_envs = 64
[train]
learning_rate = 1e-3
gamma = 0.95
seed = 7
""",
    )
    write(
        folder / "cartpole.toml",
        """
[env]
num-envs = 32
[env.options]
max_steps = 200
[train]
learning_rate = 2e-3
""",
    )
    return folder


def test_each_layer_overrides_the_one_below(layered: Path, tmp_path: Path) -> None:
    cfg = load_config(config_dir=layered)
    assert (cfg.env.num_envs, cfg.train.learning_rate, cfg.train.gamma) == (64, 1e-3, 0.95)

    cfg = load_config("cartpole", config_dir=layered)
    assert cfg.env.name == "cartpole"
    assert (cfg.env.num_envs, cfg.train.learning_rate) == (32, 2e-3)
    assert cfg.train.gamma == 0.95  # untouched by the env layer
    assert cfg.env.options == {"max_steps": 200}

    file = write(tmp_path / "mine.toml", "[train]\nlearning_rate = 3e-3\n[policy]\nhidden_size = 32\n")
    cfg = load_config("cartpole", config_file=file, config_dir=layered)
    assert (cfg.train.learning_rate, cfg.policy.hidden_size, cfg.env.num_envs) == (3e-3, 32, 32)

    cfg = load_config(
        "cartpole",
        ["--train.learning-rate", "4e-3", "--env.num_envs=16"],
        config_file=file,
        config_dir=layered,
    )
    assert (cfg.train.learning_rate, cfg.env.num_envs, cfg.policy.hidden_size) == (4e-3, 16, 32)
    assert cfg.train.seed == 7


def test_an_emulated_env_without_its_own_file_gets_the_defaults(layered: Path) -> None:
    """gym:/pettingzoo: envs and names only a custom sweep --train-fn reads may have no recipe."""
    for name in ("gym:Acrobot-v1", "pettingzoo:butterfly.pistonball_v6", "synthetic"):
        cfg = load_config(name, config_dir=layered)
        assert cfg.env.name == name
        assert (cfg.env.num_envs, cfg.train.learning_rate, cfg.env.options) == (64, 1e-3, {})


def test_a_native_game_without_its_recipe_is_an_error(layered: Path) -> None:
    """Every native game ships a recipe: a missing one is a broken install, not the defaults."""
    with pytest.raises(ConfigError, match="recipe of native env 'breakout' is missing: no .*breakout.toml"):
        load_config("breakout", config_dir=layered)
    (layered / "default.toml").unlink()
    with pytest.raises(ConfigError, match="recipes are missing: no .*default.toml"):
        load_config("cartpole", config_dir=layered)
    with pytest.raises(ConfigError, match="recipes are missing"):
        load_config(config_dir=layered)
    assert load_config("breakout", config_dir=None).env.num_envs == 64  # None: no recipes asked for


def test_every_native_game_has_a_shipped_recipe_inside_the_package() -> None:
    """The recipes are package data (shoal/configs), found the same way in a checkout and a wheel."""
    import shoal
    from shoal.core.config import NATIVE_GAMES
    from shoal.envs.native import native_env_names

    assert Path(shoal.__file__).resolve().parent / "configs" == CONFIG_DIR
    assert sorted(NATIVE_GAMES) == sorted(native_env_names())
    for name in NATIVE_GAMES:
        assert (CONFIG_DIR / f"{name}.toml").is_file(), name
    package_data = tomllib.loads((CONFIG_DIR.parents[1] / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "configs/*.toml" in package_data["package-data"]["shoal"]


def test_a_config_file_that_is_a_folder_or_not_text_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a folder"):
        load_config(config_file=tmp_path, config_dir=None)
    binary = tmp_path / "x.toml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(config_file=binary, config_dir=None)


def test_gym_names_map_to_a_file_name(layered: Path) -> None:
    write(layered / "gym_CartPole-v1.toml", "[env]\nbackend = 'serial'\nnum_envs = 4\n")
    cfg = load_config("gym:CartPole-v1", config_dir=layered)
    assert cfg.env.name == "gym:CartPole-v1"
    assert (cfg.env.backend, cfg.env.num_envs) == ("serial", 4)


def test_a_file_that_names_the_env_brings_in_that_envs_layer(layered: Path, tmp_path: Path) -> None:
    file = write(tmp_path / "run.toml", "[env]\nname = 'cartpole'\n[train]\ngamma = 0.9\n")
    cfg = load_config(config_file=file, config_dir=layered)
    assert cfg.env.name == "cartpole"
    assert cfg.env.num_envs == 32  # from cartpole.toml
    assert cfg.train.gamma == 0.9


def test_a_file_naming_another_env_than_the_command_is_an_error(layered: Path, tmp_path: Path) -> None:
    file = write(tmp_path / "run.toml", "[env]\nname = 'pong'\n")
    with pytest.raises(ConfigError, match="env.name = 'pong'.*'cartpole'"):
        load_config("cartpole", config_file=file, config_dir=layered)


def test_unknown_flag_suggests_the_closest_key() -> None:
    with pytest.raises(ConfigError) as e:
        load_config("cartpole", ["--train.learning-rat", "1e-3"], config_dir=None)
    message = str(e.value)
    assert "train.learning-rat" in message
    assert "did you mean 'train.learning_rate'" in message


def test_unknown_section_suggests_the_closest_key() -> None:
    with pytest.raises(ConfigError, match="unknown config section 'trian'.*did you mean 'train.seed'"):
        set_key(Config(), "trian.seed", "3")


def test_a_section_alone_is_not_a_key() -> None:
    with pytest.raises(ConfigError, match="names a section, not a key"):
        set_key(Config(), "train", "3")


def test_sub_keys_only_on_tables() -> None:
    with pytest.raises(ConfigError, match="has no sub-keys"):
        set_key(Config(), "train.seed.x", "3")


def test_unknown_key_in_a_file_names_the_file(tmp_path: Path) -> None:
    file = write(tmp_path / "bad.toml", "[train]\nlearnin_rate = 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_config("cartpole", config_file=file, config_dir=None)
    assert "bad.toml" in str(e.value)
    assert "train.learning_rate" in str(e.value)


def test_unknown_section_in_a_file(tmp_path: Path) -> None:
    file = write(tmp_path / "bad.toml", "[trainer]\nseed = 1\n")
    with pytest.raises(ConfigError, match="unknown config section 'trainer'.*did you mean 'train'"):
        load_config(config_file=file, config_dir=None)


def test_invalid_toml_and_missing_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(config_file=write(tmp_path / "broken.toml", "[train\n"), config_dir=None)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(config_file=tmp_path / "missing.toml", config_dir=None)


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("train.total_steps", "abc", "train.total_steps must be an integer, got 'abc'"),
        ("train.total_steps", "2.5", "train.total_steps must be an integer, got '2.5'"),
        ("train.learning_rate", "fast", "train.learning_rate must be a number, got 'fast'"),
        ("policy.lstm", "maybe", "policy.lstm must be true or false, got 'maybe'"),
        ("env.name", 3, "env.name must be a string, got 3"),
        ("env.options", 3, "env.options must be a table of options, got 3"),
    ],
)
def test_wrong_types_name_the_key_and_the_value(flag: str, value: object, expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        set_key(Config(), flag, value)
    assert expected in str(e.value)


def test_toml_values_of_the_wrong_type(tmp_path: Path) -> None:
    file = write(tmp_path / "bad.toml", "[train]\ntotal_steps = true\n")
    with pytest.raises(ConfigError, match="train.total_steps must be an integer, got True.*bad.toml"):
        load_config(config_file=file, config_dir=None)
    file = write(tmp_path / "bad2.toml", "[train]\nlearning_rate = '3e-4'\n")
    # Strings that spell numbers are accepted (they are what the command line gives).
    assert load_config(config_file=file, config_dir=None).train.learning_rate == 3e-4


def test_value_conversions() -> None:
    cfg = Config()
    set_key(cfg, "train.total-steps", "1e6")
    set_key(cfg, "train.batch_size", "65_536")
    set_key(cfg, "train.learning-rate", "3e-4")
    set_key(cfg, "train.ent_coef", "-0.01")
    set_key(cfg, "policy.lstm", "false")
    set_key(cfg, "train.compile", "yes")
    assert cfg.train.total_steps == 1_000_000 and isinstance(cfg.train.total_steps, int)
    assert cfg.train.batch_size == 65_536
    assert cfg.train.learning_rate == 3e-4
    assert cfg.train.ent_coef == -0.01
    assert cfg.policy.lstm is False and cfg.train.compile is True
    set_key(cfg, "train.learning_rate", 1)  # an integer where a float is expected
    assert isinstance(cfg.train.learning_rate, float)


def test_optional_values() -> None:
    cfg = Config()
    set_key(cfg, "train.target_score", "400")
    assert cfg.train.target_score == 400.0
    set_key(cfg, "train.target_score", "none")
    assert cfg.train.target_score is None
    with pytest.raises(ConfigError, match="train.target_score must be a number, got 'high'"):
        set_key(cfg, "train.target_score", "high")


def test_literal_choices() -> None:
    cfg = Config()
    set_key(cfg, "train.optimizer", "adamw")
    assert cfg.train.optimizer == "adamw"
    with pytest.raises(ConfigError) as e:
        set_key(cfg, "train.optimizer", "sgd")
    assert "train.optimizer must be one of 'adam', 'adamw', 'muon', got 'sgd'" in str(e.value)
    with pytest.raises(ConfigError, match="did you mean 'adam'"):
        set_key(cfg, "train.optimizer", "adm")
    with pytest.raises(ConfigError, match="train.precision must be one of"):
        load_config(overrides=["--train.precision", "float16"], config_dir=None)


def test_dotted_env_options(layered: Path) -> None:
    cfg = load_config(
        "cartpole",
        ["--env.options.frameskip", "4", "--env.options.ball-speed=1.5", "--env.options.shrink", "true"],
        config_dir=layered,
    )
    assert cfg.env.options == {"max_steps": 200, "frameskip": 4, "ball_speed": 1.5, "shrink": True}
    assert isinstance(cfg.env.options["frameskip"], int)
    cfg = load_config("cartpole", ["--env.options.max-steps", "50"], config_dir=layered)
    assert cfg.env.options == {"max_steps": 50}


def test_options_merge_across_layers(layered: Path, tmp_path: Path) -> None:
    file = write(tmp_path / "mine.toml", "[env.options]\nframeskip = 2\n")
    cfg = load_config("cartpole", config_file=file, config_dir=layered)
    assert cfg.env.options == {"max_steps": 200, "frameskip": 2}


def test_sweep_tables_flatten(tmp_path: Path) -> None:
    file = write(
        tmp_path / "sweep.toml",
        """
[sweep.train.learning_rate]
distribution = "log"
low = 1e-4
high = 1e-2

[sweep."train.ent_coef"]
distribution = "uniform"
low = 0.0
high = 0.05

[sweep.policy.hidden-size]
distribution = "int_pow2"
low = 32
high = 512
""",
    )
    cfg = load_config("cartpole", config_file=file, config_dir=None)
    assert cfg.sweep == {
        "train.learning_rate": {"distribution": "log", "low": 1e-4, "high": 1e-2},
        "train.ent_coef": {"distribution": "uniform", "low": 0.0, "high": 0.05},
        "policy.hidden_size": {"distribution": "int_pow2", "low": 32, "high": 512},
    }


def test_sweep_entries_need_a_distribution(tmp_path: Path) -> None:
    file = write(tmp_path / "sweep.toml", "[sweep.train]\nlearning_rate = 0.1\n")
    with pytest.raises(ConfigError, match="sweep entry 'train.learning_rate' must be a table"):
        load_config(config_file=file, config_dir=None)


def test_sweep_is_not_a_flag() -> None:
    with pytest.raises(ConfigError, match=r"\[sweep.<key>\] tables"):
        set_key(Config(), "sweep.train.learning_rate", "1")


def test_parse_overrides_forms_and_errors() -> None:
    assert parse_overrides(["--a.b", "1", "--c.d=2", "--e.f", "-3"]) == [
        ("a.b", "1"),
        ("c.d", "2"),
        ("e.f", "-3"),
    ]
    with pytest.raises(ConfigError, match="'--train.seed' needs a value"):
        parse_overrides(["--train.seed"])
    with pytest.raises(ConfigError, match="'--train.seed' needs a value"):
        parse_overrides(["--train.seed", "--train.gamma", "0.9"])
    with pytest.raises(ConfigError, match="unexpected argument 'oops'"):
        parse_overrides(["oops"])


def test_toml_round_trip() -> None:
    cfg = load_config(
        "breakout",
        ["--env.options.frameskip", "2", "--train.target-score", "10", "--run.name", 'quote " and \\ slash'],
        config_dir=None,
    )
    cfg.sweep["train.learning_rate"] = {"distribution": "log", "low": 1e-4, "high": 1e-2}
    cfg.sweep["train.optimizer"] = {"distribution": "categorical", "choices": ["adam", "muon"]}
    text = to_toml(cfg)
    assert from_dict(tomllib.loads(text)) == cfg
    # None has no TOML spelling: it is left out and read back as the default.
    cfg.train.target_score = None
    assert "# target_score" in to_toml(cfg)
    assert from_dict(tomllib.loads(to_toml(cfg))) == cfg


def test_dict_round_trip_and_copy() -> None:
    cfg = load_config("cartpole", ["--env.options.max-steps", "100"], config_dir=None)
    assert from_dict(cfg.to_dict()) == cfg
    clone = cfg.copy()
    clone.env.options["max_steps"] = 5
    assert cfg.env.options["max_steps"] == 100


def test_every_key_is_settable_from_its_default() -> None:
    defaults = Config().to_dict()
    for key in all_keys():
        section, name = key.split(".")
        value = defaults[section][name]
        cfg = Config()
        set_key(cfg, key.replace("_", "-"), value)
        assert getattr(getattr(cfg, section), name) == value


SHIPPED = sorted(p.stem for p in CONFIG_DIR.glob("*.toml") if p.stem != "default")


@pytest.mark.parametrize("stem", SHIPPED)
def test_shipped_config_files_load(stem: str) -> None:
    cfg = load_config(stem)
    assert cfg.env.name == stem
    assert from_dict(tomllib.loads(to_toml(cfg))) == cfg


def test_a_removed_key_is_an_error_unless_it_asks_for_nothing(tmp_path: Path) -> None:
    """train.overlap is gone: true says so; false, as in the config.json and checkpoints of
    older runs, is read silently."""
    with pytest.raises(ConfigError, match="train.overlap .* was removed"):
        load_config("cartpole", ["--train.overlap", "true"])
    file = write(tmp_path / "old.toml", "[train]\noverlap = true\n")
    with pytest.raises(ConfigError, match=r"train.overlap .* was removed.*\(in .*old.toml\)"):
        load_config("cartpole", config_file=file)
    old_run = Config().to_dict()
    old_run["train"]["overlap"] = False
    assert from_dict(old_run) == Config()
    old_run["train"]["overlap"] = True
    with pytest.raises(ConfigError, match="was removed"):
        from_dict(old_run)
    assert "train.overlap" not in all_keys() and "overlap" not in Config().to_dict()["train"]
    assert "overlap" not in to_toml(load_config("breakout", ["--train.overlap", "false"]))
