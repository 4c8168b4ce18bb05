"""The muP coordinate check (shoal.analysis.coord_check) and `shoal mup-check`."""

import json

import pytest

from shoal.analysis.coord_check import coord_check, coord_check_main
from tests.test_mup import one_thread  # noqa: F401  (autouse: one torch thread for these small matrices)


def test_coordinate_check_is_flat_under_mup_and_drifts_under_standard():
    result = coord_check(
        "cartpole", [64, 1024], steps=5, learning_rate=3e-3,
        overrides=["--policy.base-width", "64", "--policy.lstm", "true", "--policy.num-layers", "2"],
        num_envs=8, horizon=8, seed=0,
    )
    layers = set(result.sizes["mup"])
    assert layers == {"encoder.input", "encoder.hidden.0", "lstm.h", "logits", "value"}
    for layer in layers:
        assert 0.5 < result.ratio("mup", layer) < 2.0, (layer, result.ratio("mup", layer))
    # Standard: Adam moves the heads' outputs ~width times further.
    assert result.ratio("standard", "logits") > 2.0
    assert result.ratio("standard", "encoder.input") < 0.5  # orthogonal init shrinks with width
    # The updates did something: logits grew from their small init.
    assert (result.sizes["mup"]["logits"][-1] > 3 * result.sizes["mup"]["logits"][0]).all()


def test_coordinate_check_rejects_bad_arguments():
    with pytest.raises(ValueError, match="at least two widths"):
        coord_check("cartpole", [64])
    with pytest.raises(ValueError, match="parametrization must be one of"):
        coord_check("cartpole", [16, 32], parametrizations=("spectral",))
    with pytest.raises(ValueError, match="steps must be at least 1"):
        coord_check("cartpole", [16, 32], steps=0)
    with pytest.raises(ValueError, match="width >= 1"):
        coord_check("cartpole", [0, 32])


def test_mup_check_cli(tmp_path, capsys):
    png, js = tmp_path / "cc.png", tmp_path / "cc.json"
    rc = coord_check_main(["cartpole", "--widths", "16,32", "--steps", "1", "--num-envs", "2",
                           "--horizon", "4", "--parametrization", "mup", "-o", str(png), "--json", str(js),
                           "--policy.base-width", "16"])
    assert rc == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(js.read_text())
    assert data["widths"] == [16, 32] and list(data["sizes"]) == ["mup"]
    assert "mup: mean |activation|" in capsys.readouterr().out
    assert coord_check_main(["cartpole", "--train.learnin-rate", "1"]) == 2
    assert "did you mean 'train.learning_rate'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        coord_check_main(["cartpole", "--widths", "64"])


def test_shoal_mup_check_runs_the_coordinate_check(capsys):
    from shoal.cli import main

    # A usage error comes back from coord_check_main's own parser, so the command reached it.
    assert main(["mup-check", "cartpole", "--steps", "0"]) == 2
    assert "--steps must be at least 1" in capsys.readouterr().err
