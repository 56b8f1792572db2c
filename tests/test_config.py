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
        ({"optimizer": "rmsprop"},
         "--optimizer must be 'adam', 'adamw' or 'sgd', got 'rmsprop'"),
        ({"lr": 0.0}, "--lr must be greater than 0, got 0.0"),
        ({"epochs": 0}, "--epochs must be greater than or equal to 1, got 0"),
        ({"schedule": "linear"}, "--schedule must be 'none', 'onecycle', 'cosine' or 'step', "
                                 "got 'linear'"),
        ({"warmup": 1}, "--warmup must be less than 1, got 1"),
        ({"aug_rotate": 90.0}, "command line: augment rotate must be in [0, 45.0], got 90.0"),
        ({"betas": [0.9]}, "command line: betas[1] is missing"),
    ],
)
def test_bad_values(flags, message):
    """pydantic's complaint, as one line naming the setting (by its flag, where it has one)."""
    with pytest.raises(DigitlabError) as caught:
        resolve(flags=flags)
    assert str(caught.value) == message


def test_bad_files(tmp_path):
    with pytest.raises(DigitlabError, match="config file not found"):
        resolve(config_file=tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("lr = = 3")
    with pytest.raises(DigitlabError, match="not valid TOML"):
        resolve(config_file=bad)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("learning_rate = 3")
    with pytest.raises(DigitlabError, match=f"^{unknown}: unknown setting learning_rate$"):
        resolve(config_file=unknown)
    with pytest.raises(DigitlabError, match="unknown preset 'fastest'"):
        resolve(preset="fastest")


def test_saved_config_round_trips():
    for name in PRESETS:
        cfg = resolve(preset=name)
        assert from_dict(cfg.to_dict()) == cfg
    assert isinstance(from_dict({"lr": 0.1, "git_commit": "abc"}), TrainConfig)


@pytest.mark.parametrize("line, message", [
    ('epochs = "ten"', "epochs must be a valid integer, got 'ten'"),
    ('epochs = "10"', "epochs must be a valid integer, got '10'"),
    ("epochs = 2.5", "epochs must be a valid integer, got 2.5"),
    ('outliers = "lots"', "outliers must be a valid number, got 'lots'"),
    ("shuffle = 1", "shuffle must be a valid boolean, got 1"),
    ("betas = [0.9]", "betas[1] is missing"),
    ("model_args = 3", "model_args must be a valid dictionary, got 3"),
    ("device = 0", "device must be a valid string, got 0"),
    ("lr = -1", "lr must be greater than 0, got -1"),
])
def test_a_setting_of_the_wrong_kind_is_one_clear_error(tmp_path, line, message):
    """No guessing (strict types): the file and the setting are named in one line."""
    path = tmp_path / "c.toml"
    path.write_text(line + "\n")
    with pytest.raises(DigitlabError) as caught:
        resolve(config_file=path)
    assert str(caught.value) == f"{path}: {message}"


def test_a_preset_and_a_saved_config_are_named_as_the_source(tmp_path):
    with pytest.raises(DigitlabError, match=r"^saved config: epochs must be greater than or "
                                            r"equal to 1, got 0$"):
        from_dict({"epochs": 0, "parameters": 5})


def test_settings_are_checked_when_changed_too():
    cfg = resolve(preset="tutorial")
    cfg.val_split = 0
    with pytest.raises(ValueError, match="greater than 0"):
        cfg.lr = -1.0


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


def test_a_setting_declared_on_the_model_alone_reaches_every_place(tmp_path, monkeypatch):
    """Adding a training setting is one field on TrainConfig: `digitlab train` gets its
    option (help, section), --set, config files, the saved config.json and the settings
    reference read it from there."""
    import importlib.util
    import re
    from pathlib import Path

    from typer.testing import CliRunner

    from digitlab import config
    from digitlab.cli import app

    class Wider(config.TrainConfig):
        grad_clip: float = config.setting(
            0.0, "Clip the gradients' norm to this (0: off).", section=config.OPTIM, ge=0)

    monkeypatch.setattr(config, "TrainConfig", Wider)
    runner = CliRunner()
    shown = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    plain = re.sub(r"\x1b\[[0-9;]*m", "", shown.output)
    assert shown.exit_code == 0
    line = next(line for line in plain.splitlines() if "--grad-clip" in line)
    assert "<float>" in line and "Clip the gradients' norm to this (0: off)." in line
    # the option and --set reach the settings, checked there
    for args, given in ((["--grad-clip", "-1"], "-1.0"), (["--set", "grad_clip=-1"], "-1")):
        refused = runner.invoke(app, ["train", *args])
        assert (refused.exit_code, refused.output) == (
            1, f"Error: --grad-clip must be greater than or equal to 0, got {given}\n")
    path = tmp_path / "mine.toml"
    path.write_text('preset = "fast"\ngrad_clip = 1.5\n')
    cfg = resolve(config_file=path, flags={"epochs": 2})
    assert (cfg.grad_clip, cfg.model, cfg.epochs) == (1.5, "cnn-fast", 2)
    assert resolve(config_file=path, flags={"grad_clip": 0.5}).grad_clip == 0.5
    assert from_dict(cfg.to_dict()) == cfg and cfg.to_dict()["grad_clip"] == 1.5
    assert resolve(preset="tutorial").grad_clip == 0.0  # presets that do not name it
    script = Path(__file__).resolve().parents[1] / "scripts" / "gen_docs.py"
    spec = importlib.util.spec_from_file_location("gen_docs", script)
    assert spec is not None and spec.loader is not None
    gen_docs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen_docs)
    row = next(r for r in gen_docs.config_page().splitlines() if r.startswith("| `grad_clip`"))
    assert "`--grad-clip`" in row and "Clip the gradients' norm" in row
