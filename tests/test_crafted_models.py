"""Crafted run directories, weights metadata and ONNX contracts: one error line, exit 1,
no traceback, and no allocation beyond what the file itself holds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save as st_save

from digitlab.engine.rundir import CONFIG, META_KEY, WEIGHTS, load_model, save_weights
from digitlab.errors import RunDirError
from digitlab.models.registry import create_model, list_models, model_args

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _meta(**changes) -> dict:
    meta = {"model": "mlp", "model_args": model_args("mlp", hidden=[8]), "normalize": "unit",
            "dataset": "mnist", "classes": [str(i) for i in range(10)], "outliers": 0.0}
    meta.update(changes)
    return meta


def _crafted_run(folder: Path, meta: object, config: object = None) -> Path:
    """A run directory holding a real small MLP's tensors under the given metadata."""
    torch.manual_seed(0)
    model = create_model("mlp", **model_args("mlp", hidden=[8]))
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    folder.mkdir(parents=True)
    (folder / WEIGHTS).write_bytes(st_save(tensors, metadata={META_KEY: json.dumps(meta)}))
    if config is not None:
        (folder / CONFIG).write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "digit.png"
    pixels = np.full((40, 40), 255, np.uint8)
    pixels[8:32, 18:22] = 0  # a "1"
    Image.fromarray(pixels).save(path)
    return path


# `python -m digitlab ARGS` that reports its own peak RSS (VmHWM) as it exits: the child's
# rusage from wait4 would count the memory of the pytest process it was forked from.
PEAK = ("import atexit, runpy, sys\n"
        "def peak():\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith('VmHWM:'):\n"
        "            print('PEAK-KIB', line.split()[1], file=sys.__stderr__, flush=True)\n"
        "atexit.register(peak)\n"
        "sys.argv = ['digitlab', *sys.argv[1:]]\n"
        "runpy.run_module('digitlab', run_name='__main__')\n")


def _predict(run: Path, image: Path) -> tuple[int, list[str], int]:
    """`digitlab predict --run RUN IMAGE` in its own process: exit code, output lines and
    the process's peak RSS in MiB."""
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.run([sys.executable, "-c", PEAK, "predict", "--run", str(run),
                           str(image)], capture_output=True, text=True, env=env, timeout=300)
    peaks = [int(line.split()[1]) for line in proc.stderr.splitlines()
             if line.startswith("PEAK-KIB ")]
    assert len(peaks) == 1, proc.stderr
    lines = [line for line in (proc.stdout + proc.stderr).strip().splitlines()
             if not line.startswith("PEAK-KIB ")]
    return proc.returncode, lines, peaks[0] // 1024


CRAFTED = {
    "model_args a list": (_meta(model_args=[1, 2]), None, "'model_args' is a list"),
    "classes a number": (_meta(classes=7), None, "'classes' is a int"),
    "outliers a list": (_meta(outliers=[1]), None, "'outliers' is a list"),
    "model name a list": (_meta(model=["mlp"]), None, "'model' is a list"),
    "class names a table": (_meta(classes=[{}] * 10), None, "'classes' must be a list"),
    "config.json a list": (_meta(), [1, 2], "config.json holds a JSON list"),
    "outliers in config a list": ({k: v for k, v in _meta().items() if k != "outliers"},
                                  {"outliers": [1]}, "'outliers' must be a number"),
    "hidden sizes of 200000": (_meta(model_args=model_args("mlp", hidden=[200000, 200000])),
                               None, "weights do not fit the model"),
    "hidden sizes not numbers": (_meta(model_args={"hidden": ["x"]}), None,
                                 "does not describe a model"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CRAFTED))
def test_a_crafted_run_is_one_error_line(case: str, tmp_path: Path, image: Path) -> None:
    meta, config, message = CRAFTED[case]
    run = _crafted_run(tmp_path / "run", meta, config)
    code, lines, rss_mib = _predict(run, image)
    assert code == 1, lines
    assert len(lines) == 1 and lines[0].lower().startswith("error:") and message in lines[0], lines
    assert rss_mib < 1500  # torch's own import, not a model of 200000 x 200000 floats


def test_the_size_check_refuses_before_anything_is_allocated(tmp_path: Path) -> None:
    run = _crafted_run(tmp_path / "run", _meta(model_args=model_args("mlp", hidden=[10**9])))
    with pytest.raises(RunDirError, match="hidden1.bias is \\[8\\] in the file, "
                       "\\[1000000000\\] in a mlp"):
        load_model(run)  # 3 TB of floats, were the model built before the check


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_still_loads(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    args = model_args(name)
    model = create_model(name, **args).eval()
    save_weights(tmp_path / WEIGHTS, model, _meta(model=name, model_args=args))
    loaded, meta = load_model(tmp_path)
    assert meta["model"] == name
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


# --- ONNX contracts ---------------------------------------------------------------------


def _onnx_file(path: Path, props: dict[str, str], classes: int = 10) -> Path:
    """A tiny real ONNX model ([N, 1, 28, 28] -> softmax [N, classes]) with these metadata."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.zeros((784, classes), np.float32), "w")
    shape = numpy_helper.from_array(np.array([-1, 784], np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["image", "shape"], ["flat"]),
         helper.make_node("MatMul", ["flat", "w"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)],
        "crafted",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", classes])],
        initializer=[weight, shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(path))
    return path


GOOD_PROPS = {"digitlab.model": "mlp", "digitlab.normalize": "unit",
              "digitlab.classes": json.dumps([str(i) for i in range(10)]),
              "digitlab.mean": "0.0", "digitlab.std": "1.0", "digitlab.outliers": "0.0"}

CRAFTED_ONNX = {
    "classes not JSON": ({"digitlab.classes": "[1, 2"}, "digitlab.classes is not valid JSON"),
    "outliers a list": ({"digitlab.outliers": "[1]"}, "digitlab.outliers is a list"),
    "mean a string": ({"digitlab.mean": '"abc"'}, "digitlab.mean is a str"),
    "no model": ({"digitlab.model": None}, "digitlab.model is missing"),
    "classes a number": ({"digitlab.classes": "5"}, "digitlab.classes is a int"),
    "five classes for ten outputs": ({"digitlab.classes": '["a","b","c","d","e"]'},
                                     "10 probabilities for 5 classes"),
}


def test_a_well_formed_crafted_onnx_file_answers(tmp_path: Path, image: Path) -> None:
    onnx_file = _onnx_file(tmp_path / "good.onnx", GOOD_PROPS)
    code, lines, _ = _predict(onnx_file, image)
    assert code == 0 and len(lines) == 1 and "error" not in lines[0], lines


@pytest.mark.parametrize("case", list(CRAFTED_ONNX))
def test_a_crafted_onnx_contract_is_one_error_line(case: str, tmp_path: Path,
                                                   image: Path) -> None:
    changes, message = CRAFTED_ONNX[case]
    props = {k: v for k, v in {**GOOD_PROPS, **changes}.items() if v is not None}
    onnx_file = _onnx_file(tmp_path / "m.onnx", props)
    code, lines, _ = _predict(onnx_file, image)
    assert code == 1, lines
    assert len(lines) == 1 and lines[0].lower().startswith("error:") and message in lines[0], lines


def test_metadata_describing_millions_of_layers_is_refused_unread(tmp_path: Path) -> None:
    import resource
    import time

    run = _crafted_run(tmp_path / "run", _meta(model_args={"hidden": [8] * 2_000_000}))
    started, before = time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(RunDirError, match="more than the 65,536 a model description takes"):
        load_model(run)
    assert time.process_time() - started < 2
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024
