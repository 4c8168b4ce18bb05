"""muP: equality with the standard parametrization at base width, the width rules, the
optimizer groups, and benchmarks/mup_transfer.py. The coordinate check is in
test_coord_check.py."""

import json
import math
from types import SimpleNamespace

import gymnasium
import numpy as np
import pytest
import torch
from torch import nn

from shoal.core.config import PolicyConfig, load_config
from shoal.mup import (
    apply_mup,
    lr_scales,
    muon_lr_scale,
    optimizer_param_groups,
    param_rules,
    regroup,
)
from shoal.policy import make_policy
from shoal.train.optim import Optimizers, make_optimizer

OBS = gymnasium.spaces.Box(-1, 1, (6,), np.float32)
ACT = gymnasium.spaces.Discrete(3)


@pytest.fixture(autouse=True)
def one_thread():
    # Small matrices: a second thread only adds contention on a shared machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train_cfg(**kw):
    base = dict(optimizer="adam", learning_rate=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                muon_momentum=0.95, muon_adam_lr_ratio=0.5)
    base.update(kw)
    return SimpleNamespace(**base)


def build(width, parametrization, base_width=32, seed=0, lstm=True, num_layers=2, aux_head=None):
    torch.manual_seed(seed)
    cfg = PolicyConfig(hidden_size=width, num_layers=num_layers, lstm=lstm, parametrization=parametrization,
                       base_width=base_width)
    return make_policy(OBS, ACT, cfg, aux_head)


def group_summary(policy, optimizers):
    names = {id(p): n for n, p in policy.named_parameters()}
    out = []
    for opt in optimizers.optimizers:
        for g in opt.param_groups:
            settings = {k: v for k, v in g.items() if k != "params"}
            out.append((type(opt).__name__, [names[id(p)] for p in g["params"]], settings))
    return out


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "muon"])
def test_base_width_equals_standard(optimizer):
    std, mup = build(32, "standard"), build(32, "mup")
    assert getattr(mup, "mup_base_width", None) == 32
    std_state, mup_state = std.state_dict(), mup.state_dict()
    assert std_state.keys() == mup_state.keys()
    assert all(torch.equal(std_state[k], mup_state[k]) for k in std_state)

    cfg = train_cfg(optimizer=optimizer)
    opt_std = regroup(make_optimizer(std, cfg), std)
    opt_mup = regroup(make_optimizer(mup, cfg), mup)
    assert group_summary(std, opt_std) == group_summary(mup, opt_mup)
    assert all(g["lr_scale"] == 1.0 for g in opt_mup.param_groups)

    # Identical updates from identical gradients.
    obs = torch.randn(5, 4, 6)
    starts = torch.zeros(5, 4)
    for policy, opt in ((std, opt_std), (mup, opt_mup)):
        for _ in range(2):
            logits, values = policy.forward_sequence(obs, starts)
            opt.zero_grad()
            (logits.pow(2).mean() + values.pow(2).mean()).backward()
            opt.step()
    assert all(torch.equal(a, b) for a, b in zip(std.parameters(), mup.parameters(), strict=True))


def rms(t):
    return float(t.detach().pow(2).mean().sqrt())


def test_init_follows_the_width_rules():
    base, wide = build(32, "mup", seed=3), build(128, "mup", seed=3)
    std_wide = build(128, "standard", seed=3)
    b, w = dict(base.named_parameters()), dict(wide.named_parameters())
    # Input layer: entry size independent of width (orthogonal init alone would halve it here).
    assert rms(w["encoder.input.weight"]) == pytest.approx(rms(b["encoder.input.weight"]), rel=0.02)
    std_input = dict(std_wide.named_parameters())["encoder.input.weight"]
    assert rms(std_input) < 0.6 * rms(b["encoder.input.weight"])
    # Hidden matrices: variance x base/width, gate by gate for the LSTM.
    hidden = "encoder.hidden.0.weight"
    assert rms(w[hidden]) == pytest.approx(0.5 * rms(b[hidden]), rel=0.02)
    for name in ("lstm.weight_ih_l0", "lstm.weight_hh_l0"):
        for gb, gw in zip(b[name].chunk(4), w[name].chunk(4), strict=True):
            assert rms(gw) == pytest.approx(0.5 * rms(gb), rel=0.05)
    # Heads: std x base/width.
    for name in ("actor.weight", "critic.weight"):
        assert rms(w[name]) == pytest.approx(0.25 * rms(b[name]), rel=0.05)
    # The same random draws as the standard policy, only rescaled.
    ratio = w["encoder.hidden.0.weight"] / dict(std_wide.named_parameters())["encoder.hidden.0.weight"]
    assert torch.allclose(ratio, torch.ones_like(ratio))


