"""Training configuration: defaults < preset < config file (TOML) < command-line flags.

`TrainConfig` is the one place a training setting is declared: its type, default, bounds,
meaning and section. The TOML loader, the saved config.json, `digitlab train`'s options
(digitlab.cli.train) and the settings reference (docs/reference/config.md) all read it.
The resolved config is saved with every run (config.json) and is what `--resume` compares.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, model_validator

from digitlab.choices import Amp, LossAverage, Normalize, Optimizer, Schedule, preset_files
from digitlab.errors import DigitlabError

if TYPE_CHECKING:
    from digitlab.data.augment import AugmentSpec

# The sections group the settings in `digitlab train --help` and the settings reference.
SECTIONS = MODEL, OPTIM, SCHEDULE, DATA, AUGMENT, RUN = (
    "Model", "Optimizer", "Schedule", "Data", "Augmentation", "Run")


def setting(default: Any, description: str, *, section: str, flag: bool = True,
            **bounds: Any) -> Any:
    """A field of TrainConfig. flag=False: no option of its own on the command line (it is
    set by a file, `--set NAME=VALUE`, or a flag that sets several, like --augment)."""
    extra: dict[str, JsonValue] = {"section": section, "flag": flag}
    if isinstance(default, dict):
        return Field(default_factory=dict, description=description, json_schema_extra=extra,
                     **bounds)
    return Field(default, description=description, json_schema_extra=extra, **bounds)


def _augmentation(what: str, unit: str) -> Any:
    up_to = "up to this fraction" if unit == "fraction" else f"up to this many {unit}"
    return setting(0.0, f"Random {what} of every training batch, {up_to} (0: off).",
                   section=AUGMENT, flag=False)


class TrainConfig(BaseModel):
    """Every setting of a training run. The field order is config.json's key order."""

    # strict: a file's `epochs = "10"` or `shuffle = 1` is an error, not a guess
    model_config = ConfigDict(strict=True, extra="forbid", validate_assignment=True)

    preset: str = setting("default", "The preset the run started from (see the table below).",
                          section=RUN, flag=False)
    dataset: str = setting("mnist", "mnist or fashion-mnist.", section=DATA)
    model: str = setting("mlp", "Registered model name (digitlab models).", section=MODEL)
    model_args: dict[str, Any] = setting(
        {}, "The model's constructor arguments (e.g. `hidden`, `activation` for `mlp`; see "
        "`digitlab models`); a new `model` starts from its own defaults.", section=MODEL,
        flag=False)
    optimizer: Optimizer = setting("adam", "The optimizer.", section=OPTIM)
    lr: float = setting(1e-3, "Learning rate (peak, with a schedule).", section=OPTIM, gt=0)
    momentum: float = setting(0.9, "SGD momentum.", section=OPTIM)
    weight_decay: float = setting(0.0, "Weight decay.", section=OPTIM, ge=0)
    # a TOML array is a list: taken as the pair it stands for
    betas: Annotated[tuple[float, float], Field(strict=False)] = setting(
        (0.9, 0.999), "Adam's and AdamW's two moment decays.", section=OPTIM)
    schedule: Schedule = setting("none", "The learning-rate schedule.", section=SCHEDULE)
    warmup: float = setting(0.0, "Fraction of all steps spent warming up (onecycle, cosine).",
                            section=SCHEDULE, ge=0, lt=1)
    step_size: int = setting(5, "Epochs between decays for schedule step.", section=SCHEDULE)
    gamma: float = setting(0.1, "Decay factor for schedule step.", section=SCHEDULE)
    epochs: int = setting(10, "Number of epochs.", section=SCHEDULE, ge=1)
    batch_size: int = setting(64, "Training batch size.", section=DATA, ge=1)
    eval_batch_size: int = setting(
        1000, "Test batch size (on a CPU at most batch_size).", section=DATA, ge=1)
    shuffle: bool = setting(True, "Reshuffle the training set every epoch.", section=DATA)
    normalize: Normalize = setting(
        "unit", "unit: ToTensor's x/255 (the tutorial); standard: then standardised with the "
        "dataset's mean and std.", section=DATA)
    loss_average: LossAverage = setting(
        "sample", "Test loss: batch, the mean of per-batch mean losses (the tutorial); sample, "
        "the sum over N.", section=DATA)
    label_smoothing: float = setting(0.0, "Label smoothing.", section=OPTIM, ge=0, lt=1)
    device: str = setting("auto", "auto, cpu, cuda or mps.", section=RUN)
    seed: int = setting(0, "Seed for Python, NumPy and torch.", section=RUN)
    log_every: int = setting(200, "Print the loss every N batches (0: off).", section=RUN, ge=0)
    tutorial_log: bool = setting(
        False, "Print the tutorial's own lines (dataset sizes, shapes, Done!!).", section=RUN)
    limit_train: int = setting(0, "Train on the first N images only (0: all); for smoke tests.",
                               section=DATA, ge=0)
    val_split: int = setting(
        0, "Hold out the last N training images for validation (hyperparameter search); the "
        "test set then only reports the final result.", section=DATA, ge=0)
    # set together by `--augment rotate=15,translate=2.5,...` (digitlab.data.augment)
    aug_rotate: float = _augmentation("rotation", "degrees")
    aug_translate: float = _augmentation("shift", "pixels")
    aug_scale: float = _augmentation("scaling", "fraction")
    aug_shear: float = _augmentation("shear", "degrees")
    aug_elastic: float = _augmentation("smooth displacement", "pixels")
    handwriting_augment: bool = setting(
        False, "Vary stroke thickness, break strokes, blur and change contrast, for reading "
        "people's own handwriting (after the aug_* affine map).", section=AUGMENT)
    outliers: float = setting(
        0.0, "Non-digits added to every training batch, as a share of its size: two digits "
        "fused into one piece, taught as \"no digit\" (0: none).", section=AUGMENT, ge=0, le=1)
    ema: float = setting(
        0.0, "Keep, evaluate and save a moving average of the weights with this decay, e.g. "
        "0.999 (0: off).", section=OPTIM, ge=0, lt=1)
    amp: Amp = setting("none", "Mixed precision (auto: bf16 or fp16 on CUDA, none on a CPU).",
                       section=RUN)
    channels_last: bool = setting(
        True, "NHWC layout for convolutions (no effect on an MLP).", section=RUN)
    compile: bool = setting(False, "torch.compile the model for training.", section=RUN)
    checkpoint_every: int = setting(
        0, "Also checkpoint every N batches (0: only after each epoch).", section=RUN, ge=0)

    # The augmentation's bounds live with the augmentation, which needs PyTorch: checked
    # here, not declared on the fields, so that reading settings (`digitlab train --help`)
    # does not load it.
    @model_validator(mode="after")
    def _augmentation_in_bounds(self) -> TrainConfig:
        try:
            self.augment_spec().validate()
        except DigitlabError as exc:
            raise ValueError(str(exc)) from None
        return self

    def augment_spec(self) -> AugmentSpec:
        from digitlab.data.augment import AugmentSpec

        return AugmentSpec(rotate=self.aug_rotate, translate=self.aug_translate,
                           scale=self.aug_scale, shear=self.aug_shear, elastic=self.aug_elastic)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def field_names() -> set[str]:
    return set(TrainConfig.model_fields)


