"""`digitlab evaluate`: a trained model's test-set scores, several models' ensemble, and
the written report."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from digitlab.cli.options import Root
from digitlab.errors import DigitlabError

if TYPE_CHECKING:
    from digitlab.engine.ensemble import EnsembleResult
    from digitlab.engine.evaluate import EvalResult
    from digitlab.report.evaluation import EvaluationReport


def evaluate(
    runs: Annotated[list[Path], typer.Argument(
        metavar="RUN...", help="Run directories (or weights files); several are also scored "
        "as an ensemble (mean of their probabilities).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    tta: Annotated[bool, typer.Option(
        "--tta", help="Test-time augmentation: average each model's probabilities over the "
        "image and 1-pixel shifts of it.")] = False,
    root: Root = None,
    report: Annotated[Path | None, typer.Option(
        "--report", help="Also write a report into this directory: confusion matrix, "
        "misclassified images, curves (PNG), per-class scores (CSV), report.html.")] = None,
) -> None:
    """Accuracy, average loss and per-class accuracy of a trained model on the test set;
    with several runs, each one's and their ensemble's."""
    if len(runs) > 1 or tta:
        if report is not None:
            raise DigitlabError("--report takes a single run without --tta")
        from digitlab.engine.ensemble import evaluate_ensemble

        typer.echo(format_ensemble(evaluate_ensemble(runs, root=root, device=device, tta=tta),
                                   as_json=as_json))
        return
    run = runs[0]
    if report is not None:
        from digitlab.report.evaluation import write_evaluation_report

        written = write_evaluation_report(run, report, root=root, device=device)
        for line in report_lines(run, written, as_json=as_json):
            typer.echo(line)
        return
    from digitlab.engine.evaluate import evaluate_run

    result = evaluate_run(run, root=root, device=device)
    if as_json:
        typer.echo(json.dumps({"run": str(run), **_scores(result)}))
        return
    typer.echo(result.summary())
    for digit, acc in enumerate(result.per_class):
        typer.echo(f"  class {digit}: {100 * acc:.2f}%")


def _scores(r: EvalResult) -> dict[str, Any]:
    return {"accuracy": r.accuracy, "loss": r.loss, "per_class_accuracy": r.per_class,
            "count": r.count}


def format_ensemble(result: EnsembleResult, *, as_json: bool = False) -> str:
    if as_json:
        return json.dumps({
            "tta": result.tta,
            "members": [{"run": str(m.run), **_scores(m.result)} for m in result.members],
            "ensemble": _scores(result.ensemble),
        })
    width = max(len(str(m.run)) for m in result.members)
    how = " with test-time augmentation" if result.tta else ""
    lines = [f"{str(m.run):<{width}}  {m.result.summary()}" for m in result.members]
    label = "ensemble" if len(result.members) > 1 else "single model"
    lines.append(f"{label} of {len(result.members)}{how}: {result.ensemble.summary()}")
    lines += [f"  class {d}: {100 * a:.2f}%" for d, a in enumerate(result.ensemble.per_class)]
    return "\n".join(lines)


def report_lines(run: Path, done: EvaluationReport, *, as_json: bool) -> list[str]:
    """`evaluate --report`: the result and per-class scores, after the report is written."""
    if as_json:
        return [json.dumps({
            "run": str(run), **_scores(done.result),
            "per_class": [asdict(s) for s in done.scores],
            "report": {k: str(v) for k, v in done.files.items()},
        })]
    from digitlab.report.scores import scores_table

    return [done.result.summary(), scores_table(done.scores),
            f"report written to {done.files['page']}"]
