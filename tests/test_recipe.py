"""The derived recipe, the Gaussian policy, the normalizers and bad env input (issue 18)."""

from __future__ import annotations

import json
import math

import gymnasium
import numpy as np
import pytest
import torch

from shoal.cli import main
from shoal.core.config import Config, ConfigError, load_config
from shoal.policy import Policy, evaluate_actions
from shoal.train import recipe
from shoal.train.checkpoint import load_agent, load_file
from shoal.train.normalize import RewardScaler, RunningMeanVar
from shoal.train.rollout import Collector, RolloutBuffer

BOX_OBS = gymnasium.spaces.Box(-np.inf, np.inf, (3,), np.float32)


# ---- small Gymnasium envs, registered for gym: names ----


class ToyEnv(gymnasium.Env):
    """Box observations; reward 1 per step; episodes of 20 steps. `fail_at` makes step raise,
    `nan_at` return NaN, both only in the copy reset with seed `bad_seed` (env index seed - 1)."""

    def __init__(self, box_action: bool = True, fail_at: int = 0, nan_at: int = 0, bad_seed: int = 3) -> None:
        self.observation_space = BOX_OBS
        self.action_space = (
            gymnasium.spaces.Box(-1.0, 1.0, (2,), np.float32) if box_action else gymnasium.spaces.Discrete(2)
        )
        self.fail_at, self.nan_at, self.bad_seed = fail_at, nan_at, bad_seed
        self.seed_, self.t, self.total = None, 0, 0

    def reset(self, seed=None, options=None):
        if seed is not None:
            self.seed_ = seed
        self.t = 0
        return np.zeros(3, np.float32), {}

    def step(self, action):
        self.t += 1
        self.total += 1
        bad = self.seed_ == self.bad_seed
        if bad and self.total == self.fail_at:
            raise RuntimeError("boom")
        obs = np.full(3, float(self.t), np.float32)
        reward = math.nan if bad and self.total == self.nan_at else 1.0
        return obs, reward, False, self.t >= 20, {}


class TupleActionEnv(ToyEnv):
    def __init__(self) -> None:
        super().__init__()
        self.action_space = gymnasium.spaces.Tuple(
            (gymnasium.spaces.Box(-1, 1, (1,)), gymnasium.spaces.Discrete(2))
        )


def register(name: str, entry: object, **kwargs: object) -> str:
    if name not in gymnasium.registry:
        gymnasium.register(name, entry_point=entry, kwargs=kwargs)
    return f"gym:{name}"


# ---- the Gaussian policy ----


def test_gaussian_log_prob_and_entropy_match_hand_computed_values():
    policy = Policy(BOX_OBS, gymnasium.spaces.Box(-1, 1, (2,)), 8, lstm=False)
    with torch.no_grad():
        policy.log_std.copy_(torch.tensor([math.log(0.5), math.log(2.0)]))
    mean = torch.tensor([[0.0, 1.0]])
    action = torch.tensor([[0.5, 1.0]])
    log_prob, entropy = evaluate_actions(policy, mean, action)
    # z = (0.5 / 0.5, 0 / 2): sum of -z^2/2 - log(sigma) - log(2 pi)/2.
    half_log_2pi = 0.5 * math.log(2 * math.pi)
    expected = (-0.5 - math.log(0.5) - half_log_2pi) + (-math.log(2.0) - half_log_2pi)
    assert log_prob.item() == pytest.approx(expected, abs=1e-6)
    # Entropy of N(., sigma^2) is 1/2 + log(2 pi)/2 + log(sigma); log 0.5 + log 2 = 0.
    assert entropy.item() == pytest.approx(2 * (0.5 + half_log_2pi), abs=1e-6)


class RecordingEnv:
    """A one-agent vector env with a Box action in [-1, 1]; keeps the actions it was given."""

    num_envs = num_agents = agents_per_env = 1
    single_observation_space = BOX_OBS
    single_action_space = gymnasium.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def __init__(self) -> None:
        self.received: list[np.ndarray] = []
        self.final_observations = np.zeros((1, 3), np.float32)

    def step(self, actions):
        self.received.append(np.array(actions, copy=True))
        zeros = np.zeros(1, bool)
        return np.zeros((1, 3), np.float32), np.ones(1, np.float32), zeros, zeros, []


