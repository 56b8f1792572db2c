"""How every command ends on a problem a user can cause: one line on stderr and exit 1, a
missing extra named with its install line, Ctrl-C as exit 130."""

from __future__ import annotations

import importlib.util
from typing import Any

import typer
from typer.core import TyperGroup

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
# What an extra needs that the core install may have anyway (newer Typer releases bring
# pydantic): named when it is missing, but not counted among what the core lacks.
_ALSO = {"train": {"pydantic": "pydantic"}}
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
    found = [(extra, modules[top]) for extra, modules in [*EXTRAS.items(), *_ALSO.items()]
             if top in modules]
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


class Group(TyperGroup):
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
