"""CUDA paths: the captured inference step (train.cuda_graph), pinned staging copies, compiled
policy and end-to-end training on the GPU. Skipped where no GPU is present (CI); run on a GPU
machine with `python -m pytest tests/test_cuda.py`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import shoal
from shoal.core.config import load_config
from shoal.policy import Policy, sample_actions
from shoal.train import rollout, train
from shoal.train.cuda_graph import GraphedAct, use_cuda_graph
from shoal.train.rollout import Collector, RolloutBuffer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = torch.device("cuda")
BUFFERS = ("obs", "actions", "log_probs", "values", "rewards", "dones", "truncated", "state_h", "state_c")


def lstm_policy(env, hidden: int = 32) -> Policy:
    torch.manual_seed(0)
    return Policy(env.single_observation_space, env.single_action_space, hidden_size=hidden, lstm=True)


def eager_act(policy: Policy, autocast=None):
    def act(obs, state):
        with autocast(cache_enabled=False) if autocast else torch.autocast("cuda", enabled=False):
            logits, value, new_state = policy.step(obs, state)
            actions, log_prob = sample_actions(policy, logits)
        return actions, log_prob, value, new_state

    return act


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_graphed_step_equals_eager_and_follows_weight_updates(precision):
    env = shoal.make("breakout", num_envs=64, seed=0)
    try:
        policy = lstm_policy(env).to(CUDA)
        autocast = None
        if precision == "bfloat16":

            def autocast(cache_enabled=True):
                return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=cache_enabled)

        act = eager_act(policy, autocast)
        graphed = GraphedAct(act)
        obs = torch.from_numpy(env.reset()[0]).to(CUDA)
        state = (torch.randn(64, 32, device=CUDA), torch.randn(64, 32, device=CUDA))
        tol = {"rtol": 1e-5, "atol": 1e-5} if precision == "float32" else {"rtol": 2e-2, "atol": 2e-2}
        optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
        for _ in range(2):
            with torch.inference_mode():
                e_actions, e_log_prob, e_value, (e_h, e_c) = act(obs, (state[0].clone(), state[1].clone()))
                g_actions, g_log_prob, g_value, (g_h, g_c) = graphed(obs, state)
                torch.testing.assert_close(g_value.float(), e_value.float(), **tol)
                torch.testing.assert_close(g_h, e_h, **tol)
                torch.testing.assert_close(g_c, e_c, **tol)
                # The sampled actions differ (other random numbers); their log-probabilities
                # must be those of the same distribution.
                with autocast() if autocast else torch.autocast("cuda", enabled=False):
                    logits = policy.step(obs, (state[0].clone(), state[1].clone()))[0]
                log_p = torch.log_softmax(logits.float(), -1)
                torch.testing.assert_close(g_log_prob, log_p.gather(-1, g_actions).squeeze(-1), **tol)
            # The next call starts from the state the graph wrote back (cloned outside inference
            # mode, so that the update below can use it).
            state = (g_h.clone(), g_c.clone())
            # An in-place optimizer step must reach the graph on its next replay.
            optimizer.zero_grad()
            policy.step(obs, state)[1].float().pow(2).mean().backward()
            optimizer.step()
    finally:
        env.close()


def test_graphed_bfloat16_step_keeps_the_heads_in_float32():
    # Values near 100, where bfloat16's spacing is 0.5, and logits a few units apart: the graphed
    # step's values and log-probabilities must be the float32 heads' on the features (the new
    # LSTM state), not bfloat16's.
    env = shoal.make("breakout", num_envs=64, seed=0)
    try:
        policy = lstm_policy(env).to(CUDA)
        with torch.no_grad():
            policy.critic.bias.fill_(100.0)
            torch.nn.init.orthogonal_(policy.actor.weight, 5.0)

        def autocast(cache_enabled=True):
            return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=cache_enabled)

        graphed = GraphedAct(eager_act(policy, autocast))
        obs = torch.from_numpy(env.reset()[0]).to(CUDA)
        state = (torch.randn(64, 32, device=CUDA), torch.randn(64, 32, device=CUDA))
        with torch.inference_mode():
            actions, log_prob, value, (h, _) = graphed(obs, state)
            expected_value = F.linear(h, policy.critic.weight, policy.critic.bias).squeeze(-1)
            log_p = torch.log_softmax(F.linear(h, policy.actor.weight, policy.actor.bias), -1)
        assert value.dtype == log_prob.dtype == torch.float32
        torch.testing.assert_close(value, expected_value, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(log_prob, log_p.gather(-1, actions).squeeze(-1), rtol=1e-5, atol=1e-4)
    finally:
        env.close()


def test_graphed_sampling_draws_from_the_policy_distribution():
    env = shoal.make("cartpole", num_envs=4096, seed=0)
    try:
        policy = lstm_policy(env).to(CUDA)
        graphed = GraphedAct(eager_act(policy))
        obs = torch.zeros(4096, policy.obs_size, device=CUDA)
        state = policy.initial_state(4096, CUDA)
        with torch.inference_mode():
            logits = policy.step(obs, state)[0]
            draws = []
            for _ in range(50):
                actions, *_ = graphed(obs, policy.initial_state(4096, CUDA))
                draws.append(actions.clone())
        draws_t = torch.cat(draws).squeeze(-1)
        counts = torch.bincount(draws_t, minlength=2).float() / draws_t.numel()
        expected = torch.softmax(logits[0].float(), -1)
        # 204,800 draws: the standard error of a frequency is below 0.0012.
        torch.testing.assert_close(counts, expected, rtol=0, atol=0.006)
        # Replays draw new numbers.
        assert not torch.equal(draws[0], draws[1])
    finally:
        env.close()


def collect_buffers(device: torch.device, cuda_graph: bool, epochs: int = 2) -> list[dict]:
    env = shoal.make("cartpole", num_envs=16, seed=3, max_steps=20)
    try:
        policy = lstm_policy(env, 16).to(device)
        obs_dtype = env.single_observation_space.dtype
        buf = RolloutBuffer(16, 16, 8, policy.obs_size, obs_dtype, 1, False, 16, device)
        collector = Collector(env, policy, buf, device, 0.99, reward_clip=0.5)
        if cuda_graph:
            use_cuda_graph(collector)
            assert isinstance(collector.act_fn, GraphedAct) == (device.type == "cuda")
        obs, _ = env.reset()
        out = []
        for _ in range(epochs):
            obs = collector.collect(obs)
            out.append({k: getattr(buf, k).cpu().clone() for k in BUFFERS})
        return out
    finally:
        env.close()


def test_cuda_rollout_fills_the_same_buffer_as_cpu(monkeypatch):
    """Greedy actions, so every mode sees the same trajectories: the pinned staging copies and
    the graphed step must store what the CPU rollout stores (truncation bootstrap, reward clip,
    LSTM resets, segment states)."""
    monkeypatch.setattr(rollout, "sample_actions", lambda p, logits: sample_actions(p, logits, True))
    cpu = collect_buffers(torch.device("cpu"), False)
    for cuda_graph in (False, True):
        gpu = collect_buffers(CUDA, cuda_graph)
        for a, b in zip(cpu, gpu, strict=True):
            for key in BUFFERS:
                torch.testing.assert_close(
                    b[key], a[key], rtol=1e-4, atol=1e-4, msg=f"{key}, graph {cuda_graph}"
                )
    assert sum(int(e["truncated"].sum()) for e in cpu) > 0  # the bootstrap path ran


def test_compiled_policy_equals_eager_on_cuda():
    env = shoal.make("breakout", num_envs=8, seed=0)
    try:
        policy = lstm_policy(env).to(CUDA)
        obs = torch.from_numpy(np.stack([env.reset()[0]] * 8, axis=1)).to(CUDA)  # [B, T, obs]
        starts = torch.zeros(8, 8, device=CUDA)
        starts[:, 3] = 1
        results = []
        for forward in (policy.forward_sequence, torch.compile(policy.forward_sequence)):
            policy.zero_grad()
            logits, values = forward(obs, starts)
            (logits.float().square().mean() + values.float().square().mean()).backward()
            results.append((logits.detach(), values.detach(), [p.grad.clone() for p in policy.parameters()]))
        (el, ev, eg), (cl, cv, cg) = results
        torch.testing.assert_close(cl, el, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(cv, ev, rtol=1e-4, atol=1e-5)
        for c, e in zip(cg, eg, strict=True):
            torch.testing.assert_close(c, e, rtol=1e-3, atol=1e-5)
    finally:
        env.close()


@pytest.mark.parametrize("extra", [[], ["--train.cuda-graph", "true"], ["--train.compile", "true"]])
def test_training_on_cuda_runs_and_resumes(tmp_path, extra):
    overrides = [
        "--train.device", "cuda",
        "--train.precision", "bfloat16",
        "--policy.lstm", "true",
        "--policy.hidden-size", "32",
        "--env.num-envs", "64",
        "--train.batch-size", "4096",
        "--train.minibatch-size", "1024",
        "--train.bptt-horizon", "16",
        "--train.total-steps", "12288",
        "--train.checkpoint-interval", "1",
        "--run.dir", str(tmp_path),
        "--run.name", "cuda",
        "--run.quiet", "true",
        *extra,
    ]  # fmt: skip
    cfg = load_config("breakout", overrides)
    result = train(cfg)
    assert len(result.history) == 3
    assert all(np.isfinite(m["policy_loss"]) and np.isfinite(m["value_loss"]) for m in result.history)
    saved = json.loads((result.run_dir / "config.json").read_text())
    assert saved["train"]["device"] == "cuda"
    cfg2 = load_config(
        "breakout", [*overrides, "--train.total-steps", "16384", "--run.resume", str(result.run_dir)]
    )
    resumed = train(cfg2)
    assert resumed.history[-1]["agent_steps"] == 16384
