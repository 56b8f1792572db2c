"""Training configuration: defaults < preset < config file (TOML) < command-line flags.

The resolved config is saved with every run (config.json) and is what `--resume` compares.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from digitlab.choices import AMP_MODES, OPTIMIZERS, SCHEDULES, preset_files
from digitlab.data.augment import AugmentSpec
from digitlab.errors import DigitlabError


@dataclass
class TrainConfig:
    preset: str = "default"
    dataset: str = "mnist"
    model: str = "mlp"
    model_args: dict[str, Any] = field(default_factory=dict)
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: str = "none"
    warmup: float = 0.0  # fraction of all steps spent warming up (onecycle, cosine)
    step_size: int = 5  # epochs between decays for schedule "step"
    gamma: float = 0.1  # decay factor for schedule "step"
    epochs: int = 10
    batch_size: int = 64
    eval_batch_size: int = 1000  # on a CPU at most batch_size: Trainer.eval_batch_size
    shuffle: bool = True
    # "unit" is ToTensor's x/255 (the tutorial); "standard" then standardises with MNIST's
    # mean and std
    normalize: str = "unit"
    # "batch": test loss = mean of per-batch mean losses (the tutorial); "sample": sum / N
    loss_average: str = "sample"
    label_smoothing: float = 0.0
    device: str = "auto"
    seed: int = 0
    log_every: int = 200
    tutorial_log: bool = False  # print the tutorial's own lines (dataset sizes, shapes, Done!!)
    limit_train: int = 0  # use only the first N training images (0: all); for smoke tests
    # hold out the last N training images for validation (hyperparameter search); the test
    # set is then only used to report the final result
    val_split: int = 0
    # Augmentation of every training batch (see digitlab.data.augment): degrees, pixels,
    # fraction, degrees, pixels. All 0: none.
    aug_rotate: float = 0.0
    aug_translate: float = 0.0
    aug_scale: float = 0.0
    aug_shear: float = 0.0
    aug_elastic: float = 0.0
    # Stroke thickness, broken strokes, blur and contrast for reading people's own handwriting
    # (digitlab.data.handwriting), after the aug_* affine map.
    handwriting_augment: bool = False
    # Non-digits added to every training batch, as a share of its size: two digits fused
    # into one piece, taught as "no digit" (digitlab.data.outliers). 0: none.
    outliers: float = 0.0
    ema: float = 0.0  # decay of the weights' moving average, evaluated and saved (0: off)
    amp: str = "none"  # none, auto (bf16/fp16 on CUDA, none on CPU), bf16, fp16
    channels_last: bool = True  # NHWC layout for convolutions (no effect on an MLP)
    compile: bool = False  # torch.compile the model for training
    checkpoint_every: int = 0  # also checkpoint every N batches (0: only after each epoch)

    def validate(self) -> TrainConfig:
        checks = [
            (self.optimizer in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)}"),
            (self.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)}"),
            (self.lr > 0, "--lr must be positive"),
            (self.epochs >= 1, "--epochs must be at least 1"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.eval_batch_size >= 1, "eval_batch_size must be at least 1"),
            (self.log_every >= 0, "--log-every must be 0 (off) or positive"),
            (self.weight_decay >= 0, "--weight-decay must not be negative"),
            (0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
            (0 <= self.warmup < 1, "warmup must be a fraction in [0, 1)"),
            (self.normalize in ("unit", "standard"), "normalize must be 'unit' or 'standard'"),
            (self.loss_average in ("batch", "sample"), "loss_average must be 'batch' or 'sample'"),
            (self.limit_train >= 0, "limit_train must not be negative"),
            (self.val_split >= 0, "val_split must not be negative"),
            (self.ema == 0 or 0 < self.ema < 1, "--ema must be a decay in (0, 1), or 0 (off)"),
            (self.amp in AMP_MODES, f"--amp must be one of {', '.join(AMP_MODES)}"),
            (self.checkpoint_every >= 0, "--checkpoint-every must be 0 (off) or positive"),
            (0 <= self.outliers <= 1, "outliers must be a share of the batch in [0, 1]"),
        ]
        for ok, message in checks:
            if not ok:
                raise DigitlabError(message)
        self.augment_spec().validate()
        return self

    def augment_spec(self) -> AugmentSpec:
        return AugmentSpec(rotate=self.aug_rotate, translate=self.aug_translate,
                           scale=self.aug_scale, shear=self.aug_shear, elastic=self.aug_elastic)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["betas"] = list(self.betas)
        return data


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



_DEFAULTS = TrainConfig()


def field_names() -> set[str]:
    return {f.name for f in dataclasses.fields(TrainConfig)}


def _apply(cfg: TrainConfig, values: dict[str, Any], source: str) -> TrainConfig:
    unknown = set(values) - field_names()
    if unknown:
        raise DigitlabError(f"{source}: unknown setting(s) {', '.join(sorted(unknown))}")
    merged = cfg.to_dict()
    for key, value in values.items():
        _check_type(key, value, source)
        if key == "model_args":
            # A new model family starts from its own defaults, not the previous family's args.
            if values.get("model", merged["model"]) != merged["model"]:
                merged["model_args"] = {}
            merged["model_args"] = {**merged["model_args"], **value}
        elif key == "model" and value != merged["model"] and "model_args" not in values:
            merged["model"], merged["model_args"] = value, {}
        else:
            merged[key] = value
    merged["betas"] = tuple(merged["betas"])
    try:
        return TrainConfig(**merged)
    except TypeError as exc:
        raise DigitlabError(f"{source}: {exc}") from exc


def _check_type(key: str, value: Any, source: str) -> None:
    """A setting of the wrong kind (a config file's `epochs = "ten"`) is one clear error,
    not a TypeError deep in validation or training. The kind is the default's."""
    kind = type(getattr(_DEFAULTS, key))
    if kind is bool:
        ok, wanted = isinstance(value, bool), "true or false"
    elif kind is int:
        ok, wanted = isinstance(value, int) and not isinstance(value, bool), "a whole number"
    elif kind is float:
        ok, wanted = isinstance(value, int | float) and not isinstance(value, bool), "a number"
    elif kind is tuple:
        ok, wanted = (isinstance(value, list | tuple) and len(value) == 2 and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value)), \
            "two numbers"
    elif kind is dict:
        ok, wanted = isinstance(value, dict), "a table"
    else:
        ok, wanted = isinstance(value, str), "text (a quoted string)"
    if not ok:
        raise DigitlabError(f"{source}: {key} must be {wanted}, got {value!r}")


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
        cfg = _apply(cfg, given, "command line")
    return cfg.validate()


# Settings that change what is printed or how often state is saved, not what is computed.
COSMETIC = frozenset({"log_every", "checkpoint_every"})


def differences(old: TrainConfig, new: TrainConfig) -> list[str]:
    """'name: old -> new' for every setting that changes the computation."""
    a, b = old.to_dict(), new.to_dict()
    return [f"{k}: {a[k]!r} -> {b[k]!r}" for k in a if k not in COSMETIC and a[k] != b[k]]


def from_dict(data: dict[str, Any]) -> TrainConfig:
    known = {k: v for k, v in data.items() if k in field_names()}
    return _apply(TrainConfig(), known, "saved config")
