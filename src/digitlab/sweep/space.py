"""Search spaces: the parameters a sweep searches, read from a TOML file and checked
before any trial runs, and the training config each trial gets."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from digitlab import assets
from digitlab.config import TrainConfig, field_names, from_dict, load_toml, resolve
from digitlab.errors import DigitlabError

DEFAULT_SPACE = "sweep_space_tutorial.toml"


TYPES = ("categorical", "float", "int")


# Settings a space may not search or fix: they are the sweep's own business.
_RESERVED = {"val_split", "preset", "tutorial_log"}


class SweepError(DigitlabError):
    """A search space, study or storage problem the user can fix."""


@dataclass(frozen=True)
class Param:
    name: str  # a TrainConfig field, or model_args.<option>
    type: str
    choices: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None

    def suggest(self, trial: Any) -> Any:
        if self.type == "categorical":
            # Optuna's choices must be scalars; lists (hidden sizes) travel as "512,256".
            labels = [choice_label(c) for c in self.choices]
            picked = trial.suggest_categorical(self.name, labels)
            return self.choices[labels.index(picked)]
        assert self.low is not None and self.high is not None  # checked by _param
        if self.type == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log,
                                     step=int(self.step or 1))
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log,
                                   step=self.step)

    def corners(self) -> list[Any]:
        """Values to try when checking that the space only produces valid configs."""
        return list(self.choices) if self.type == "categorical" else [self.low, self.high]

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in (("type", self.type), ("choices", list(self.choices)),
                                  ("low", self.low), ("high", self.high), ("log", self.log),
                                  ("step", self.step)) if v not in (None, (), [], False)}


def choice_label(value: Any) -> Any:
    return ",".join(str(v) for v in value) if isinstance(value, list) else value


@dataclass
class Space:
    params: list[Param]
    fixed: dict[str, Any] = field(default_factory=dict)
    preset: str | None = None
    source: str = ""

    def signature(self) -> str:
        """What a study remembers of its space, to refuse resuming with a different one."""
        return json.dumps({"preset": self.preset, "fixed": self.fixed,
                           "params": {p.name: p.describe() for p in self.params}},
                          sort_keys=True)


def default_space_path() -> Path:
    return assets.folder() / DEFAULT_SPACE


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SweepError(f"{what} must be a number, got {value!r}")
    return value


def _param(name: str, table: dict[str, Any], source: str) -> Param:
    where = f"{source}: [{name}]"
    kind = table.get("type")
    if kind not in TYPES:
        raise SweepError(f"{where}: type must be one of {', '.join(TYPES)}; got {kind!r}")
    allowed = {"type", "choices"} if kind == "categorical" else {"type", "low", "high", "log",
                                                                "step"}
    extra = set(table) - allowed
    if extra:
        raise SweepError(f"{where}: unknown key(s) {', '.join(sorted(extra))} for type {kind}")
    if kind == "categorical":
        choices = table.get("choices")
        if not isinstance(choices, list) or not choices:
            raise SweepError(f"{where}: categorical needs a non-empty list `choices`")
        return Param(name, kind, choices=tuple(choices))
    if "low" not in table or "high" not in table:
        raise SweepError(f"{where}: {kind} needs `low` and `high`")
    low, high = _number(table["low"], f"{where} low"), _number(table["high"], f"{where} high")
    log, step = table.get("log", False), table.get("step")
    if not isinstance(log, bool):
        raise SweepError(f"{where}: log must be true or false")
    if step is not None and _number(step, f"{where} step") <= 0:
        raise SweepError(f"{where}: step must be positive")
    if kind == "int" and not all(isinstance(v, int) for v in (low, high, step or 1)):
        raise SweepError(f"{where}: an int parameter needs whole-number low, high and step")
    if low > high:
        raise SweepError(f"{where}: low {low} is above high {high}")
    if log and (low <= 0 or step is not None):
        raise SweepError(f"{where}: log = true needs low > 0 and no step")
    return Param(name, kind, low=low, high=high, log=log, step=step)


def load_space(path: Path | None = None) -> Space:
    """Read and check a space file (the packaged tutorial space when path is None)."""
    path = path if path is not None else default_space_path()
    data = load_toml(path)
    source = str(path)
    preset = data.pop("preset", None)
    if preset is not None and not isinstance(preset, str):
        raise SweepError(f"{source}: preset must be a string")
    fixed = data.pop("fixed", {})
    if not isinstance(fixed, dict):
        raise SweepError(f"{source}: [fixed] must be a table of settings")
    params: list[Param] = []
    for key, value in data.items():
        if not isinstance(value, dict):
            raise SweepError(f"{source}: `{key}` must be a table with a type (or go in [fixed])")
        if key == "model_args" and "type" not in value:
            for option, table in value.items():
                if not isinstance(table, dict):
                    raise SweepError(f"{source}: model_args.{option} must be a table")
                params.append(_param(f"model_args.{option}", table, source))
        else:
            params.append(_param(key, value, source))
    known = field_names() - _RESERVED
    for name in [p.name for p in params] + list(fixed):
        if not name.startswith("model_args.") and name not in known and name != "model_args":
            raise SweepError(f"{source}: {name!r} is not a setting a sweep can search or fix")
    if not params:
        raise SweepError(f"{source}: no parameters to search")
    space = Space(params=params, fixed=fixed, preset=preset, source=source)
    return space


def base_config(space: Space, *, preset: str | None, overrides: dict[str, Any]) -> TrainConfig:
    flags = {**space.fixed, **{k: v for k, v in overrides.items() if v is not None}}
    return resolve(preset=preset or space.preset, flags=flags)


def trial_config(base: TrainConfig, values: dict[str, Any]) -> TrainConfig:
    """The base config with one trial's values (model_args.* merged into model_args)."""
    from digitlab.models.registry import model_args

    data = base.to_dict()
    data["model_args"] = dict(data["model_args"])
    for name, value in values.items():
        if name.startswith("model_args."):
            data["model_args"][name.split(".", 1)[1]] = value
        else:
            data[name] = value
    cfg = from_dict(data)
    model_args(cfg.model, **cfg.model_args)  # unknown model options fail here, not mid-sweep
    return cfg


def check_space(space: Space, base: TrainConfig) -> None:
    """Every choice and bound of every parameter must make a valid config on its own."""
    from digitlab.models.registry import create_model

    for param in space.params:
        for value in param.corners():
            try:
                cfg = trial_config(base, {param.name: value})
                if param.name.startswith("model_args."):
                    create_model(cfg.model, **cfg.model_args)
            except DigitlabError as exc:
                raise SweepError(f"{space.source}: {param.name} = {value!r} is not usable "
                                 f"({exc})") from None


def best_config(study: Any, space: Space, base: TrainConfig) -> TrainConfig:
    """The winning trial's config, for the whole training set (no validation hold-out)."""
    best = study.best_trial
    values = {}
    for param in space.params:
        label = best.params[param.name]
        if param.type == "categorical":
            labels = [choice_label(c) for c in param.choices]
            values[param.name] = param.choices[labels.index(label)]
        else:
            values[param.name] = label
    cfg = trial_config(base, values)
    cfg.val_split = 0
    return cfg
