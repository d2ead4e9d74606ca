"""User errors end in one line on stderr that names the fix; bugs keep their traceback.

`UserError` is the one type for mistakes in the command line, the config or the inputs (its
subclasses: recipe.ConfigError, tasks.DataError, hub.ModelLoadError, schemes.SchemeError).
`main(hydra_main)` runs a `@hydra.main` function so that these errors, and Hydra's own
composition errors (unknown group option or key, wrong type), print as one line and exit with
status 1. `HYDRA_FULL_ERROR=1` or the config key `debug=true` shows the full traceback instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

FULL_ERROR = "HYDRA_FULL_ERROR"
EXIT_STATUS = 1
# Lines of Hydra's and OmegaConf's messages that say nothing to a user of the command line.
_NOISE = ("full_key:", "object_type=", "reference_type=", "Config search path", "provider=")


class UserError(Exception):
    """A mistake the user can fix; the message names what was wrong and the fix, on one line."""

    def __str__(self) -> str:
        return one_line(super().__str__())


class LockstepError(UserError, ValueError):
    """A configuration that cannot train in lockstep; the message names the way out."""


DEFAULT_LAUNCHER = "run it with the default launcher (drop hydra/launcher=lockstep)"


def importable(path: str, key: str, error: type[UserError] = UserError) -> Any:
    """What `path` (`module.attribute`, the value of config key `key`, e.g. a `_target_`)
    names; an `error` naming the key when it cannot be imported."""
    from hydra.utils import get_method

    try:
        return get_method(path)
    except Exception as err:  # Hydra's locate error: module or attribute missing
        raise error(f"{key}={path} cannot be imported ({err})") from err


def one_line(message: str) -> str:
    """`message` on one line: blank lines and Hydra's location details dropped, lists joined."""
    parts: list[str] = []
    for raw in message.splitlines():
        line = raw.strip()
        if not line or line.startswith(_NOISE):
            continue
        if raw.startswith("\t") and parts and parts[-1].endswith((":", ",")):  # an option list
            parts[-1] += f" {line},"
        else:
            parts.append(line)
    text = " ".join(parts).rstrip(",")
    return text.replace(":,", ":")


def main(hydra_main: Callable[[], Any]) -> None:
    """Run `hydra_main` (a `@hydra.main` function); user and composition errors exit in one line."""
    global _full
    _full = os.environ.get(FULL_ERROR) == "1"
    os.environ[FULL_ERROR] = "1"  # Hydra then raises its errors here instead of printing them
    try:
        hydra_main()
    except Exception as err:
        if _full or not _is_user_error(err):
            raise
        _exit(err)


_full = False  # the full traceback was asked for: HYDRA_FULL_ERROR=1 or debug=true


@contextmanager
def reported(*, debug: bool, multirun: bool) -> Iterator[None]:
    """Inside a job: a user error of a single run prints one line and exits (Hydra would print a
    line naming the job's overrides first); in a multirun it goes to the launcher, which marks the
    job failed, and `main` prints it. `debug` keeps the traceback."""
    global _full
    _full = _full or debug
    try:
        yield
    except UserError as err:
        if _full or multirun:
            raise
        _exit(err)


def _exit(err: BaseException) -> None:
    text = str(err) if isinstance(err, UserError) else _hydra_message(err)
    sys.stderr.write(f"error: {text}\n")
    sys.stderr.flush()
    raise SystemExit(EXIT_STATUS)


def _is_user_error(err: BaseException) -> bool:
    from hydra.errors import CompactHydraException
    from omegaconf.errors import OmegaConfBaseException

    return isinstance(err, UserError | CompactHydraException | OmegaConfBaseException)


def _hydra_message(err: BaseException) -> str:
    """Hydra's message and its OmegaConf cause (what Hydra itself prints), on one line; for a key
    a schema lacks, the schema's keys instead of Hydra's `+key` hint (the code would ignore it)."""
    import dataclasses

    from omegaconf.errors import OmegaConfBaseException

    text, cause = str(err), err.__cause__
    if isinstance(cause, OmegaConfBaseException) and str(cause) not in text:
        reason = one_line(str(cause))
        schema = getattr(cause, "object_type", None)
        if " not in '" in reason and dataclasses.is_dataclass(schema):
            text = text.split("\n")[0]  # drops "To append to your config use +key=value"
            keys = [f.name for f in dataclasses.fields(schema) if not f.name.startswith("_")]
            reason += f" (its keys: {', '.join(keys)})"
        text = f"{text.rstrip().rstrip('.')}: {reason}"
    return one_line(text)