def test_box_actions_reach_the_env_clipped_and_stay_unclipped_in_the_buffer():
    env = RecordingEnv()
    policy = Policy(BOX_OBS, env.single_action_space, 8, lstm=False)
    with torch.no_grad():
        policy.actor.weight.zero_()
        policy.actor.bias.copy_(torch.tensor([5.0, -5.0]))  # far outside the bounds
        policy.log_std.fill_(-20.0)  # so the sample is the mean
    buffer = RolloutBuffer(1, 4, 1, 3, np.float32, 2, True, 0, torch.device("cpu"))
    Collector(env, policy, buffer, torch.device("cpu"), 0.99).collect(np.zeros((1, 3), np.float32))
    np.testing.assert_allclose(np.concatenate(env.received), [[1.0, -1.0]] * 4)
    np.testing.assert_allclose(buffer.actions[0].numpy(), [[5.0, -5.0]] * 4, atol=1e-4)


# ---- the normalizers ----


def test_running_mean_var_equals_the_statistics_of_everything_seen():
    stats = RunningMeanVar()
    batches = [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0]), torch.tensor([-4.0, 0.5])]
    for batch in batches:
        stats.update(batch)
    seen = np.concatenate([b.numpy() for b in batches])
    # The prior weighs 1e-4 of one value.
    assert stats.mean == pytest.approx(seen.mean(), rel=1e-3)
    assert stats.var == pytest.approx(seen.var(), rel=1e-3)
    assert stats.count == pytest.approx(len(seen), abs=1e-3)


def test_reward_scaler_divides_by_the_std_of_discounted_returns_and_resets_at_done():
    scaler = RewardScaler(2, gamma=0.5)
    first = scaler.scale_(torch.tensor([1.0, 3.0]), torch.tensor([False, True]))
    # Returns [1, 3]: mean 2, variance 1 (with a prior of weight 1e-4 at variance 1).
    np.testing.assert_allclose(first.numpy(), [1.0, 3.0], rtol=1e-3)
    second = scaler.scale_(torch.tensor([2.0, 2.0]), torch.tensor([False, False]))
    # Returns now [0.5 * 1 + 2, 0 + 2] (agent 1's ended): all four returns [1, 3, 2.5, 2].
    std = np.array([1.0, 3.0, 2.5, 2.0]).std()
    np.testing.assert_allclose(second.numpy(), [2.0 / std, 2.0 / std], rtol=1e-3)
    restored = RewardScaler(2, gamma=0.5)
    restored.load_state_dict(scaler.state_dict())
    assert restored.state_dict()["var"] == scaler.state_dict()["var"]
    assert torch.equal(restored.returns, scaler.returns)


def test_normalizer_statistics_are_checkpointed_resumed_and_frozen_in_eval(tmp_path):
    name = register("ShoalToyBox-v0", ToyEnv)
    flags = ["--run.dir", str(tmp_path), "--run.name", "toy", "--run.quiet", "true", "--env.num-envs", "2"]
    flags += ["--train.batch-size", "64", "--train.minibatch-size", "32", "--train.total-steps", "128"]
    cfg = load_config(name, flags, derive=recipe.derive_into)
    assert cfg.env.recipe == "derived" and cfg.policy.obs_norm and cfg.train.reward_scale
    from shoal.train import train

    train(cfg)
    data = load_file(tmp_path / "toy" / "checkpoint.pt")
    # Every agent step passed through both normalizers once (plus the scaler's 1e-4 prior).
    assert data["reward_scaler"]["count"] == pytest.approx(128 + 1e-4)
    assert float(data["model"]["encoder.obs_count"]) == 128
    cfg.train.total_steps = 256
    cfg.run.resume = str(tmp_path / "toy")
    train(cfg)
    resumed = load_file(tmp_path / "toy" / "checkpoint.pt")
    assert resumed["reward_scaler"]["count"] == pytest.approx(256 + 1e-4)
    agent = load_agent(tmp_path / "toy")
    before = agent.policy.encoder.obs_mean.clone()
    agent.act(np.full((4, 3), 100.0, np.float32))
    assert torch.equal(agent.policy.encoder.obs_mean, before)
    assert torch.equal(before, resumed["model"]["encoder.obs_mean"])


