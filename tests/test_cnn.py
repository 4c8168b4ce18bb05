"""Image observations (issue "Pixels"): which observations are images, the Nature and IMPALA CNN
encoders (alone, next to a vector part, with the LSTM, under bfloat16), uint8 frames through the
rollout buffer, checkpoints that rebuild the CNN, the errors, and training on a small pixel env."""

from __future__ import annotations

import json

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium import spaces

from shoal.core.config import ConfigError, PolicyConfig, load_config
from shoal.emulation import ObsFlattener, make_gymnasium, structured_observation_space
from shoal.encoders import image_layout
from shoal.policy import Policy, make_policy, sample_actions
from shoal.train import load_agent, train
from shoal.train.checkpoint import atomic_torch_save, model_payload
from shoal.train.rollout import Collector, RolloutBuffer

CPU = torch.device("cpu")
SIDE = 36  # the Nature CNN's smallest frame
HWC = spaces.Box(0, 255, (SIDE, SIDE, 3), np.uint8)
CHW = spaces.Box(0, 255, (2, SIDE, SIDE), np.uint8)
DICT = spaces.Dict(
    {
        "mode": spaces.Discrete(3),
        "pixels": spaces.Box(0, 255, (SIDE, SIDE, 1), np.uint8),
        "speed": spaces.Box(-1.0, 1.0, (2,), np.float32),
    }
)
VECTOR = spaces.Box(-1.0, 1.0, (5,), np.float32)
ACTIONS = spaces.Discrete(4)
HIDDEN = 16


def flat(space: spaces.Space) -> spaces.Box:
    """The Box of the rows an emulated env presents for `space`."""
    return ObsFlattener(space).space


def policy_for(structured, encoder="auto", lstm=False, seed=0, **cfg) -> Policy:
    torch.manual_seed(seed)
    config = PolicyConfig(hidden_size=HIDDEN, lstm=lstm, encoder=encoder, **cfg)
    return make_policy(flat(structured), ACTIONS, config, structured_space=structured)


def rows(structured, batch, seed=0) -> torch.Tensor:
    """`batch` flat observation rows of samples of `structured`, in the rows' dtype."""
    flattener = ObsFlattener(structured)
    structured.seed(seed)
    out = np.zeros((batch, flattener.size), dtype=flattener.dtype)
    for row in out:
        flattener.flatten(structured.sample(), row)
    return torch.from_numpy(out)


# ---- which observations are images ----


@pytest.mark.parametrize(
    "shape,layout",
    [
        ((84, 84, 3), "HWC"),
        ((84, 84, 1), "HWC"),
        ((96, 96, 16), "HWC"),
        ((4, 84, 84), "CHW"),
        ((1, 36, 36), "CHW"),
        ((8, 8, 8), "HWC"),  # both ends could be channels: HWC
        ((16, 16, 3), "HWC"),  # 16 could be channels, but 3 cannot be a side
        ((3, 16, 16), "CHW"),
        ((84, 84, 17), None),  # no small channel dimension
        ((4, 4, 3), None),  # sides too small
        ((84, 84), None),
        ((5,), None),
        ((2, 3, 4, 5), None),
    ],
)
def test_image_layout(shape, layout):
    assert image_layout(shape) == layout


def test_auto_picks_a_cnn_for_an_image_and_the_mlp_for_vectors():
    assert policy_for(HWC).encoder_name == "nature"
    assert policy_for(CHW).encoder_name == "nature"
    assert policy_for(DICT).encoder_name == "nature"
    assert policy_for(VECTOR).encoder_name == "mlp"
    # Frames the Nature CNN cannot read get the IMPALA CNN, which reads any size.
    assert policy_for(spaces.Box(0, 255, (16, 16, 3), np.uint8)).encoder_name == "impala"
    # A float "image" is not pixels, and two images are more than the CNN reads: the MLP, as before.
    assert policy_for(spaces.Box(0.0, 1.0, (SIDE, SIDE, 3), np.float32)).encoder_name == "mlp"
    assert policy_for(spaces.Dict({"a": HWC, "b": HWC})).encoder_name == "mlp"
    # Without a structured space the policy sees the flat rows: the MLP.
    config = PolicyConfig(hidden_size=HIDDEN, lstm=False)
    assert make_policy(flat(HWC), ACTIONS, config).encoder_name == "mlp"
    # "mlp" asked for an image flattens it.
    assert policy_for(HWC, encoder="mlp").encoder_name == "mlp"