def test_lr_scales_and_schedule():
    policy = build(128, "mup")
    rules = param_rules(policy, 32)
    roles = {n: r.role for n, r in rules.items()}
    assert roles["encoder.input.weight"] == "input" and roles["lstm.weight_hh_l0"] == "hidden"
    assert roles["actor.weight"] == "output" and roles["lstm.bias_ih_l0"] == "vector"
    names = {id(p): n for n, p in policy.named_parameters()}
    adam = {names[k]: v for k, v in lr_scales(policy).items()}
    assert adam["encoder.input.weight"] == 1.0 and adam["encoder.input.bias"] == 1.0
    assert adam["encoder.hidden.0.weight"] == adam["lstm.weight_ih_l0"] == adam["critic.weight"] == 0.25
    assert adam["actor.bias"] == 1.0
    # Muon: torch's default scaling already follows the spectral rule; match_rms_adamw grows
    # like sqrt(width) and is scaled back.
    for adjust, expected in ((None, 1.0), ("original", 1.0), ("match_rms_adamw", 0.5)):
        muon = {names[k]: v for k, v in lr_scales(policy, True, adjust).items()}
        assert muon["encoder.hidden.0.weight"] == pytest.approx(expected)
        assert muon["lstm.weight_hh_l0"] == pytest.approx(expected)
        assert muon["actor.weight"] == 0.25 and muon["encoder.input.weight"] == 1.0
    with pytest.raises(ValueError, match="adjust_lr_fn"):
        muon_lr_scale(rules["lstm.weight_hh_l0"], "bogus")

    opt = regroup(make_optimizer(policy, train_cfg()), policy)
    assert [g["lr_scale"] for g in opt.param_groups] == [1.0, 0.25]
    # The first group (the reported learning rate) is the unscaled one.
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-2)
    opt.set_lr_factor(0.5)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([5e-3, 1.25e-3])
    # optimizer_param_groups describes the same split.
    described = optimizer_param_groups(policy, train_cfg())
    assert [(g["lr_scale"], len(g["params"])) for g in described] == [
        (g["lr_scale"], len(g["params"])) for g in opt.param_groups
    ]
    assert "lstm.weight_hh_l0" in described[1]["names"]

    # Muon: its AdamW half gets muon_adam_lr_ratio and the Adam rules.
    mopt = regroup(make_optimizer(policy, train_cfg(optimizer="muon")), policy)
    muon_groups, adam_groups = mopt.optimizers[0].param_groups, mopt.optimizers[1].param_groups
    adjust = muon_groups[0].get("adjust_lr_fn")
    expected = 0.5 if adjust == "match_rms_adamw" else 1.0
    assert [g["lr_scale"] for g in muon_groups] == pytest.approx([expected])
    assert sorted(g["lr_scale"] for g in adam_groups) == [0.25, 1.0]
    assert all(g["base_lr"] == pytest.approx(5e-3) for g in adam_groups)


def test_lr_scale_survives_a_checkpoint_round_trip():
    policy = build(64, "mup")
    opt = regroup(make_optimizer(policy, train_cfg()), policy)
    state = opt.state_dict()
    fresh = regroup(make_optimizer(policy, train_cfg(learning_rate=123.0)), policy)
    fresh.load_state_dict(state)
    fresh.set_lr_factor(1.0)
    assert [(g["lr_scale"], g["lr"]) for g in fresh.param_groups] == [(1.0, 1e-2), (0.5, 5e-3)]


def muon_step_norm(width, parametrization, adjust_lr_fn):
    # Spectral norm of Muon's first update of the square hidden matrix.
    policy = build(width, parametrization, seed=1)
    hidden = [p for _, p in policy.parameter_groups()["hidden"]]
    muon = torch.optim.Muon(hidden, lr=1e-2, weight_decay=0.0, adjust_lr_fn=adjust_lr_fn)
    opt = regroup(Optimizers([muon]), policy)
    weight = policy.encoder.hidden[0].weight
    before = weight.detach().clone()
    logits, values = policy.forward_sequence(torch.randn(8, 4, 6), torch.zeros(8, 4))
    opt.zero_grad()
    (logits.pow(2).mean() + values.pow(2).mean()).backward()
    opt.step()
    return float(torch.linalg.matrix_norm(weight.detach() - before, ord=2))


