"""`digitlab train`. Its settings' options are made from the fields of
digitlab.config.TrainConfig (name, type, choices, help, section), so a new setting is
declared there alone; `--set NAME=VALUE` reaches every setting, options or not."""

from __future__ import annotations

import inspect
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperCommand

from digitlab.cli.options import HELP, Preset, Root
from digitlab.errors import DigitlabError

if TYPE_CHECKING:
    from pydantic.fields import FieldInfo


def train(
    preset: Annotated[Preset | None, typer.Option(
        help="Named settings to start from (their files: `digitlab presets`).")] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", help="TOML file of settings.")] = None,
    assign: Annotated[list[str] | None, typer.Option(
        "--set", metavar="NAME=VALUE", help="Any setting, written as in a config file: "
        "--set warmup=0.1, --set betas=[0.9,0.99], --set model_args.kernel=5 "
        "(repeatable; wins over the other options).")] = None,
    hidden: Annotated[str | None, typer.Option(
        help="MLP hidden sizes, e.g. 128,256,128,64.")] = None,
    activation: Annotated[str | None, typer.Option(
        help="sigmoid, relu, tanh, gelu or silu.")] = None,
    dropout: Annotated[float | None, typer.Option(help="MLP dropout probability.")] = None,
    augment: Annotated[str | None, typer.Option(
        help="Batch augmentation, replacing the preset's: e.g. "
        "rotate=15,translate=2.5,scale=0.1,shear=8,elastic=2 (degrees, pixels, fraction, "
        "degrees, pixels), or none.")] = None,
    tensorboard: Annotated[Path | None, typer.Option(
        "--tensorboard", metavar="DIR", help="Write TensorBoard scalars and sample images "
        "to DIR.")] = None,
    resume_run: Annotated[Path | None, typer.Option(
        "--resume", metavar="RUN", help="Continue RUN from its last checkpoint; other "
        "settings must match unless --force.")] = None,
    out: Annotated[Path | None, typer.Option(
        help="Run directory (default runs/<timestamp>).")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Write into a non-empty --out; with --resume, continue with changed "
        "settings.")] = False,
    root: Root = None,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="Print only the final result.")] = False,
    **settings: Any,
) -> None:
    """Train a model; the log follows the tutorial's, the run lands in a run directory.
    Ctrl-C saves a checkpoint and stops; --resume continues from it."""
    from digitlab.config import resolve
    from digitlab.console import Console
    from digitlab.engine.train import Interrupted, fit, resume

    model_args = {k: v for k, v in (("hidden", _hidden(hidden)), ("activation", activation),
                                    ("dropout", dropout)) if v is not None}
    flags: dict[str, Any] = {**settings, "model_args": model_args or None}
    if augment is not None:
        from digitlab.data.augment import parse_spec

        spec = parse_spec(augment)
        flags.update(aug_rotate=spec.rotate, aug_translate=spec.translate,
                     aug_scale=spec.scale, aug_shear=spec.shear, aug_elastic=spec.elastic)
    for name, value in assignments(assign or []).items():
        if name == "model_args" and isinstance(value, dict):
            value = {**(flags["model_args"] or {}), **value}
        flags[name] = value
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


def command() -> TyperCommand:
    """The train command: train()'s own options, then one per setting that has a flag."""
    from digitlab.config import SECTIONS, TrainConfig, flag_of, section_of

    own = [p for p in inspect.signature(train, eval_str=True).parameters.values()
           if p.kind is not inspect.Parameter.VAR_KEYWORD]
    # grouped by section in --help, in the sections' order
    names = sorted((n for n in TrainConfig.model_fields if flag_of(n)),
                   key=lambda n: SECTIONS.index(section_of(n)))
    generated = [setting_option(n, TrainConfig.model_fields[n], section_of(n)) for n in names]
    clash = {p.name for p in own} & {p.name for p in generated}
    if clash:
        raise RuntimeError(f"train's own options clash with settings: {sorted(clash)}")

    def run(**options: Any) -> None:
        train(**options)

    run.__signature__ = inspect.Signature([*own, *generated])  # type: ignore[attr-defined]
    run.__doc__ = train.__doc__
    single = typer.Typer(add_completion=False)
    single.command("train", context_settings=HELP)(run)
    built = typer.main.get_command(single)
    assert isinstance(built, TyperCommand)  # one command: not a group
    built.name = "train"
    return built


def setting_option(name: str, field: FieldInfo, section: str) -> inspect.Parameter:
    """A setting as a keyword option: its type (a Literal lists its choices), its
    description as help, its section as the help panel; None when not given."""
    option = typer.Option(help=field.description, rich_help_panel=section)
    kind: Any = field.annotation
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                             annotation=Annotated[kind | None, option])


def assignments(items: list[str]) -> dict[str, Any]:
    """--set NAME=VALUE items as settings; VALUE is read as a TOML value (a number, true,
    [0.9, 0.99], "text"), else taken as text; model_args.NAME sets one model argument."""
    found: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise DigitlabError(f"--set takes NAME=VALUE, got {item!r}")
        if name == "preset":  # a preset is a set of settings, not a name to record
            raise DigitlabError("name the preset to start from with --preset, not --set")
        try:
            value = tomllib.loads(f"value = {text}")["value"]
        except tomllib.TOMLDecodeError:
            value = text.strip()
        table, dot, key = name.partition(".")
        if dot:
            found.setdefault(table, {})[key] = value
        else:
            found[name] = value
    return found


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
