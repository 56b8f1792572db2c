"""Export to ONNX and TorchScript, the check on real test images, and the onnxruntime backend.

Untrained models are enough here: the check compares the exported file with the same
PyTorch weights, whatever they are.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from digitlab import assets
from digitlab.backends import BackendError, ExportError, OnnxBackend
from digitlab.backends.torch import onnx_bytes
from digitlab.cli import app
from digitlab.engine.rundir import WEIGHTS, save_weights
from digitlab.errors import DigitlabError
from digitlab.export import export_model, export_module, read_torchscript
from digitlab.models.registry import create_model, list_models, model_args
from digitlab.normalisation import MNIST_MEAN, MNIST_STD

REPO = Path(__file__).resolve().parent.parent

runner = CliRunner()


def _meta(name: str, args: dict, normalize: str = "standard") -> dict:
    return {"model": name, "model_args": args, "normalize": normalize, "dataset": "mnist",
            "classes": [str(i) for i in range(10)], "digitlab_version": "test"}


@pytest.fixture()
def mlp_run(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    args = model_args("mlp", hidden=[64, 32], activation="gelu")
    run = tmp_path / "run"
    save_weights(run / WEIGHTS, create_model("mlp", **args), _meta("mlp", args))
    return run


def _torch_probs(run: Path, images: np.ndarray) -> np.ndarray:
    from digitlab.engine.rundir import load_model

    model, _ = load_model(run)
    x = (torch.from_numpy(np.array(images)).float().unsqueeze(1) / 255 - MNIST_MEAN) / MNIST_STD
    with torch.no_grad():
        return torch.softmax(model(x), dim=1).numpy()


@pytest.mark.slow
def test_onnx_export_with_dynamo_carries_contract_and_dynamic_batch(
        mlp_run: Path, mnist_root: Path, mnist_test_split) -> None:
    result = export_model(run=mlp_run, fmt="onnx", root=mnist_root, check_count=300)
    assert result.path == mlp_run / "model.onnx" and result.path.is_file()
    assert result.exporter == "dynamo" and not result.notes
    assert result.check.images == 300 and result.check.mismatches == 0
    assert result.check.max_abs_diff <= 1e-4

    proto = onnx.load(str(result.path))
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["digitlab.input_name"] == "image"
    assert json.loads(props["digitlab.input_shape"]) == ["N", 1, 28, 28]
    assert props["digitlab.input_dtype"] == "float32"
    assert props["digitlab.normalize"] == "standard"
    assert json.loads(props["digitlab.mean"]) == MNIST_MEAN
    assert json.loads(props["digitlab.std"]) == MNIST_STD
    assert json.loads(props["digitlab.classes"]) == [str(i) for i in range(10)]
    assert props["digitlab.model"] == "mlp"
    assert json.loads(props["digitlab.model_args"])["hidden"] == [64, 32]
    assert props["digitlab.digitlab_version"]
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # symbolic, not fixed

    # Plain onnxruntime, fed by hand from the contract, at two batch sizes.
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    images = mnist_test_split.images[:5]
    want = _torch_probs(mlp_run, images)
    for batch in (images[:1], images):
        x = ((batch.astype(np.float32) / 255 - MNIST_MEAN) / MNIST_STD)[:, None]
        (got,) = session.run(None, {"image": x})
        np.testing.assert_allclose(got, want[: len(batch)], atol=1e-5)

    # The backend takes uint8 pixels, as the PyTorch model call in Recognizer does.
    backend = OnnxBackend(result.path)
    assert backend.name == "onnxruntime" and backend.classes == [str(i) for i in range(10)]
    np.testing.assert_allclose(backend(images), want, atol=1e-5)
    np.testing.assert_allclose(backend(images[:, None].astype(np.float32) / 255), want,
                               atol=1e-5)


@pytest.mark.slow
def test_torchscript_export_round_trip(mlp_run: Path, mnist_root: Path, mnist_test_split,
                                       tmp_path: Path) -> None:
    out = tmp_path / "m.pt"
    result = export_model(run=mlp_run, fmt="torchscript", out=out, root=mnist_root,
                          check_count=200)
    assert result.path == out and result.exporter == "trace" and result.check.ok
    module, contract = read_torchscript(out)
    assert contract["normalize"] == "standard" and contract["model"] == "mlp"
    assert contract["input_shape"] == ["N", 1, 28, 28]
    images = mnist_test_split.images[:3]
    x = (torch.from_numpy(np.array(images)).float().unsqueeze(1) / 255 - MNIST_MEAN) / MNIST_STD
    with torch.no_grad():
        np.testing.assert_allclose(module(x).numpy(), _torch_probs(mlp_run, images),
                                   atol=1e-6)


class _Branchy(nn.Module):
    """Data-dependent control flow: torch.export refuses it, the tracer records one branch
    (the one the all-zero example takes), so the traced export is wrong on real digits."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(784, 10)
        self.b = nn.Linear(784, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        if x.sum() > 0:
            return self.a(x)
        return self.b(x)


@pytest.mark.slow
def test_falls_back_to_torchscript_exporter_and_refuses_a_wrong_export(
        mnist_root: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _Branchy().eval()
    notes: list[str] = []
    blob, used = onnx_bytes(model, notes=notes)
    assert used == "torchscript" and blob
    assert "torch.export-based exporter failed" in notes[0]

    out = tmp_path / "branchy.onnx"
    with pytest.raises(ExportError, match="disagrees with PyTorch") as info:
        export_module(model, _meta("branchy", {}, "unit"), fmt="onnx", out=out,
                      root=mnist_root, exporter="torchscript", check_count=50)
    assert "different predictions" in str(info.value)
    assert not out.exists() and not list(tmp_path.iterdir())  # no temp file left either


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_exports_to_onnx(name: str, mnist_root: Path,
                                                tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model(name)
    result = export_module(model, _meta(name, model_args(name)), fmt="onnx",
                           out=tmp_path / f"{name}.onnx", root=mnist_root,
                           exporter="torchscript", check_count=20)
    assert result.check.ok and result.path.is_file()


@pytest.mark.slow
def test_export_cli(mlp_run: Path, mnist_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli.onnx"
    result = runner.invoke(app, ["export", "--run", str(mlp_run), "--out", str(out),
                                 "--exporter", "torchscript", "--check-images", "100",
                                 "--root", str(mnist_root)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"wrote {out} (onnx, torchscript exporter")
    assert "checked on 100 test images" in result.output and "0 different predictions" in \
        result.output
    assert OnnxBackend(out).contract["model"] == "mlp"


@pytest.mark.parametrize(("args", "message"), [
    (["--format", "keras"], "--format must be one of onnx, torchscript"),
    (["--exporter", "magic"], "--exporter must be one of auto, dynamo, torchscript"),
    (["--format", "torchscript", "--exporter", "dynamo"], "for --format onnx only"),
    (["--check-images", "0"], "--check-images must be at least 1"),
])
def test_export_cli_rejects_bad_options(mlp_run: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["export", "--run", str(mlp_run), *args])
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output


def test_export_cli_missing_run(tmp_path: Path) -> None:
    result = runner.invoke(app, ["export", "--run", str(tmp_path / "nope")])
    assert result.exit_code == 1
    assert "no such run directory or weights file" in result.output


def test_onnx_backend_refuses_files_that_are_not_digitlab_exports(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(BackendError, match="not a loadable ONNX model"):
        OnnxBackend(garbage)
    with pytest.raises(BackendError, match="no such ONNX file"):
        OnnxBackend(tmp_path / "missing.onnx")
    # A valid ONNX model without digitlab's contract (exported by hand, no metadata).
    plain = tmp_path / "plain.onnx"
    blob, _ = onnx_bytes(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).eval(),
                         exporter="torchscript")
    plain.write_bytes(blob)
    with pytest.raises(BackendError, match="no digitlab preprocessing contract"):
        OnnxBackend(plain)


# --- inference through onnxruntime: the Python API, predict and serve ---------------------


@pytest.fixture()
def exported(mlp_run: Path, mnist_root: Path) -> Path:
    """mlp_run with model.onnx beside its weights, as `digitlab export --run RUN` leaves it."""
    export_model(run=mlp_run, fmt="onnx", root=mnist_root, exporter="torchscript",
                 check_count=50)
    return mlp_run / "model.onnx"


@pytest.mark.slow
def test_recognizer_on_onnxruntime_answers_as_on_torch(mlp_run: Path, exported: Path,
                                                       mnist_test_split) -> None:
    from digitlab.api import Recognizer

    torch_side = Recognizer.load(mlp_run)
    images = [np.array(mnist_test_split.images[i]) for i in range(8)]
    want = torch_side.predict_many(images)
    for recognizer in (Recognizer.load(exported), Recognizer.load(mlp_run,
                                                                  backend="onnxruntime")):
        info = recognizer.info()
        assert info["backend"] == "onnxruntime" and info["source"] == str(exported)
        assert info["model"] == "mlp" and info["normalize"] == "standard"
        assert info["parameters"] == torch_side.info()["parameters"]
        got = recognizer.predict_many(images)
        assert [p.digit for p in got] == [p.digit for p in want]
        np.testing.assert_allclose([p.probabilities for p in got],
                                   [p.probabilities for p in want], atol=1e-5)


def test_predict_on_an_exported_model_never_imports_torch(exported: Path, tmp_path: Path,
                                                          mnist_test_split) -> None:
    """Importing torch is most of a `digitlab predict` run (about 2 s and 480 MB here); with
    an exported model onnxruntime answers and torch is never loaded."""
    picture = tmp_path / "seven.png"
    Image.fromarray(255 - mnist_test_split.images[0]).resize((140, 140)).save(picture)
    code = ("import sys\n"
            "from digitlab.cli import main\n"
            f"sys.argv = ['digitlab', 'predict', '--run', {str(exported)!r}, {str(picture)!r}]\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "print('torch loaded' if 'torch' in sys.modules else 'no torch')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    from digitlab.api import Recognizer

    on_torch = Recognizer.load(exported.parent, backend="torch").predict(picture)
    assert f"{picture}: {on_torch.digit}  ({on_torch.confidence:.1%})" in done.stdout
    assert done.stdout.strip().endswith("no torch"), done.stdout


def test_recognizer_backend_errors(mlp_run: Path, tmp_path: Path) -> None:
    from digitlab.api import Recognizer
    from digitlab.errors import DigitlabError

    with pytest.raises(DigitlabError, match="no model.onnx in .*digitlab export --run"):
        Recognizer.load(mlp_run, backend="onnxruntime")
    assert Recognizer.load(None, backend="onnxruntime").info()["backend"] == "onnxruntime"
    with pytest.raises(DigitlabError, match="runs ONNX files; export"):
        Recognizer.load(mlp_run / WEIGHTS, backend="onnxruntime")
    with pytest.raises(DigitlabError, match="--backend must be one of torch, onnxruntime"):
        Recognizer.load(mlp_run, backend="tensorrt")
    fake = tmp_path / "x.onnx"
    fake.write_bytes(b"nope")
    with pytest.raises(DigitlabError, match="is an ONNX export: use --backend onnxruntime"):
        Recognizer.load(fake, backend="torch")


@pytest.mark.slow
def test_predict_cli_with_onnxruntime(mlp_run: Path, exported: Path, mnist_test_split,
                                      tmp_path: Path) -> None:
    from PIL import Image

    from digitlab.api import Recognizer

    image = tmp_path / "digit.png"
    Image.fromarray(np.array(mnist_test_split.images[0])).save(image)
    want = Recognizer.load(mlp_run).predict(image).to_json()
    for args in (["--run", str(exported)], ["--run", str(mlp_run), "--backend", "onnxruntime"]):
        result = runner.invoke(app, ["predict", str(image), "--json", *args])
        assert result.exit_code == 0, result.output
        got = json.loads(result.output)
        assert got["digit"] == want["digit"] and got["path"] == str(image)
        np.testing.assert_allclose(got["probabilities"], want["probabilities"], atol=1e-5)
    result = runner.invoke(app, ["predict", str(image), "--run", str(exported), "--backend",
                                 "torch"])
    assert result.exit_code == 1 and "use --backend onnxruntime" in result.output


@pytest.mark.slow
def test_serve_with_onnxruntime(mlp_run: Path, exported: Path, mnist_test_split,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses
    import io

    import httpx
    from PIL import Image

    from digitlab.api import Recognizer
    from digitlab.serve.run import SETTINGS_ENV, Settings, app_from_env
    from test_serve_api import running

    buffer = io.BytesIO()
    Image.fromarray(np.array(mnist_test_split.images[0])).save(buffer, "PNG")
    want = Recognizer.load(mlp_run).predict(buffer.getvalue()).to_json()
    # The app each worker of `digitlab serve --backend onnxruntime --workers N` builds.
    settings = Settings(run=str(mlp_run), backend="onnxruntime", max_bytes=1 << 20,
                        cors_origin=None, concurrency=1)
    monkeypatch.setenv(SETTINGS_ENV, json.dumps(dataclasses.asdict(settings)))
    with running(app_from_env()) as base, httpx.Client(base_url=base, timeout=30) as client:
        model = client.get("/api/model").json()
        assert model["backend"] == "onnxruntime" and model["source"] == str(exported)
        answer = client.post("/api/predict", content=buffer.getvalue(),
                             headers={"Content-Type": "image/png"}).json()
        assert answer["digit"] == want["digit"]
        np.testing.assert_allclose(answer["probabilities"], want["probabilities"], atol=1e-5)


def test_serve_runs_onnxruntime_on_one_thread_per_call(exported: Path) -> None:
    """Concurrent requests keep the cores busy; onnxruntime's default pool per call spun its
    idle threads on them instead (half the throughput with --workers 2)."""
    from digitlab.serve.run import Settings, _load

    settings = Settings(run=str(exported), backend=None, max_bytes=1 << 20, cors_origin=None,
                        concurrency=1)
    options = _load(settings).backend.session.get_session_options()
    assert options.intra_op_num_threads == 1
    # The CLI's own predictions keep onnxruntime's default (all cores for one big batch).
    assert OnnxBackend(exported).session.get_session_options().intra_op_num_threads == 0


def default_settings(backend: str | None = None, run: str | None = None):
    from digitlab.serve.run import Settings

    return Settings(run=run, backend=backend, max_bytes=1 << 20, cors_origin=None,
                    concurrency=1)


# --- the shipped model on onnxruntime ------------------------------------------------------


@pytest.mark.slow
def test_the_shipped_onnx_file_is_the_shipped_weights(mnist_test_split) -> None:
    """default-model.onnx was made from default-model.safetensors (`make default-model`
    writes both): stamped with their SHA-256, and it answers as PyTorch on them does."""
    import hashlib

    from digitlab import Recognizer

    folder = assets.folder()
    stamp = OnnxBackend(folder / assets.DEFAULT_ONNX).contract["weights_sha256"]
    digest = hashlib.sha256((folder / assets.DEFAULT_WEIGHTS).read_bytes()).hexdigest()
    assert stamp == digest, (
        "default-model.onnx is stale: run `python scripts/default_model.py --onnx`")
    shipped, torch_side = Recognizer.load(), Recognizer.load(backend="torch")
    assert shipped.info()["backend"] == "onnxruntime"
    assert torch_side.info()["backend"] == "torch"
    # Asking for another device than the CPU means PyTorch (onnxruntime runs on the CPU).
    assert Recognizer.load(device="auto").info()["backend"] == "torch"
    images = np.asarray(mnist_test_split.images[:2000])
    got, want = shipped.classify(images), torch_side.classify(images)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert (got.argmax(1) == want.argmax(1)).all()
    # Everything info() says is the same but the backend: card, figures, how to read numbers.
    assert ({k: v for k, v in shipped.info().items() if k != "backend"}
            == {k: v for k, v in torch_side.info().items() if k != "backend"})
    assert shipped.reading is torch_side.reading


@pytest.mark.slow
def test_default_model_export_stamps_the_weights_it_came_from(tmp_path: Path,
                                                              mnist_root: Path) -> None:
    """`python scripts/default_model.py --onnx` (and `make default-model`) writes an ONNX
    file whose contract carries the weights' SHA-256, which the loader then accepts."""
    import hashlib
    import shutil

    from digitlab.loading import shipped_onnx

    for name in (assets.DEFAULT_WEIGHTS, assets.DEFAULT_CARD):
        shutil.copy(assets.folder() / name, tmp_path / name)
    out = _default_model_tool().export_onnx(tmp_path, check_count=200)
    digest = hashlib.sha256((tmp_path / assets.DEFAULT_WEIGHTS).read_bytes()).hexdigest()
    assert OnnxBackend(out).contract["weights_sha256"] == digest
    loaded = shipped_onnx(1, tmp_path)
    assert loaded is not None and loaded[1]["source"] == "package default"


def test_a_stale_or_missing_shipped_onnx_file_is_not_used(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    import shutil
    import sys

    from digitlab import Recognizer
    from digitlab.assets import DEFAULT_CARD, DEFAULT_ONNX, DEFAULT_WEIGHTS
    from digitlab.loading import shipped_onnx

    shipped = assets.folder()
    for name in (DEFAULT_ONNX, DEFAULT_WEIGHTS, DEFAULT_CARD):
        shutil.copy(shipped / name, tmp_path / name)
    assert shipped_onnx(1, tmp_path) is not None
    (tmp_path / DEFAULT_WEIGHTS).write_bytes((shipped / DEFAULT_WEIGHTS).read_bytes() + b" ")
    assert shipped_onnx(1, tmp_path) is None  # other weights: stale
    (tmp_path / DEFAULT_ONNX).write_bytes(b"not an onnx model")  # onnxruntime refuses it
    assert shipped_onnx(1, tmp_path) is None
    (tmp_path / DEFAULT_ONNX).unlink()
    assert shipped_onnx(1, tmp_path) is None
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` fails
    assert shipped_onnx(1, shipped) is None
    assert Recognizer.load().info()["backend"] == "torch"
    with pytest.raises(DigitlabError, match="needs onnxruntime"):
        Recognizer.load(backend="onnxruntime")


@pytest.mark.slow
def test_serve_runs_the_shipped_model_on_its_onnx_file(mnist_test_split) -> None:
    """Without --backend, `digitlab serve` serves the shipped model from its ONNX file on
    onnxruntime (cheaper small batches, one thread a call); --backend torch keeps PyTorch."""
    from digitlab.api import Recognizer
    from digitlab.serve.run import _load

    served = _load(default_settings())
    info = served.info()
    assert info["backend"] == "onnxruntime" and "exported" not in info
    assert info["source"] == "package default" and info["model"] == "cnn-fast"
    assert served.backend.session.get_session_options().intra_op_num_threads == 1
    images = np.asarray(mnist_test_split.images[:500])
    want = Recognizer.load(backend="torch").classify(images)
    np.testing.assert_allclose(served.classify(images), want, atol=1e-5)
    assert _load(default_settings("torch")).info()["backend"] == "torch"


@pytest.mark.slow
def test_serve_runs_a_pytorch_run_on_onnxruntime_exported_in_memory(mlp_run: Path,
                                                                    mnist_test_split
                                                                    ) -> None:
    """A run directory has no ONNX file: `digitlab serve --run RUN` exports it in memory
    and serves it with onnxruntime; the answers are PyTorch's."""
    from digitlab.api import Recognizer
    from digitlab.serve.run import _load

    served = _load(default_settings(run=str(mlp_run)))
    info = served.info()
    assert info["backend"] == "onnxruntime" and info["exported"]
    assert info["source"] == str(mlp_run) and info["model"] == "mlp"
    assert served.backend.session.get_session_options().intra_op_num_threads == 1
    torch_side = Recognizer.load(mlp_run)
    images = np.asarray(mnist_test_split.images[:500])
    got, want = served.classify(images), torch_side.classify(images)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert (got.argmax(1) == want.argmax(1)).all()
    # How a whole number is weighed travels with the model too.
    assert served.reading is torch_side.reading


def test_serve_falls_back_to_pytorch_without_onnxruntime(mlp_run: Path,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    import sys

    from digitlab.serve.run import _load

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` fails
    info = _load(default_settings(run=str(mlp_run))).info()
    assert info["backend"] == "torch" and "exported" not in info


def test_an_in_memory_export_that_disagrees_is_refused(mlp_run: Path,
                                                       monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    import digitlab.backends.torch as torch_backend
    from digitlab.api import Recognizer
    from digitlab.serve.run import _load

    recognizer = Recognizer.load(mlp_run)
    twin = recognizer.on_onnxruntime()
    assert twin.info()["backend"] == "onnxruntime"
    with pytest.raises(DigitlabError, match="already runs on onnxruntime"):
        twin.on_onnxruntime()
    monkeypatch.setattr(torch_backend, "TOLERANCE", -1.0)  # no export can be that close
    with pytest.raises(ExportError, match="in-memory ONNX export differs from PyTorch"):
        recognizer.on_onnxruntime()
    assert _load(default_settings(run=str(mlp_run))).info()["backend"] == "torch"


def test_serve_cli_backend_errors(mlp_run: Path) -> None:
    result = runner.invoke(app, ["serve", "--run", str(mlp_run), "--backend", "onnxruntime",
                                 "--port", "0"])
    assert result.exit_code == 1
    assert "no model.onnx in" in result.output and "Traceback" not in result.output


def _imports_of(module: str) -> set[str]:
    """digitlab modules `module` imports anywhere in its source, lazy imports included."""
    import ast

    import digitlab

    path = Path(digitlab.__file__).parent.joinpath(*module.split(".")[1:]).with_suffix(".py")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("digitlab.")}


def test_api_export_and_the_backends_import_each_other_one_way() -> None:
    """api -> backends <- export, and neither api nor export imports the other (the
    in-memory ONNX twin is backends.torch's); import-linter checks this for every module."""
    assert "digitlab.export" not in _imports_of("digitlab.api")
    assert "digitlab.api" not in _imports_of("digitlab.export")
    assert "digitlab.backends.onnx" in _imports_of("digitlab.export")
    for backend in ("digitlab.backends.base", "digitlab.backends.onnx",
                    "digitlab.backends.torch"):
        assert not _imports_of(backend) & {"digitlab.api", "digitlab.export"}, backend


def _default_model_tool() -> ModuleType:
    """scripts/default_model.py, the maintainer's tool behind `make default-model`."""
    spec = importlib.util.spec_from_file_location(
        "default_model", REPO / "scripts" / "default_model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_default_model_tool_refuses_weights_too_large_to_ship(
        mlp_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A library error, not SystemExit, and nothing written; the tool's main says it in
    one line and exits 1."""
    tool = _default_model_tool()
    monkeypatch.setattr(tool, "MAX_BYTES", 1000)
    out = tmp_path / "assets"
    out.mkdir()
    with pytest.raises(DigitlabError, match="the shipped model must stay under"):
        tool.install(mlp_run, assets=out)
    assert list(out.iterdir()) == []
    monkeypatch.setattr(tool, "ASSETS", out)
    assert tool.main([str(mlp_run)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "MiB" in err
    assert list(out.iterdir()) == []


def test_weights_with_an_unknown_normalisation_are_refused(tmp_path: Path) -> None:
    """PyTorch does not read them as some other normalisation, nor does an export carry
    them: both say what is wrong (digitlab.normalisation defines the modes once)."""
    from digitlab import Recognizer

    args = model_args("mlp", hidden=[8])
    run = tmp_path / "run"
    save_weights(run / WEIGHTS, create_model("mlp", **args),
                 _meta("mlp", args, normalize="z-score"))
    with pytest.raises(DigitlabError, match="unknown normalisation 'z-score' in the weights"):
        Recognizer.load(run)
    with pytest.raises(ExportError, match="unknown normalisation 'z-score' in the weights"):
        export_model(run=run, out=tmp_path / "m.onnx", check_count=1)
    assert not (tmp_path / "m.onnx").exists()