@pytest.mark.parametrize("adjust_lr_fn,standard_growth", [(None, 1.0), ("match_rms_adamw", 2.0)])
def test_muon_update_follows_the_spectral_rule(adjust_lr_fn, standard_growth):
    mup = muon_step_norm(128, "mup", adjust_lr_fn) / muon_step_norm(32, "mup", adjust_lr_fn)
    std = muon_step_norm(128, "standard", adjust_lr_fn) / muon_step_norm(32, "standard", adjust_lr_fn)
    assert mup == pytest.approx(1.0, rel=0.2)
    assert std == pytest.approx(standard_growth, rel=0.2)


def test_apply_mup_rejects_bad_input():
    policy = build(64, "mup")
    with pytest.raises(ValueError, match="already applied"):
        apply_mup(policy, 32)
    with pytest.raises(ValueError, match="policy.base_width >= 1"):
        apply_mup(build(64, "standard"), 0)
    with pytest.raises(TypeError, match="policy.base_width"):
        apply_mup(build(64, "standard"), 32.0)


def aux_head(width, seed=7, lags=5):
    # Built and initialized outside the policy, as an advantage estimator does.
    torch.manual_seed(seed)
    head = nn.Linear(width, 2 * lags)
    nn.init.orthogonal_(head.weight, 0.01)
    nn.init.zeros_(head.bias)
    return head


def test_aux_head_follows_the_output_rule():
    # The auxiliary head is a head: init std x base/width and Adam LR x base/width, like the
    # actor and critic; its bias is a vector.
    head = aux_head(128)
    before = head.weight.detach().clone()
    policy = build(128, "mup", aux_head=head)
    rules = param_rules(policy, 32)
    assert rules["aux_head.weight"].role == rules["actor.weight"].role == "output"
    assert rules["aux_head.bias"].role == "vector"
    # [10, 128] at base width 32 is [10, 32]: orthogonal's entry size 1/sqrt(128) vs 1/sqrt(32),
    # then std x 32/128.
    assert rules["aux_head.weight"].init_scale == pytest.approx(math.sqrt(128 / 32) * 0.25)
    torch.testing.assert_close(policy.aux_head.weight.detach(), before * rules["aux_head.weight"].init_scale)
    names = {id(p): n for n, p in policy.named_parameters()}
    scales = {names[k]: v for k, v in lr_scales(policy).items()}
    assert scales["aux_head.weight"] == scales["actor.weight"] == 0.25
    assert scales["aux_head.bias"] == 1.0
    muon = regroup(make_optimizer(policy, train_cfg(optimizer="muon")), policy)
    owned = [{names[id(p)] for g in opt.param_groups for p in g["params"]} for opt in muon.optimizers]
    assert "aux_head.weight" in owned[1] and "aux_head.weight" not in owned[0]  # the AdamW half
    # At base width the auxiliary head is left exactly as it was built.
    head = aux_head(32)
    same = head.weight.detach().clone()
    assert torch.equal(build(32, "mup", aux_head=head).aux_head.weight.detach(), same)


def test_hidden_size_is_a_pow2_sweep_key():
    from shoal.sweep.space import space_from_config

    cfg = load_config("cartpole")
    cfg.sweep = {"policy.hidden_size": {"distribution": "pow2", "min": 32, "max": 256}}
    space = space_from_config(cfg)
    assert "policy.hidden_size" in space.distributions()


def test_training_with_mup_resumes(tmp_path):
    from shoal.train import train

    cfg = load_config("cartpole", ["--train.total-steps", "1024", "--policy.parametrization", "mup",
                                   "--policy.hidden-size", "64", "--policy.base-width", "16",
                                   "--run.dir", str(tmp_path), "--run.quiet", "true",
                                   "--train.update-epochs", "2"])
    result = train(cfg)
    ckpt = torch.load(result.run_dir / "checkpoint.pt", weights_only=True)
    scales = sorted(g["lr_scale"] for state in ckpt["optimizer"] for g in state["param_groups"])
    assert scales == [0.25, 1.0]
    assert math.isclose(result.metrics["learning_rate"] / cfg.train.learning_rate,
                        ckpt["optimizer"][0]["param_groups"][0]["lr"] / cfg.train.learning_rate)
    cfg.run.resume = str(result.run_dir)
    cfg.train.total_steps = 2048
    resumed = train(cfg)
    assert resumed.metrics["agent_steps"] == 2048


# ---- benchmarks/mup_transfer.py: its summary, failure handling and resume (no training) ----


@pytest.fixture(scope="module")
def transfer():
    from bench_loader import benchmark_module

    with benchmark_module("mup_transfer.py") as module:
        yield module