# ---- the encoders in the policy ----


@pytest.mark.parametrize("lstm", [False, True])
@pytest.mark.parametrize("encoder", ["nature", "impala"])
@pytest.mark.parametrize("structured", [HWC, CHW, DICT], ids=["HWC", "CHW", "Dict"])
def test_step_outputs(structured, encoder, lstm):
    policy = policy_for(structured, encoder, lstm)
    assert policy.encoder_name == encoder
    obs = rows(structured, 3)
    with torch.no_grad():
        logits, value, state = policy.step(obs, policy.initial_state(3))
        actions, log_prob = sample_actions(policy, logits)
    assert actions.shape == (3, 1) and actions.dtype == torch.int64
    assert log_prob.shape == (3,) and log_prob.dtype == torch.float32
    assert value.shape == (3,) and value.dtype == torch.float32
    assert logits.shape == (3, ACTIONS.n)
    assert state[0].shape == ((3, HIDDEN) if lstm else (3, 0))
    assert torch.isfinite(logits).all() and torch.isfinite(value).all()


@pytest.mark.parametrize("structured", [HWC, CHW, DICT], ids=["HWC", "CHW", "Dict"])
def test_frames_are_views_of_the_rows(structured):
    policy = policy_for(structured, "impala")
    obs = rows(structured, 2)
    frames = policy.encoder.frames(obs)
    assert frames.shape[0] == 2 and frames.shape[2:] == (SIDE, SIDE)
    assert frames.dtype == obs.dtype
    assert frames.untyped_storage().data_ptr() == obs.untyped_storage().data_ptr()  # no copy
    image = ObsFlattener(structured).unflatten(obs)
    image = image["pixels"] if isinstance(image, dict) else image
    expected = image.permute(0, 3, 1, 2) if image.shape[-1] <= 3 else image
    assert torch.equal(frames, expected)


def test_hwc_and_chw_read_the_same_image():
    # The same frames, channels last or first, through the same weights: the same outputs.
    hwc, chw = spaces.Box(0, 255, (SIDE, SIDE, 2), np.uint8), CHW
    a, b = policy_for(hwc, "impala"), policy_for(chw, "impala")
    b.load_state_dict(a.state_dict())
    frames = rows(chw, 2).view(2, 2, SIDE, SIDE)
    with torch.no_grad():
        out_a = a.step(frames.permute(0, 2, 3, 1).reshape(2, -1), a.initial_state(2))
        out_b = b.step(frames.reshape(2, -1), b.initial_state(2))
    torch.testing.assert_close(out_a[0], out_b[0])
    torch.testing.assert_close(out_a[1], out_b[1])


