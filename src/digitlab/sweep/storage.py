"""Where a study lives (an Optuna storage: SQLite by default, PostgreSQL to share one
between machines), opening it, and showing its URL without the password."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

from digitlab.config import TrainConfig
from digitlab.errors import first_line
from digitlab.sweep.pruner import make_pruner
from digitlab.sweep.space import Space, SweepError


def storage_url(storage: str | None, study_dir: Path) -> str:
    if storage:
        return storage
    return f"sqlite:///{(study_dir / 'study.db').resolve()}"


def driver_url(url: str) -> str:
    """postgresql:// (or postgres://) with the PostgreSQL driver that is installed named in it:
    SQLAlchemy 2.1 picks psycopg 3 for a bare postgresql://, while digitlab[sweep] installs
    psycopg2."""
    import importlib.util

    scheme, sep, rest = url.partition("://")
    if scheme not in ("postgresql", "postgres"):
        return url
    for module, dialect in (("psycopg", "postgresql+psycopg"), ("psycopg2", "postgresql+psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return f"{dialect}{sep}{rest}"
    raise SweepError("--storage postgresql://... needs a PostgreSQL driver: "
                     "pip install 'digitlab[sweep]' (psycopg2)")


def open_storage(url: str) -> Any:
    import optuna
    from sqlalchemy.exc import DBAPIError

    engine_kwargs = None if url.startswith("sqlite") else {"pool_pre_ping": True}
    last = ""
    # Workers started together may race to create the tables of a new database; the loser
    # of that race succeeds when it tries again.
    for attempt in range(3):
        try:
            # The heartbeat lets any worker mark a crashed worker's running trial as failed.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(driver_url(url), heartbeat_interval=60,
                                                  grace_period=180, engine_kwargs=engine_kwargs)
        except SweepError:
            raise
        except DBAPIError as exc:  # the server answered (or did not): worth another try
            last = first_line(exc)
            time.sleep(0.5 * (attempt + 1))
        except Exception as exc:  # a bad URL, a missing driver: no point trying again
            raise SweepError(f"cannot open storage {redact(url)}: "
                             f"{scrub(first_line(exc), url)}") from None
    raise SweepError(f"cannot open storage {redact(url)}: {scrub(last, url)}")


def _credentials(url: str) -> str:
    """Everything before the last '@' (after '://' where there is one): where a user name
    and password would be, however oddly the URL is written."""
    if "@" not in url:
        return ""
    head = url[: url.rindex("@")]
    return head.partition("://")[2] if "://" in head else head


def redact(url: str) -> str:
    """The storage URL without its password, for messages: SQLAlchemy's own rendering where
    it reads the URL as the user meant it, else everything before the last '@' masked."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        parsed = None
    if parsed is not None and parsed.password is None:
        return url  # nothing to hide (and a SQLite path is shown as written)
    # A second '@' is one SQLAlchemy reads as part of the host: only the fallback hides it.
    if parsed is not None and url.count("@") == 1:
        return parsed.render_as_string(hide_password=True)
    secret = _credentials(url)
    return url.replace(secret, "***", 1) if secret else url


def scrub(text: str, url: str) -> str:
    """A message about the storage without the URL's password, wherever the URL (or its
    user:password part) appears in it."""
    text = text.replace(url, redact(url))
    secret = _credentials(url)
    return text.replace(secret, "***") if ":" in secret else text


def create_study(store: Any, name: str, optuna: Any, prune: bool, seed: int) -> Any:
    try:
        return optuna.create_study(study_name=name, storage=store, direction="maximize",
                                   load_if_exists=True, pruner=make_pruner(prune),
                                   sampler=optuna.samplers.TPESampler(seed=seed))
    except Exception as exc:
        first = str(exc).strip().splitlines()
        raise SweepError(f"cannot open study {name!r}: "
                         f"{first[0] if first else type(exc).__name__}") from None


def check_same_space(study: Any, space: Space, base: TrainConfig) -> None:
    signature = json.dumps({"space": json.loads(space.signature()),
                            "base": _comparable(base)}, sort_keys=True)
    stored = study.user_attrs.get("signature")
    if stored is None:
        study.set_user_attr("signature", signature)
    elif stored != signature:
        raise SweepError(f"study {study.study_name!r} was run with a different space or base "
                         "settings; give a new --study name (or the same settings)")


def _comparable(cfg: TrainConfig) -> dict[str, Any]:
    # The device a worker trains on may differ between machines of one study.
    return {k: v for k, v in cfg.to_dict().items() if k != "device"}
