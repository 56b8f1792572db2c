"""The core install: what `pip install digitlab` gives reads digits without PyTorch, the
server, matplotlib or Optuna; a command whose extra is missing says which to install; the
wheel carries the model, the page and the compiled extension.

The other packages are kept out with an import hook in a child process (a venv without
them is what .ci/wheel_check.py builds, from the registry)."""

from __future__ import annotations

import email
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from digitlab.cli import EXTRAS, missing_extra

ROOT = Path(__file__).resolve().parents[1]
# What the core install does not have: every extra's modules.
EXTRA_MODULES = sorted({m for modules in EXTRAS.values() for m in modules} | {"tensorboard"})

# Runs the CLI with the named top-level modules missing, as they are in a venv without
# them; its last line on stderr lists every attempt to import one.
BLOCKED_RUN = """
import atexit, importlib.abc, json, sys
blocked, tried = set(sys.argv[1].split(",")), []
class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in blocked:
            tried.append(name)
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Missing())
atexit.register(lambda: print("tried " + json.dumps(sorted(set(tried))), file=sys.stderr))
sys.argv = ["digitlab", *sys.argv[2:]]
from digitlab.cli import main
main()
"""


def run_without(modules: list[str], *args: str) -> tuple[int, str, str, list[str]]:
    """(exit code, stdout, stderr without the last line, modules whose import was tried)."""
    done = subprocess.run([sys.executable, "-c", BLOCKED_RUN, ",".join(modules), *args],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    *lines, last = done.stderr.splitlines()
    assert last.startswith("tried "), done.stderr
    return done.returncode, done.stdout, "\n".join(lines), json.loads(last[len("tried "):])


@pytest.fixture(scope="module")
def drawings(tmp_path_factory) -> list[Path]:
    """A 1 and a 0, drawn dark on white paper as a photo of a drawing would be."""
    folder = tmp_path_factory.mktemp("drawings")
    one = np.full((140, 140), 250, np.uint8)
    one[25:115, 64:76] = 20
    yy, xx = np.mgrid[:140, :140]
    ring = np.hypot((yy - 70) / 45, (xx - 70) / 30)
    zero = np.where((ring > 0.75) & (ring < 1.0), 20, 250).astype(np.uint8)
    paths = [folder / "one.png", folder / "zero.png"]
    for path, image in zip(paths, (one, zero), strict=True):
        Image.fromarray(image).save(path)
    return paths


@pytest.mark.slow
def test_predict_reads_digits_without_any_extra(drawings):
    code, out, err, tried = run_without(EXTRA_MODULES, "predict", "--json",
                                        *map(str, drawings))
    assert code == 0, err
    assert tried == []  # not even attempted: nothing falls back quietly
    answers = [json.loads(line) for line in out.splitlines()]
    assert [a["digit"] for a in answers] == [1, 0]
    # The same answers as with everything installed (the shipped model on onnxruntime).
    code, full, _, _ = run_without([], "predict", "--json", *map(str, drawings))
    assert code == 0 and full == out


def test_python_api_without_any_extra(drawings):
    code = ("import sys; from digitlab import Recognizer; "
            "p = Recognizer.load().predict(sys.argv[1]); "
            "heavy = [m for m in ('torch', 'fastapi', 'scipy', 'matplotlib') "
            "if m in sys.modules]; print(p.digit, Recognizer.load().info()['backend'], heavy)")
    done = subprocess.run([sys.executable, "-c", code, str(drawings[0])], capture_output=True,
                          text=True, timeout=120, check=True)
    # SciPy is part of the core install: the preprocessing's filters come from it.
    assert done.stdout.split(None, 2) == ["1", "onnxruntime", "['scipy']\n"]


def test_importing_digitlab_is_cheap_and_names_its_public_api():
    """`import digitlab` loads no model code (every command imports it); the public names
    load their modules on first use."""
    code = ("import sys, digitlab; before = sorted(m for m in sys.modules if 'digitlab' in m "
            "or m in ('numpy', 'torch', 'PIL')); "
            "from digitlab import DigitResult, Prediction, Recognizer; "
            "print(before, [n for n in digitlab.__all__ if not hasattr(digitlab, n)], "
            "Recognizer.__module__, Prediction.__module__, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stdout.split() == ["['digitlab',", "'digitlab.errors']", "[]", "digitlab.api",
                                   "digitlab.results", "False"]


@pytest.mark.parametrize(("missing", "args", "line"), [
    (["torch"], ["train", "--epochs", "1"],
     "Error: `digitlab train` needs PyTorch: pip install 'digitlab[train]'"),
    (["torch"], ["models"],
     "Error: `digitlab models` needs PyTorch: pip install 'digitlab[train]'"),
    (["torch"], ["evaluate", "runs/x"],
     "Error: `digitlab evaluate` needs PyTorch: pip install 'digitlab[train]'"),
    (["torch"], ["data", "show"],
     "Error: `digitlab data show` needs PyTorch: pip install 'digitlab[train]'"),
    (["torch"], ["export"],
     "Error: `digitlab export` needs PyTorch: pip install 'digitlab[train]'"),
    (["torch"], ["predict", "--run", "runs/x", "README.md"],
     "Error: `digitlab predict` needs PyTorch: pip install 'digitlab[train]'"),
    (["fastapi", "starlette", "uvicorn"], ["serve", "--port", "0"],
     "Error: `digitlab serve` needs uvicorn: pip install 'digitlab[serve]'"),
    # sweep's extra brings PyTorch too: one install, whichever is missing first
    (["torch", "optuna"], ["sweep", "--trials", "1"],
     "Error: `digitlab sweep` needs Optuna: pip install 'digitlab[sweep]'"),
    (["optuna"], ["sweep", "--trials", "1"],
     "Error: `digitlab sweep` needs Optuna: pip install 'digitlab[sweep]'"),
    (["matplotlib"], ["report", "runs/x"],
     "Error: `digitlab report` needs matplotlib: pip install 'digitlab[report]'"),
])
def test_a_missing_extra_is_named_in_one_line(missing, args, line):
    code, out, err, tried = run_without(missing, *args)
    assert (code, out, err) == (1, "", line)
    assert tried  # the command did need it


def test_version_without_torch():
    code, out, err, _ = run_without(["torch"], "--version")
    assert (code, err) == (0, "")
    assert out.endswith(", torch not installed (pip install 'digitlab[train]')\n")


def test_a_broken_install_is_not_called_a_missing_extra():
    # torch is installed here: a submodule that fails to import is a real error
    assert missing_extra(ModuleNotFoundError("x", name="torch._nothing_here"), "train") is None
    assert missing_extra(ModuleNotFoundError("x", name="no_such_module_anywhere"), "x") is None
    assert missing_extra(ImportError("cannot import name 'x'", name="torch"), "train") is None


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from this checkout with the setuptools already installed (no
    network: python -m build would fetch its own into an isolated environment)."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "--no-index", "-w", str(out), str(ROOT)],
                   check=True, timeout=600, capture_output=True)
    (built,) = out.glob("digitlab-*.whl")
    return built