# ---- the derived recipe ----


def profile(sps: float, action: gymnasium.Space, agents: int = 1, length: float = 500.0) -> recipe.EnvProfile:
    return recipe.EnvProfile("fake", BOX_OBS, action, agents, sps, length, "its time limit", 1.0, 2)


def test_a_fast_vector_env_gets_big_batches_and_few_passes():
    values = recipe.derive(profile(2_000_000, gymnasium.spaces.Discrete(4), agents=4), Config())
    get = {k: d.value for k, d in values.items()}
    assert get["env.num_envs"] == 16  # 64 agents
    assert get["train.batch_size"] == 32_768 and get["train.minibatch_size"] == 8192
    assert get["train.update_epochs"] == 2 and get["env.backend"] == "serial"
    assert get["train.gamma"] == 0.98 and get["train.ent_coef"] == 0.01
    assert get["policy.lstm"] is False and get["train.bptt_horizon"] == 1
    assert all(d.why for d in values.values())


def test_a_slow_single_env_reuses_samples_and_spreads_over_processes():
    values = recipe.derive(profile(1_000, gymnasium.spaces.Discrete(2), length=200), Config())
    get = {k: d.value for k, d in values.items()}
    assert get["env.num_envs"] == 8 and get["train.batch_size"] == 2048
    assert get["train.minibatch_size"] == 64 and get["train.update_epochs"] == 10
    # 8 envs x 1 ms: a step long enough for the 2 cores' worker processes.
    assert get["env.backend"] == "multiprocessing" and get["env.num_workers"] == 2
    assert get["train.gamma"] == 0.95 and get["train.gae_lambda"] == 0.9


def test_a_box_action_env_gets_normalization_and_no_entropy_bonus():
    values = recipe.derive(profile(30_000, gymnasium.spaces.Box(-2, 2, (1,)), length=1000), Config())
    get = {k: d.value for k, d in values.items()}
    assert get["policy.obs_norm"] and get["train.reward_scale"]
    assert get["train.ent_coef"] == 0.0 and get["train.gamma"] == 0.99


def test_keys_set_by_flags_are_kept_and_the_geometry_is_built_around_them():
    cfg = Config()
    cfg.env.num_envs, cfg.policy.lstm = 3, True
    explicit = frozenset({"env.num_envs", "policy.lstm"})
    values = recipe.derive(profile(1_000, gymnasium.spaces.Discrete(2)), cfg, explicit)
    assert "env.num_envs" not in values and "policy.lstm" not in values
    assert values["train.bptt_horizon"].value == 16
    assert values["train.batch_size"].value % (3 * 16) == 0


def test_probe_measures_a_registered_gym_env():
    name = register("ShoalToyDiscrete-v0", ToyEnv, box_action=False)
    measured = recipe.probe_env(name, seconds=0.05)
    assert measured.agents_per_env == 1 and measured.steps_per_second > 0
    assert measured.mean_abs_reward == pytest.approx(1.0)
    # ToyEnv truncates at 20 steps but has no registered time limit: the random episodes say so.
    assert measured.episode_length == pytest.approx(20.0)


def test_shoal_config_prints_why_each_value_was_derived(capsys):
    name = register("ShoalToyBox-v0", ToyEnv)
    assert main(["config", name, "--train.gamma", "0.9"]) == 0
    out = capsys.readouterr().out
    assert "# derived: continuous control" in out and 'recipe = "derived"' in out
    assert "gamma = 0.9\n" in out and "derived: episodes last" not in out


# ---- bad input ----