@pytest.mark.parametrize("encoder", ["nature", "impala"])
def test_forward_sequence_equals_stepping_with_a_reset_inside(encoder):
    policy = policy_for(DICT, encoder, lstm=True)
    batch, horizon = 2, 5
    obs = rows(DICT, batch * horizon).view(batch, horizon, -1)
    starts = torch.zeros(batch, horizon)
    starts[0, 2] = starts[1, 3] = 1.0  # an episode starts inside each segment
    state0 = (torch.randn(batch, HIDDEN), torch.randn(batch, HIDDEN))
    with torch.no_grad():
        logits, values = policy.forward_sequence(obs, starts, state0)
        state = state0
        for t in range(horizon):
            keep = (1 - starts[:, t]).unsqueeze(1)
            state = (state[0] * keep, state[1] * keep)
            step_logits, step_values, state = policy.step(obs[:, t], state)
            torch.testing.assert_close(step_logits, logits[:, t], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(step_values, values[:, t], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("structured", [CHW, DICT], ids=["CHW", "Dict"])
def test_compiled_cnn_equals_eager(structured):
    # train.compile compiles policy.step and policy.forward_sequence: outputs and gradients must
    # be eager's within float tolerance, for the CNN (with its uint8 scaling) as for the MLP.
    policy = policy_for(structured, "nature", lstm=True)
    batch, horizon = 2, 3
    obs = rows(structured, batch * horizon).view(batch, horizon, -1)
    starts = torch.zeros(batch, horizon)
    starts[1, 1] = 1.0
    state = (torch.randn(batch, HIDDEN), torch.randn(batch, HIDDEN))
    results = []
    for forward in (policy.forward_sequence, torch.compile(policy.forward_sequence, fullgraph=True)):
        policy.zero_grad()
        logits, values = forward(obs, starts, state)
        (logits.square().mean() + values.mean()).backward()
        results.append((logits, values, [p.grad.clone() for p in policy.parameters()]))
    (e_logits, e_values, e_grads), (c_logits, c_values, c_grads) = results
    torch.testing.assert_close(c_logits, e_logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(c_values, e_values, rtol=1e-4, atol=1e-5)
    for compiled_grad, eager_grad in zip(c_grads, e_grads, strict=True):
        torch.testing.assert_close(compiled_grad, eager_grad, rtol=1e-3, atol=1e-5)
    with torch.no_grad():
        eager_step = policy.step(obs[:, 0], state)
        compiled_step = torch.compile(policy.step, fullgraph=True)(obs[:, 0], state)
    torch.testing.assert_close(compiled_step[0], eager_step[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("encoder", ["nature", "impala"])
def test_bfloat16_autocast_keeps_heads_float32(encoder):
    policy = policy_for(DICT, encoder, lstm=True)
    obs = rows(DICT, 6).view(2, 3, -1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, value, _ = policy.step(obs[:, 0], policy.initial_state(2))
        seq_logits, seq_values = policy.forward_sequence(obs, torch.zeros(2, 3))
    for out in (logits, value, seq_logits, seq_values):
        assert out.dtype == torch.float32 and torch.isfinite(out).all()
    # The CNN learns through the float32 heads.
    (seq_values.sum() + seq_logits.square().sum()).backward()
    _, first_conv = policy.parameter_groups()["input"][0]
    assert first_conv.ndim == 4 and first_conv.grad is not None and first_conv.grad.abs().sum() > 0


@pytest.mark.parametrize("encoder", ["nature", "impala"])
def test_parameter_groups_classify_every_parameter(encoder):
    policy = policy_for(DICT, encoder, lstm=True)
    groups = {role: [n for n, _ in named] for role, named in policy.parameter_groups().items()}
    every = [n for names in groups.values() for n in names]
    assert sorted(every) == sorted(n for n, _ in policy.named_parameters())
    first = "encoder.cnn.input.weight" if encoder == "nature" else "encoder.cnn.stacks.0.conv.weight"
    assert groups["input"] == [first, "encoder.vector.input.weight"]
    assert set(groups["output"]) == {"actor.weight", "critic.weight"}
    assert "encoder.cnn.fc.weight" in groups["hidden"] and "encoder.fuse.weight" in groups["hidden"]
    convs = [n for n, p in policy.named_parameters() if p.ndim == 4]
    assert len(convs) == (3 if encoder == "nature" else 15)
    assert set(convs) - {first} <= set(groups["hidden"])


def test_obs_norm_standardizes_the_vector_part_of_a_dict():
    policy = policy_for(DICT, "impala", obs_norm=True)
    obs = rows(DICT, 8)
    policy.update_obs_stats(obs.view(2, 4, -1))
    vector = policy.encoder.vector
    columns = policy.encoder.vector_columns
    torch.testing.assert_close(vector.obs_mean, obs[:, columns].float().mean(0))
    assert vector.obs_count.item() == 8
    assert "encoder.vector.obs_mean" in policy.state_dict()


# ---- uint8 frames through the rollout ----


class Quadrant(gymnasium.Env):
    """A 36x36x1 uint8 frame with one bright pixel; reward 1 for the action naming its quadrant
    (0 top left, 1 top right, 2 bottom left, 3 bottom right); episodes of 8 steps."""

    observation_space = spaces.Box(0, 255, (SIDE, SIDE, 1), np.uint8)
    action_space = spaces.Discrete(4)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._frame(), {}

    def _frame(self) -> np.ndarray:
        y, x = self.np_random.integers(0, SIDE, size=2)
        self.quadrant = 2 * int(y >= SIDE // 2) + int(x >= SIDE // 2)
        frame = np.zeros((SIDE, SIDE, 1), np.uint8)
        frame[y, x, 0] = 255
        return frame

    def step(self, action):
        reward = float(int(action) == self.quadrant)
        self.t += 1
        return self._frame(), reward, False, self.t >= 8, {}


if "ShoalQuadrant-v0" not in gymnasium.registry:
    gymnasium.register("ShoalQuadrant-v0", entry_point=Quadrant)


def test_uint8_frames_stay_uint8_in_the_rollout_buffer():
    env = make_gymnasium(Quadrant, num_envs=2, seed=3)
    assert env.single_observation_space.dtype == np.uint8
    policy = policy_for(structured_observation_space(env), "impala")
    obs, _ = env.reset()
    first = obs.copy()
    buffer = RolloutBuffer(2, 4, 4, policy.obs_size, env.single_observation_space.dtype, 1, False, 0, CPU)
    Collector(env, policy, buffer, CPU, gamma=0.9).collect(obs)
    assert buffer.obs.dtype == torch.uint8
    assert torch.equal(buffer.obs[:, 0], torch.from_numpy(first))
    assert buffer.obs.max() == 255  # the bright pixel, as the env drew it


def test_the_env_tells_the_structured_space_on_every_backend():
    from shoal import vector

    env = make_gymnasium(Quadrant, num_envs=1)
    assert structured_observation_space(env) == Quadrant.observation_space
    assert env.single_observation_space.shape == (SIDE * SIDE,)
    serial = vector.make("gym:ShoalQuadrant-v0", backend="serial", num_envs=2, num_workers=2)
    try:
        assert structured_observation_space(serial) == Quadrant.observation_space
    finally:
        serial.close()
    # A flat space stays itself.
    cartpole = make_gymnasium("CartPole-v1")
    assert structured_observation_space(cartpole) == cartpole.single_observation_space


# ---- checkpoints ----


@pytest.mark.parametrize("structured", [HWC, DICT], ids=["HWC", "Dict"])
def test_checkpoint_round_trip_rebuilds_the_same_cnn(tmp_path, structured):
    cfg = load_config("cartpole", ["--policy.hidden-size", str(HIDDEN), "--policy.encoder", "impala"])
    torch.manual_seed(1)
    policy = make_policy(flat(structured), ACTIONS, cfg.policy, structured_space=structured)
    atomic_torch_save(model_payload(policy, cfg, flat(structured), ACTIONS), tmp_path / "model.pt")
    agent = load_agent(tmp_path)  # what `shoal eval` loads
    assert agent.policy.encoder_name == "impala"
    assert agent.policy.structured_space == structured
    obs = rows(structured, 3)
    with torch.no_grad():
        expected = policy.step(obs, policy.initial_state(3))
        got = agent.policy.step(obs, agent.policy.initial_state(3))
    torch.testing.assert_close(got[0], expected[0], rtol=0, atol=0)
    torch.testing.assert_close(got[1], expected[1], rtol=0, atol=0)
    assert agent.act(obs.numpy(), deterministic=True).shape == (3,)


def test_a_checkpoint_without_a_structured_space_rebuilds_the_mlp(tmp_path):
    # Written before image observations had an encoder: the flat rows went through the MLP.
    cfg = load_config("cartpole", ["--policy.hidden-size", str(HIDDEN)])
    old = make_policy(flat(HWC), ACTIONS, cfg.policy)
    payload = model_payload(old, cfg, flat(HWC), ACTIONS)
    assert "structured_observation_space" not in payload
    del payload["config"]["policy"]["encoder"]
    atomic_torch_save(payload, tmp_path / "model.pt")
    assert load_agent(tmp_path).policy.encoder_name == "mlp"


# ---- errors in terms of the user's input ----


def test_a_float_image_for_a_cnn_names_its_dtype_and_shape():
    floats = spaces.Box(0.0, 1.0, (SIDE, SIDE, 3), np.float32)
    with pytest.raises(ConfigError, match=r"float32 Box of shape \(36, 36, 3\).*uint8"):
        policy_for(floats, "nature")


def test_a_frame_too_small_for_the_nature_cnn_suggests_impala():
    small = spaces.Box(0, 255, (16, 16, 3), np.uint8)
    with pytest.raises(ConfigError, match=r"at least 36x36.*shape \(16, 16, 3\).*'impala'"):
        policy_for(small, "nature")
    assert policy_for(small, "impala").encoder_name == "impala"


def test_a_cnn_for_vector_observations_is_refused():
    with pytest.raises(ConfigError, match=r"'nature' reads one uint8 image.*shape \(5,\).*no image"):
        policy_for(VECTOR, "nature")
    with pytest.raises(ConfigError, match="holds 2 images"):
        policy_for(spaces.Dict({"a": HWC, "b": HWC}), "impala")
    with pytest.raises(ConfigError, match="policy.encoder must be one of"):
        policy_for(HWC, "resnet")


def test_obs_norm_and_mup_with_a_cnn_are_refused():
    with pytest.raises(ConfigError, match="obs_norm standardizes vector features; image observations"):
        policy_for(HWC, obs_norm=True)
    with pytest.raises(ConfigError, match="'mup' is for the MLP encoder"):
        policy_for(HWC, parametrization="mup")
    # The MLP keeps both.
    policy_for(HWC, "mlp", obs_norm=True, parametrization="mup")


# ---- training end to end ----


def pixel_config(tmp_path, encoder, *flags):
    return load_config(
        "gym:ShoalQuadrant-v0",
        [
            "--run.dir", str(tmp_path), "--run.name", encoder, "--run.quiet", "true",
            "--env.recipe", "none", "--env.num-envs", "4",
            "--train.torch-threads", "1", "--train.device", "cpu",
            "--train.batch-size", "32", "--train.bptt-horizon", "4", "--train.minibatch-size", "16",
            "--train.total-steps", "64", "--policy.hidden-size", str(HIDDEN),
            "--policy.encoder", encoder, *flags,
        ],
    )


@pytest.mark.parametrize("encoder,backend", [("nature", "native"), ("impala", "serial")])
def test_train_on_pixels(tmp_path, encoder, backend):
    cfg = pixel_config(tmp_path, encoder, "--env.backend", backend)
    result = train(cfg)
    lines = (result.run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert all(np.isfinite(json.loads(line)["value_loss"]) for line in lines)
    agent = load_agent(result.run_dir)
    assert agent.policy.encoder_name == encoder


def test_train_refuses_muon_with_a_cnn_before_making_the_run_folder(tmp_path):
    cfg = pixel_config(tmp_path, "impala", "--train.optimizer", "muon")
    with pytest.raises(ConfigError, match="'muon' needs the MLP encoder"):
        train(cfg)
    assert not (tmp_path / "impala").exists()