@pytest.mark.slow
def test_the_wheel_carries_model_page_and_extension(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("assets/default-model.onnx", "assets/default-model.safetensors",
                 "assets/default-model.json", "assets/sweep_space_tutorial.toml",
                 "serve/static/index.html", "serve/static/app.js", "serve/static/style.css",
                 "py.typed", "vision/_flat.pyi"):
        assert f"digitlab/{name}" in names, name
    assert [n for n in names if n.startswith("digitlab/vision/_flat.") and n.endswith(".so")]
    assert "digitlab-0.1.0.dist-info/licenses/LICENSE" in names
    assert not [n for n in names if n.startswith("tests/") or "__pycache__" in n]


def test_the_wheel_metadata(wheel):
    with zipfile.ZipFile(wheel) as zf:
        meta = email.message_from_bytes(zf.read("digitlab-0.1.0.dist-info/METADATA"))
    assert meta["License-Expression"] == "MIT"
    assert set(meta.get_all("Provides-Extra")) == {
        "train", "export", "serve", "sweep", "report", "tensorboard", "all", "docs", "dev"}
    requires = meta.get_all("Requires-Dist")
    core = sorted(r.split(">")[0].split(";")[0].strip() for r in requires if "extra ==" not in r)
    assert core == ["deflate", "numpy", "onnxruntime", "pillow", "rich", "scipy", "typer"]
    assert [r for r in requires if r.startswith("torch")] == [
        'torch<2.15,>=2.10; extra == "train"']


def test_constraints_pin_every_dependency_within_its_bounds():
    """CI installs constraints.txt's versions: each dependency of every extra is pinned
    there, at a version its bounds in pyproject.toml allow."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.lower().replace("_", "-")] = version
    requirements = [Requirement(r) for r in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        requirements += [Requirement(r) for r in extra]
    for req in requirements:
        if req.name == "digitlab":
            continue
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{req.name} is not pinned in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (req, pins[name])