def fake_runs(scores, env="cartpole"):
    # scores[parametrization][width][lr] = list of per-seed scores
    return [
        {"env": env, "parametrization": p, "width": w, "lr": lr, "seed": seed, "score": s,
         "last_score": s, "seconds": 0.0, "error": None}
        for p, by_w in scores.items() for w, by_lr in by_w.items() for lr, seeds in by_lr.items()
        for seed, s in enumerate(seeds, 1)
    ]


def test_transfer_summary_best_lr_spread_and_loss(transfer):
    nan = float("nan")
    runs = fake_runs({
        # standard: the best lr falls with width (1e-1 at 32, 1e-2 at 64, 1e-3 at 128, at the edge)
        "standard": {
            32: {1e-3: [10, 10], 1e-2: [50, 50], 1e-1: [100, 100]},
            64: {1e-3: [40, 40], 1e-2: [100, 100], 1e-1: [0, 20]},
            128: {1e-3: [100, 100], 1e-2: [60, 60], 1e-1: [0, nan]},  # a seed diverged
        },
        # muP: 1e-2 everywhere; at 128 its neighbours are unequal, so the interpolated optimum
        # moves towards the better one.
        "mup": {
            32: {1e-3: [40, 40], 1e-2: [100, 100], 1e-1: [40, 40]},
            64: {1e-3: [40, 40], 1e-2: [100, 100], 1e-1: [0, 20]},
            128: {1e-3: [20, 20], 1e-2: [100, 100], 1e-1: [80, 80]},
        },
    })
    summary = transfer.summarize(runs, base_width=64)["cartpole"]
    assert list(summary) == ["standard", "mup"]
    std, mup = summary["standard"], summary["mup"]
    assert std["best_lr"] == {"32": 0.1, "64": 0.01, "128": 0.001}
    assert std["best_lr_spread_decades"] == pytest.approx(2.0)
    assert std["best_lr_at_edge"] == {"32": True, "64": False, "128": True}
    assert std["mean_score"]["128"]["0.1"] == -math.inf  # a diverged seed makes the setting the worst
    # Score range over all the env's finite runs: 0..100. Base lr 1e-2 loses 50 at 32, 40 at 128.
    assert std["transfer_loss_per_width"] == pytest.approx({"32": 0.5, "128": 0.4})
    assert std["transfer_loss"] == pytest.approx(0.45)
    assert mup["best_lr"] == {"32": 0.01, "64": 0.01, "128": 0.01}
    assert mup["best_lr_spread_decades"] == 0.0 and mup["transfer_loss"] == 0.0
    assert mup["best_lr_fit"]["32"] == pytest.approx(0.01)
    assert 0.01 < mup["best_lr_fit"]["128"] < 0.1
    assert std["best_lr_fit"]["32"] == 0.1  # at the grid's edge: the grid point itself
    assert mup["seed_scores"]["64"]["0.1"] == [0, 20]


def test_transfer_run_that_fails_scores_as_the_worst(transfer, monkeypatch):
    import shoal.train

    def broken(cfg):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(shoal.train, "train", broken)
    run = transfer.run_one("cartpole", ["--train.total-steps", "1024"], "mup", 32, 64, 1e-2, 1)
    assert run["error"] == "RuntimeError: out of memory"
    assert math.isnan(run["score"]) and run["flags"] == ["--train.total-steps", "1024"]


def test_transfer_resume_reruns_nothing_that_is_recorded(transfer, monkeypatch, tmp_path):
    flags = transfer.PRESETS["cartpole"]["quick"]["flags"]
    runs = fake_runs({p: {w: {lr: [100.0 * (lr == 1e-2) + w / 100] for lr in (1e-3, 1e-2, 1e-1)}
                          for w in (32, 64)} for p in ("standard", "mup")})
    for r in runs:
        r.update(flags=flags, base_width=64)
    (tmp_path / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs) + '{"env": "cartp')

    def no_training(*args):
        raise AssertionError(f"ran {args}")

    monkeypatch.setattr(transfer, "run_one", no_training)
    argv = ["--quick", "--envs", "cartpole", "--widths", "32,64", "--lrs", "1e-3,1e-2,1e-1", "--seeds", "1",
            "--out", str(tmp_path), "--resume"]
    assert transfer.main(argv) == 0
    data = json.loads((tmp_path / "mup_transfer.json").read_text())
    assert len(data["runs"]) == 12
    assert data["summary"]["cartpole"]["mup"]["best_lr"] == {"32": 0.01, "64": 0.01}
    assert (tmp_path / "mup_transfer.png").read_bytes()[:4] == b"\x89PNG"
    # Other flags (or no --resume) start over: the recorded runs do not match.
    with pytest.raises(AssertionError, match="ran"):
        transfer.main([*argv[:-1], "--base-width", "32"])