def test_an_action_space_the_policy_cannot_handle_names_the_env(capsys):
    with pytest.raises(ConfigError, match="env 'x' has action space"):
        recipe.check_spaces("x", BOX_OBS, gymnasium.spaces.Tuple((gymnasium.spaces.Discrete(2),)))
    name = register("ShoalTupleAction-v0", TupleActionEnv)
    assert main(["train", name]) == 2
    assert "unsupported action space" in capsys.readouterr().err


def test_an_env_whose_step_raises_is_named(tmp_path, capsys):
    name = register("ShoalToyRaise-v0", ToyEnv, fail_at=5)
    code = main(["train", name, "--run.dir", str(tmp_path), "--quiet", "--env.num-envs", "4"])
    err = capsys.readouterr().err
    assert code == 1
    assert f"env '{name}' raised RuntimeError" in err and "boom" in err and "env index 2" in err


def test_nan_rewards_name_the_env_index_and_step_and_keep_the_run(tmp_path, capsys):
    name = register("ShoalToyNaN-v0", ToyEnv, nan_at=150)
    flags = ["--run.dir", str(tmp_path), "--run.name", "nan", "--quiet", "--env.num-envs", "4"]
    flags += ["--train.batch-size", "64", "--train.minibatch-size", "64", "--train.checkpoint-interval", "1"]
    assert main(["train", name, *flags]) == 1
    err = capsys.readouterr().err
    assert "NaN or infinite rewards at step 150" in err and "env index 2" in err
    run = tmp_path / "nan"
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # 64 steps per epoch over 4 envs = 16 per env: epochs 1-9 finished before step 150.
    assert [m["epoch"] for m in lines] == list(range(1, 10))
    assert load_file(run / "checkpoint.pt")["epoch"] == 9
    assert (run / "config.json").is_file() and (run / "model.pt").is_file()


def test_train_from_python_derives_the_values_left_at_their_defaults(tmp_path):
    name = register("ShoalToyBox-v0", ToyEnv)
    flags = ["--run.dir", str(tmp_path), "--run.name", "py", "--run.quiet", "true", "--env.num-envs", "2"]
    cfg = load_config(name, [*flags, "--train.total-steps", "64", "--train.learning-rate", "0.01"])
    assert cfg.env.recipe == "auto" and not cfg.policy.obs_norm
    from shoal.train import train

    train(cfg)
    saved = json.loads((tmp_path / "py" / "config.json").read_text())
    assert saved["env"]["recipe"] == "derived" and saved["policy"]["obs_norm"] is True
    # Values that differ from the defaults count as the user's.
    assert saved["env"]["num_envs"] == 2 and saved["train"]["learning_rate"] == 0.01
    assert saved["train"]["batch_size"] % 2 == 0 and saved["train"]["reward_scale"] is True


def test_a_native_game_in_pixel_mode_keeps_its_game_options_and_derives_the_image_recipe():
    # breakout.toml is tuned for the vector observation (1024 envs, an MLP, obs_norm); in pixel
    # mode its frameskip stays and the rest comes from the image rules.
    cfg = load_config("breakout", ["--env.options.obs", "pixels"], derive=recipe.derive_into)
    assert cfg.env.recipe == "derived"
    assert cfg.env.options == {"frameskip": 4, "obs": "pixels"}
    assert cfg.env.num_envs == 16 and not cfg.policy.obs_norm and not cfg.policy.lstm
    assert cfg.policy.hidden_size == 512 and cfg.train.update_epochs == 4
    vector = load_config("breakout", [], derive=recipe.derive_into)
    assert vector.env.recipe == "file" and vector.env.num_envs == 1024


def test_pixel_mode_from_a_config_file_is_seen_before_the_recipe_file(tmp_path):
    path = tmp_path / "pixels.toml"
    path.write_text('[env]\nname = "pong"\n[env.options]\nobs = "pixels"\n')
    cfg = load_config(config_file=path, derive=recipe.derive_into)
    assert cfg.env.recipe == "derived" and cfg.env.options["obs"] == "pixels"
