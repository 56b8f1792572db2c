"""The `digitlab` command: the app and its commands, one module per command or group
(digitlab.cli.train, .predict, ...). Each command parses its options and calls one
function; what it prints is formatted in its own module."""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import sys
import threading
from collections.abc import Callable
from typing import Annotated, Any, NoReturn

import typer
from typer.core import TyperCommand

from digitlab.cli import data, evaluate, export, models, predict, report, serve, sweep, train
from digitlab.cli.errors import EXTRAS, Group, missing_extra
from digitlab.cli.options import HELP

__all__ = ["EXTRAS", "app", "main", "missing_extra"]


class LazyCommand(TyperCommand):
    """A command whose options are built only when it runs or shows its own help (Click's
    lazily loaded subcommands): train's come from the settings model, and importing that
    (pydantic) is a cost `digitlab --help` need not pay."""

    def __init__(self, name: str, help: str | None, build: Callable[[], TyperCommand]):
        super().__init__(name, help=help)
        self.build = functools.cache(build)

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None,
                     **extra: Any) -> Any:
        return self.build().make_context(info_name, args, parent=parent, **extra)

    def get_params(self, ctx: Any) -> list[Any]:  # what the CLI reference lists
        return self.build().get_params(ctx)

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return self.build().collect_usage_pieces(ctx)


class _Root(Group):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        listed = list(self.commands.items())
        at = [name for name, _ in listed].index("presets") + 1
        lazy = LazyCommand("train", train.train.__doc__, train.command)
        self.commands = dict([*listed[:at], ("train", lazy), *listed[at:]])  # type: ignore[list-item]


app = typer.Typer(cls=_Root, no_args_is_help=True, pretty_exceptions_enable=False,
                  add_completion=False, context_settings=HELP,
                  help="Handwritten digit recognition with PyTorch.")
data_app = typer.Typer(cls=Group, no_args_is_help=True, context_settings=HELP,
                       help="Fetch, inspect and show datasets.")
app.add_typer(data_app, name="data")
data_app.command("fetch")(data.fetch)
data_app.command("info")(data.info)
data_app.command("show")(data.show)
app.command("models")(models.models)
app.command("presets")(models.presets)
app.command("evaluate")(evaluate.evaluate)
app.command("report")(report.report)
app.command("predict")(predict.predict)
app.command("serve")(serve.serve)
app.command("export")(export.export)
app.command("sweep")(sweep.sweep)


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
    version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True,
        help="Print digitlab's and torch's versions and the device `auto` picks.")] = False,
) -> None:
    """digitlab: train, evaluate and use handwritten digit recognisers."""


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