def _load_presets() -> dict[str, dict[str, Any]]:
    """The named presets: TOML files shipped in the package (assets/presets), which users
    can read and copy as a start for their own --config file."""
    presets = {}
    for name, text in preset_files().items():
        values = tomllib.loads(text)
        values.pop("preset", None)
        presets[name] = values
    return presets


PRESETS: dict[str, dict[str, Any]] = _load_presets()

# Where a setting came from, when it is the command line: its flag names it best.
COMMAND_LINE = "command line"


def _problem(exc: ValidationError, source: str) -> DigitlabError:
    """pydantic's first complaint as one line naming the setting and where it came from."""
    error = exc.errors(include_url=False)[0]
    loc = error["loc"]
    name = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    if error["type"] == "extra_forbidden":
        return DigitlabError(f"{source}: unknown setting {name}")
    if error["type"] == "missing":
        return DigitlabError(f"{source}: {name} is missing")
    message = error["msg"]
    if message.startswith("Input should be "):
        message = "must be " + message.removeprefix("Input should be ")
    elif message.startswith("Value error, "):
        message = message.removeprefix("Value error, ")
    else:
        message = "invalid: " + message[0].lower() + message[1:]
    if not loc:  # a check of several settings together: its message says which
        return DigitlabError(f"{source}: {message}")
    got = f"{message}, got {error['input']!r}"
    if source == COMMAND_LINE and len(loc) == 1 and flag_of(str(loc[0])):
        return DigitlabError(f"--{name.replace('_', '-')} {got}")
    return DigitlabError(f"{source}: {name} {got}")


