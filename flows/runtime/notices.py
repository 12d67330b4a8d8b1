"""Third-party notices a person running ``daug`` need not read, filtered in one place.

The libraries under the flows announce routine steps (open_clip logs how it parsed a model
name for every model it builds; diffusers warns about an empty list of float32 modules in
every Ray actor; Ray that it started): hundreds of lines that bury the progress bars and the
summary. At default verbosity :func:`quiet_notices` drops exactly these records, in the CLI's
process and in every Ray actor (:mod:`flows.runtime.actors` calls it when an actor starts);
``daug -v`` sets :data:`VERBOSE_ENV`, which the actors inherit, and everything is shown. Any
other warning or error is never dropped.

:func:`quiet_loggers` is the other half: a run made of many subflows (the demo) keeps their
per-epoch / per-item narration out of its terminal, again unless ``daug -v``.

The filter sits on the logger each notice is created on (open_clip logs through the root
logger), so it works whatever handlers a process has (the CLI's rich handler, Prefect's, Ray's).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

# Set (to "1") by `daug -v`; Ray actors started by the command inherit it.
VERBOSE_ENV = "DAUG_VERBOSE"
# `extra` of a flow's log record meant for its run's log only: the terminal shows it another
# way (a stage heading is drawn as a rule) and drops it (flows.cli.console).
RUN_LOG_ONLY: dict[str, object] = {"daug_run_log_only": True}


@dataclass(frozen=True)
class Notice:
    """Records of ``logger`` at ``level`` or below whose message matches the regular expression
    ``pattern`` at its start (empty: any message); ``module`` (a path fragment) narrows the
    records of the root logger to one library's."""

    logger: str
    pattern: str = ""
    module: str | None = None
    level: int = logging.INFO

    def matches(self, record: logging.LogRecord) -> bool:
        if record.levelno > self.level:
            return False
        if self.module is not None and self.module not in record.pathname.replace("\\", "/"):
            return False
        return not self.pattern or re.match(self.pattern, record.getMessage()) is not None


NOTICES: tuple[Notice, ...] = (
    # open_clip's factory narrates at INFO how it resolved a model or tokenizer name, at every
    # create_model and get_tokenizer (each ablation run and evaluation builds both).
    Notice("root", module="/open_clip/"),
    # ... and warns that no pretrained weights were loaded: random init is what a config
    # without `pretrained` asks for, and a checkpoint is loaded into the model after it is
    # built (daug_core.contrastive.model).
    Notice("root", "No pretrained weights loaded for model", "/open_clip/", level=logging.WARNING),
    # diffusers, as a UNet loads: the default dtype it builds it in.
    Notice("diffusers.models.modeling_utils", "Instantiating "),
    # ... and, at every `model.to(dtype=...)` (each Ray actor and the quality sweep prepare
    # their models so), that the modules to keep in float32 are: none. diffusers takes a
    # missing list for an empty one and warns regardless; a non-empty list still warns.
    Notice(
        "diffusers.models.modeling_utils",
        r"There are modules in \w+ that should be kept in float32: \[\]\.",
        level=logging.WARNING,
    ),
    # Ray enables token authentication for a new local cluster (the one a flow starts) and
    # warns that it did; the default is what we want (the token in ~/.ray/auth_token).
    Notice(
        "ray._private.authentication.authentication_token_setup",
        "Token authentication is enabled",
        level=logging.WARNING,
    ),
    # ... and says it started one (every precompute subflow starts and stops its own).
    Notice("ray._private.worker", "Started a local Ray instance"),
)


class QuietNotices(logging.Filter):
    """Drops the records of :data:`NOTICES`; every other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(notice.matches(record) for notice in NOTICES)


_FILTER = QuietNotices()


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV) == "1"


def quiet_notices() -> None:
    """Drop :data:`NOTICES` in this process, or show them again when ``daug -v`` asked for
    everything (idempotent: a logger holds the filter once)."""
    for name in dict.fromkeys(n.logger for n in NOTICES):
        logger = logging.getLogger() if name == "root" else logging.getLogger(name)
        if verbose():
            logger.removeFilter(_FILTER)  # an earlier call in this process may have added it
        elif _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


@contextmanager
def quiet_loggers(names: tuple[str, ...]) -> Iterator[None]:
    """Inside the block the loggers ``names`` pass warnings and errors only, unless ``daug -v``
    (their levels are restored after it)."""
    if verbose():
        yield
        return
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
