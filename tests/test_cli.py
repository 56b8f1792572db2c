"""The CLI through Typer's CliRunner: exact results and every error path as one clean line."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from digitlab import __version__
from digitlab.cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def assert_clean_error(result, *fragments: str) -> None:
    assert result.exit_code != 0
    text = result.output
    assert "Traceback" not in text
    for fragment in fragments:
        assert fragment in text, text


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.output.strip() == (
        f"digitlab {__version__}, torch {torch.__version__}, device auto -> cpu")


@pytest.mark.slow
def test_python_dash_m_works():
    out = subprocess.run([sys.executable, "-m", "digitlab", "--version"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.startswith(f"digitlab {__version__}")


@pytest.mark.slow
def test_the_command_ends_as_python_would_with_torch_loaded():
    # main() ends the process itself once torch is loaded (skipping the CUDA libraries'
    # destructors): output through a pipe is complete, atexit handlers run, codes are kept
    code = ("import atexit, sys; from digitlab import cli; "
            "atexit.register(lambda: print('atexit ran', file=sys.stderr)); "
            "sys.argv = ['digitlab', *sys.argv[1:]]; cli.main()")
    listed = subprocess.run([sys.executable, "-c", code, "models"], capture_output=True,
                            text=True)
    assert listed.returncode == 0 and listed.stderr == "atexit ran\n"
    assert listed.stdout.splitlines() == invoke("models").output.splitlines()
    failed = subprocess.run([sys.executable, "-c", code, "train", "--model", "nope"],
                            capture_output=True, text=True)
    assert failed.returncode == 1 and failed.stdout == ""
    assert failed.stderr.startswith("Error: unknown model 'nope'")
    assert failed.stderr.endswith("atexit ran\n")


def test_models_lists_parameter_counts():
    result = invoke("models")
    assert result.exit_code == 0
    assert any(line.split()[:2] == ["mlp", "175,306"] for line in result.output.splitlines())


@pytest.mark.slow
def test_data_info(mnist_root):
    result = invoke("data", "info", "--root", mnist_root, "--json")
    assert result.exit_code == 0
    info = json.loads(result.output)
    assert info["splits"]["train"]["count"] == 60000
    assert info["splits"]["test"]["per_class"][1] == 1135
    assert info["splits"]["train"]["pixel_mean"] == pytest.approx(0.1307, abs=1e-4)
    assert info["splits"]["train"]["pixel_std"] == pytest.approx(0.3081, abs=1e-4)
    text = invoke("data", "info", "--root", mnist_root).output
    assert "shape of x[N,C,H,W]:torch.Size([64, 1, 28, 28])" in text


@pytest.mark.slow
def test_data_show_draws_the_grid(tmp_path, mnist_root):
    out = tmp_path / "grid.png"
    result = invoke("data", "show", "--root", mnist_root, "--out", out)
    assert result.exit_code == 0 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert_clean_error(invoke("data", "show", "--root", mnist_root, "--start", "60000"),
                       "--start must be in [0, 59999]")
    assert_clean_error(invoke("data", "show", "--root", mnist_root, "--split", "val"),
                       "--split must be train or test")


def test_fetch_failure_is_one_clear_message(tmp_path):
    result = invoke("data", "fetch", "--root", tmp_path, "--mirror", "http://127.0.0.1:9/",
                    "--no-pip")
    assert_clean_error(result, "could not fetch mnist", "by hand")


@pytest.mark.slow
def test_train_and_evaluate_through_the_cli(tmp_path, mnist_root):
    run = tmp_path / "run"
    result = invoke("train", "--root", mnist_root, "--epochs", "1", "--limit-train", "3000",
                    "--hidden", "64", "--activation", "relu", "--out", run, "--quiet")
    assert result.exit_code == 0
    assert result.output.startswith("Test result: Accuracy: ")
    assert json.loads((run / "config.json").read_text())["model_args"]["hidden"] == [64]
    evaluated = invoke("evaluate", run, "--root", mnist_root, "--json")
    body = json.loads(evaluated.output)
    assert len(body["per_class_accuracy"]) == 10 and 0.8 < body["accuracy"] <= 1
    again = invoke("train", "--root", mnist_root, "--epochs", "1", "--out", run)
    assert_clean_error(again, "already holds files", "--force")


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["train", "--model", "resnet"], ["unknown model 'resnet'", "mlp"]),
        (["train", "--optimizer", "rmsprop"], ["'rmsprop' is not one of"]),
        (["train", "--hidden", "12,x"], ["--hidden takes sizes like"]),
        (["train", "--activation", "swish"], ["unknown activation 'swish'"]),
        (["train", "--preset", "nope"], ["'nope' is not one of"]),
        (["train", "--config", "/nonexistent.toml"], ["config file not found"]),
        (["train", "--device", "cuda"], ["no CUDA device is available"]),
        (["evaluate", "/nonexistent-run"], ["no such run directory"]),
        (["data", "fetch", "--dataset", "emnist"], ["unknown dataset 'emnist'"]),
    ],
)
def test_user_errors_end_in_one_line(args, fragments):
    assert_clean_error(invoke(*args), *fragments)


def test_corrupt_weights_are_reported(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.safetensors").write_bytes(b"\x10\x00\x00\x00garbage")
    assert_clean_error(invoke("evaluate", run), "corrupt or not a digitlab weights file")
    (run / "model.safetensors").unlink()
    assert_clean_error(invoke("evaluate", run), "model.safetensors is missing")


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncate", "magic", "count"])
def test_damaged_data_file_is_named_with_the_fix(tmp_path, mnist_root, damage):
    import shutil

    from digitlab.data.idx import decode_idx, encode_idx

    raw = tmp_path / "MNIST" / "raw"
    shutil.copytree(mnist_root / "MNIST" / "raw", raw)
    for gz in raw.glob("*.gz"):
        gz.unlink()  # the uncompressed files are read first; keep one copy to damage
    target = raw / "t10k-labels-idx1-ubyte"
    data = target.read_bytes()
    if damage == "truncate":
        target.write_bytes(data[:-7])
    elif damage == "magic":
        target.write_bytes(b"\x00\x00\x08\x07" + data[4:])
    else:
        target.write_bytes(encode_idx(decode_idx(data)[:9999]))
    for args in (["data", "fetch"], ["data", "info"], ["train", "--epochs", "1"]):
        result = invoke(*args, "--root", tmp_path)
        assert_clean_error(result, "t10k-labels-idx1-ubyte", "--force")
    assert invoke("data", "fetch", "--root", tmp_path, "--force", "--no-pip",
                  "--mirror", "http://127.0.0.1:9/").exit_code == 1
    assert target.exists()  # a failed refetch leaves the user's files in place


def test_serve_takes_its_run_host_and_port_from_the_environment(tmp_path):
    """DIGITLAB_SERVE_RUN, _HOST and _PORT stand for --run, --host and --port."""
    missing = tmp_path / "no-such-run"
    result = runner.invoke(app, ["serve"], env={"DIGITLAB_SERVE_RUN": str(missing)})
    assert result.exit_code == 1 and str(missing) in result.output
    result = runner.invoke(app, ["serve"], env={"DIGITLAB_SERVE_PORT": "70000"})
    assert result.exit_code == 1 and "70000" in result.output
    result = runner.invoke(app, ["serve", "--port", "0"],
                           env={"DIGITLAB_SERVE_HOST": "not a host name"})
    assert result.exit_code == 1 and "not a host name" in result.output


def test_presets_are_listed_and_printed_as_files():
    result = runner.invoke(app, ["presets"])
    assert result.exit_code == 0
    names = [line.split()[0] for line in result.output.splitlines()]
    assert names == ["best", "default", "fast", "robust", "tutorial"]
    fast = runner.invoke(app, ["presets", "fast"])
    assert fast.exit_code == 0 and 'preset = "fast"' in fast.output


@pytest.mark.parametrize("args,listed", [
    (["train", "-h"], "<adam|adamw|sgd>"), (["train", "--help"], "<none|onecycle|cosine|step>"),
    (["train", "-h"], "<none|auto|bf16|fp16>"), (["serve", "-h"], "<torch|onnxruntime>"),
    (["sweep", "-h"], "tutorial"), (["data", "-h"], "fetch")])
def test_help_lists_the_choices(args, listed):
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    plain = re.sub(r"\x1b\[[0-9;]*m", "", result.output)  # colours, where CI asks for them
    assert result.exit_code == 0 and listed in plain


def test_a_choice_outside_the_list_is_refused_before_any_work():
    result = runner.invoke(app, ["train", "--optimizer", "adm"])
    assert result.exit_code == 2 and "'adm' is not one of" in result.output


@pytest.mark.parametrize(("args", "line"), [
    (["--lr", "-1"], "Error: --lr must be greater than 0, got -1.0"),
    (["--epochs", "0"], "Error: --epochs must be greater than or equal to 1, got 0"),
    (["--set", "warmup=1.5"], "Error: --warmup must be less than 1, got 1.5"),
    (["--set", "normalize=std"], "Error: --normalize must be 'unit' or 'standard', got 'std'"),
    (["--set", "learning_rate=1"], "Error: command line: unknown setting learning_rate"),
    (["--set", "lr"], "Error: --set takes NAME=VALUE, got 'lr'"),
    (["--set", "betas=[0.9]"], "Error: command line: betas[1] is missing"),
    (["--set", "preset=fast"], "Error: name the preset to start from with --preset, not --set"),
])
def test_a_bad_setting_is_one_line_naming_it(args, line):
    result = runner.invoke(app, ["train", *args])
    assert (result.exit_code, result.output) == (1, line + "\n")


def test_set_reads_values_as_a_config_file_does():
    from digitlab.cli.train import assignments

    assert assignments(["lr=1e-3", "shuffle=false", "betas=[0.9, 0.99]", "device=cuda:1",
                        "normalize=standard", 'dataset="fashion-mnist"',
                        "model_args.hidden=[64]", "model_args.activation=relu"]) == {
        "lr": 1e-3, "shuffle": False, "betas": [0.9, 0.99], "device": "cuda:1",
        "normalize": "standard", "dataset": "fashion-mnist",
        "model_args": {"hidden": [64], "activation": "relu"}}


def test_help_imports_neither_torch_nor_the_settings_model():
    """`digitlab --help` stays light: train's options are built when train runs or shows
    its own help."""
    code = ("import sys; sys.argv = ['digitlab', '--help']; from digitlab.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print([m for m in ('torch', 'pydantic', 'digitlab.config') if m in sys.modules],"
            " file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.stderr == "[]\n" and "train" in done.stdout
    train_help = subprocess.run([sys.executable, "-m", "digitlab", "train", "-h"],
                                capture_output=True, text=True, timeout=120)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", train_help.stdout)  # colours, where CI asks for them
    assert train_help.returncode == 0 and "--warmup" in plain


def test_pydantic_missing_names_the_train_extra(monkeypatch):
    """Typer's newer releases bring pydantic, so the core install usually has it (and the
    core's own commands are run without the extras' modules with it present); where it is
    missing, train names its extra."""
    import importlib.util

    from digitlab.cli.errors import missing_extra

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "pydantic" else real(name, *a))
    missing = ModuleNotFoundError("No module named 'pydantic'", name="pydantic")
    assert missing_extra(missing, "train") == (
        "Error: `digitlab train` needs pydantic: pip install 'digitlab[train]'")


@pytest.mark.slow
def test_every_setting_reaches_the_run_from_its_option_or_set(tmp_path, mnist_root):
    run = tmp_path / "run"
    result = invoke("train", "--preset", "fast", "--epochs", "1", "--limit-train", "512",
                    "--device", "cpu", "--warmup", "0.1", "--normalize", "unit",
                    "--outliers", "0.05", "--set", "betas=[0.8, 0.95]",
                    "--set", "model_args.hidden=128", "--set", "gamma=0.5",
                    "--out", run, "--root", mnist_root, "--quiet")
    assert result.exit_code == 0, result.output
    saved = json.loads((run / "config.json").read_text())
    assert (saved["warmup"], saved["normalize"], saved["outliers"]) == (0.1, "unit", 0.05)
    assert (saved["betas"], saved["gamma"]) == ([0.8, 0.95], 0.5)
    assert saved["model_args"]["hidden"] == 128 and saved["model_args"]["stem"] == "unshuffle"
