"""Reports: `evaluate RUN --report DIR` and `report RUN...`, on small real training runs."""

from __future__ import annotations

import base64
import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from digitlab.cli import app
from digitlab.config import resolve
from digitlab.console import Console
from digitlab.engine.rundir import WEIGHTS
from digitlab.engine.train import fit
from digitlab.report.scores import class_scores, confusion_matrix

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def _train(out: Path, root: Path, **flags) -> Path:
    cfg = resolve(flags={"model_args": {"hidden": [32]}, "limit_train": 2000, "epochs": 2,
                         "device": "cpu", "log_every": 0, **flags})
    return fit(cfg, out=out, root=root, console=Console(quiet=True)).run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory, mnist_root) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("runs")
    return (_train(base / "relu", mnist_root),
            _train(base / "sigmoid", mnist_root, epochs=1,
                   model_args={"hidden": [32], "activation": "sigmoid"}))


def test_scores_from_a_known_confusion_matrix():
    labels = np.array([0, 0, 0, 1, 1, 2])
    predictions = np.array([0, 0, 1, 1, 2, 2])
    matrix = confusion_matrix(labels, predictions, 3)
    assert matrix.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    s0, s1, s2 = class_scores(matrix, ["0", "1", "2"])
    assert (s0.precision, s0.recall, s0.support) == (1.0, pytest.approx(2 / 3), 3)
    assert (s1.precision, s1.recall) == (0.5, 0.5)
    assert s2.precision == 0.5 and s2.recall == 1.0
    assert s2.f1 == pytest.approx(2 * 0.5 * 1.0 / 1.5)
    # A class that is never predicted scores 0, not NaN.
    assert class_scores(confusion_matrix(np.array([0, 1]), np.array([0, 0]), 2), ["a", "b"]
                        )[1].precision == 0.0


@pytest.mark.slow
def test_evaluate_report_writes_every_file_and_one_self_contained_page(runs, mnist_root,
                                                                       tmp_path):
    out = tmp_path / "report"
    result = invoke("evaluate", runs[0], "--report", out, "--device", "cpu",
                    "--root", mnist_root)
    assert result.exit_code == 0, result.output
    names = {"confusion_matrix.png", "misclassified.png", "curves.png", "per_class.csv",
             "report.html"}
    assert {p.name for p in out.iterdir()} == names
    for png in out.glob("*.png"):
        assert png.read_bytes().startswith(PNG_MAGIC)

    rows = list(csv.DictReader((out / "per_class.csv").open()))
    assert [r["class"] for r in rows] == [str(d) for d in range(10)] + ["macro avg"]
    assert sum(int(r["support"]) for r in rows[:10]) == 10_000
    # The printed table is the CSV's figures.
    printed = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()
               if re.match(r"^\d\s", line)}
    assert printed["3"][:3] == [rows[3]["precision"], rows[3]["recall"], rows[3]["f1"]]

    page = (out / "report.html").read_text()
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert sorted(base64.b64decode(e) for e in embedded) == sorted(
        (out / n).read_bytes() for n in ("confusion_matrix.png", "misclassified.png",
                                         "curves.png"))
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing fetched from elsewhere

    accuracy = float(re.search(r"Accuracy: ([\d.]+)%", result.stdout).group(1)) / 100
    wrong = round((1 - accuracy) * 10_000)
    assert f"{wrong} of 10000 images misclassified" in page


@pytest.mark.slow
def test_evaluate_report_json_and_weights_file(runs, mnist_root, tmp_path):
    result = invoke("evaluate", runs[0] / WEIGHTS, "--report", tmp_path, "--json",
                    "--device", "cpu", "--root", mnist_root)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert len(data["per_class"]) == 10 and data["per_class"][0]["support"] == 980
    assert set(data["report"]) == {"confusion", "misclassified", "scores", "page"}
    # A bare weights file has no metrics.jsonl, so no curves; the page says why.
    assert not (tmp_path / "curves.png").exists()
    assert "No metrics.jsonl" in (tmp_path / "report.html").read_text()


@pytest.mark.slow
def test_report_overlays_runs(runs, tmp_path):
    page = tmp_path / "compare.html"
    result = invoke("report", *runs, "--out", page)
    assert result.exit_code == 0, result.output
    text = page.read_text()
    assert text.count("data:image/png;base64,") == 1
    assert "<td>relu</td>" in text and "<td>sigmoid</td>" in text
    png = tmp_path / "curves.png"
    assert invoke("report", *runs, "--out", png).exit_code == 0
    assert png.read_bytes().startswith(PNG_MAGIC)


def test_report_refuses_what_is_not_a_run(tmp_path):
    result = invoke("report", tmp_path / "missing", "--out", tmp_path / "x.html")
    assert result.exit_code == 1
    assert result.stderr.strip().startswith("Error:") and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1
