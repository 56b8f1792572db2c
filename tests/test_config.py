"""defaults < preset < config file < flags."""

from __future__ import annotations

from importlib import resources

import pytest

from digitlab.config import PRESETS, TrainConfig, from_dict, resolve
from digitlab.errors import DigitlabError


def test_tutorial_preset_is_the_tutorial():
    cfg = resolve(preset="tutorial")
    assert (cfg.model, cfg.optimizer, cfg.lr, cfg.epochs, cfg.batch_size) == (
        "mlp", "adam", 0.0045, 25, 64)
    assert cfg.model_args == {"hidden": [128, 256, 128, 64], "activation": "sigmoid"}
    assert cfg.shuffle is False and cfg.schedule == "none" and cfg.log_every == 200
    assert cfg.normalize == "unit" and cfg.loss_average == "batch" and cfg.eval_batch_size == 64


def test_precedence(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(
        'preset = "tutorial"\nlr = 0.01\nepochs = 3\n[model_args]\nactivation = "relu"\n')
    cfg = resolve(config_file=path, flags={"epochs": 7, "lr": None})
    assert cfg.preset == "tutorial"  # preset named in the file
    assert cfg.lr == 0.01  # file beats preset
    assert cfg.epochs == 7  # flag beats file
    assert cfg.model_args == {"hidden": [128, 256, 128, 64], "activation": "relu"}
    assert resolve(preset="default", config_file=path).preset == "default"  # flag beats file


def test_switching_model_family_drops_the_old_family_arguments():
    cfg = resolve(preset="tutorial", flags={"model": "mlp", "model_args": {"hidden": [10]}})
    assert cfg.model_args["hidden"] == [10]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"optimizer": "rmsprop"}, "--optimizer must be one of adam, adamw, sgd"),
        ({"lr": 0.0}, "--lr must be positive"),
        ({"epochs": 0}, "--epochs must be at least 1"),
        ({"schedule": "linear"}, "--schedule must be one of"),
    ],
)
def test_bad_values(flags, message):
    with pytest.raises(DigitlabError, match=message):
        resolve(flags=flags)


def test_bad_files(tmp_path):
    with pytest.raises(DigitlabError, match="config file not found"):
        resolve(config_file=tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("lr = = 3")
    with pytest.raises(DigitlabError, match="not valid TOML"):
        resolve(config_file=bad)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("learning_rate = 3")
    with pytest.raises(DigitlabError, match="unknown setting.*learning_rate"):
        resolve(config_file=unknown)
    with pytest.raises(DigitlabError, match="unknown preset 'fastest'"):
        resolve(preset="fastest")


def test_saved_config_round_trips():
    for name in PRESETS:
        cfg = resolve(preset=name)
        assert from_dict(cfg.to_dict()) == cfg
    assert isinstance(from_dict({"lr": 0.1, "git_commit": "abc"}), TrainConfig)


@pytest.mark.parametrize("line, message", [
    ('epochs = "ten"', "epochs must be a whole number, got 'ten'"),
    ("epochs = 2.5", "epochs must be a whole number"),
    ('outliers = "lots"', "outliers must be a number"),
    ("shuffle = 1", "shuffle must be true or false"),
    ("betas = [0.9]", "betas must be two numbers"),
    ("model_args = 3", "model_args must be a table"),
    ("device = 0", "device must be text"),
])
def test_a_setting_of_the_wrong_kind_is_one_clear_error(tmp_path, line, message):
    path = tmp_path / "c.toml"
    path.write_text(line + "\n")
    with pytest.raises(DigitlabError, match=message):
        resolve(config_file=path)


def test_whole_numbers_are_fine_where_a_float_is_expected(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("lr = 1\nema = 0\nbetas = [0, 1]\n")
    cfg = resolve(config_file=path)
    assert cfg.lr == 1 and cfg.ema == 0 and cfg.betas == (0, 1)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_a_toml_file_a_user_can_copy(name, tmp_path):
    """The presets ship as TOML files; a copy used as --config trains exactly the preset."""
    shipped = resources.files("digitlab") / "assets" / "presets" / f"{name}.toml"
    copy = tmp_path / "mine.toml"
    copy.write_text(shipped.read_text(encoding="utf-8"))
    assert resolve(config_file=copy) == resolve(preset=name)
    assert resolve(config_file=copy, flags={"epochs": 3}).epochs == 3


def test_a_deeply_nested_config_is_one_error_line(tmp_path):
    from typer.testing import CliRunner

    from digitlab.cli import app

    deep = tmp_path / "deep.toml"
    deep.write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(DigitlabError, match="nested too deeply"):
        resolve(config_file=deep)
    result = CliRunner().invoke(app, ["train", "--config", str(deep)])
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: {deep}: nested too deeply to be a config file"


def test_a_config_that_is_not_text_is_one_error(tmp_path):
    binary = tmp_path / "weights.toml"
    binary.write_bytes(b"\xff\xfe\x00lr = 3")
    with pytest.raises(DigitlabError, match="cannot read"):
        resolve(config_file=binary)
    with pytest.raises(DigitlabError, match="cannot read"):
        resolve(config_file=tmp_path)  # a directory