def section_of(name: str) -> str:
    extra = TrainConfig.model_fields[name].json_schema_extra
    return str(extra.get("section")) if isinstance(extra, dict) else RUN


def flag_of(name: str) -> bool:
    """Whether the setting has an option of its own on the command line."""
    field = TrainConfig.model_fields.get(name)
    extra = field.json_schema_extra if field is not None else None
    return isinstance(extra, dict) and bool(extra.get("flag"))


def _apply(cfg: TrainConfig, values: dict[str, Any], source: str) -> TrainConfig:
    merged = cfg.to_dict()
    for key, value in values.items():
        if key == "model_args" and isinstance(value, dict):
            # A new model family starts from its own defaults, not the previous family's args.
            if values.get("model", merged["model"]) != merged["model"]:
                merged["model_args"] = {}
            merged["model_args"] = {**merged["model_args"], **value}
        elif key == "model" and value != merged["model"] and "model_args" not in values:
            merged["model"], merged["model_args"] = value, {}
        else:
            merged[key] = value
    try:
        return TrainConfig.model_validate(merged)
    except ValidationError as exc:
        raise _problem(exc, source) from None


def load_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise DigitlabError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise DigitlabError(f"{path}: not valid TOML ({exc})") from None
    except RecursionError:  # tomllib parses nested arrays and tables recursively
        raise DigitlabError(f"{path}: nested too deeply to be a config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DigitlabError(f"{path}: cannot read ({exc})") from None


def resolve(
    *, preset: str | None = None, config_file: Path | None = None,
    flags: dict[str, Any] | None = None, base: TrainConfig | None = None,
) -> TrainConfig:
    """Defaults < preset < config file < flags (flags that are None were not given).
    With `base` (a resumed run's config) and no preset named, base takes the place of
    defaults + preset."""
    file_values = load_toml(config_file) if config_file else {}
    chosen = preset or file_values.pop("preset", None)
    file_values.pop("preset", None)
    if chosen is None and base is not None:
        cfg = base
    else:
        chosen = chosen or "default"
        if chosen not in PRESETS:
            raise DigitlabError(
                f"unknown preset {chosen!r}; known presets: {', '.join(PRESETS)}")
        cfg = _apply(TrainConfig(), {**PRESETS[chosen], "preset": chosen}, f"preset {chosen}")
    if file_values:
        cfg = _apply(cfg, file_values, str(config_file))
    given = {k: v for k, v in (flags or {}).items() if v is not None}
    if given:
        cfg = _apply(cfg, given, COMMAND_LINE)
    return cfg


# Settings that change what is printed or how often state is saved, not what is computed.
COSMETIC = frozenset({"log_every", "checkpoint_every"})


def differences(old: TrainConfig, new: TrainConfig) -> list[str]:
    """'name: old -> new' for every setting that changes the computation."""
    a, b = old.to_dict(), new.to_dict()
    return [f"{k}: {a[k]!r} -> {b[k]!r}" for k in a if k not in COSMETIC and a[k] != b[k]]


def from_dict(data: dict[str, Any]) -> TrainConfig:
    """A saved config.json's settings (its other keys, like `parameters`, are left out)."""
    known = {k: v for k, v in data.items() if k in TrainConfig.model_fields}
    return _apply(TrainConfig(), known, "saved config")
