"""Where a study lives: `hydra.sweeper.storage` is null (in memory, this process), a database URL
(`sqlite:////shared/study.db`, `postgresql://user:pass@host/db`, ...) or the path of a journal
file (`/shared/disk/study.log`: Optuna's append-only `JournalFileBackend`, whose symlink lock
works on NFS; no database server needed). Anything with `://` is a URL; anything else a path."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import StorageInternalError
from optuna.storages import BaseStorage, InMemoryStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from sqlalchemy.exc import SQLAlchemyError

from xmodal_ft.errors import UserError

RDB_SCHEMES = ("sqlite", "postgresql", "mysql", "oracle", "mssql")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:(?!\\)")  # `sqlite:x`; not a Windows `C:\` path


def check(url: str | None) -> None:
    """Refuse a storage that is neither a known database URL nor a plausible journal path."""
    if url is None:
        return
    if "://" in url:
        if not url.startswith(RDB_SCHEMES):
            raise UserError(
                f"hydra.sweeper.storage={url}: a database URL (sqlite:////path/study.db,"
                " postgresql://user:pass@host/db, mysql://...), a journal file path"
                " (/shared/disk/study.log), or null"
            )
    elif _SCHEME.match(url):
        raise UserError(
            f"hydra.sweeper.storage={url}: a URL needs `://` (sqlite:////path/study.db);"
            " a journal file is a plain path (/shared/disk/study.log)"
        )


def open_storage(url: str | None) -> BaseStorage:
    """The storage `url` names (see the module docstring); SQLite writers wait up to 60 s for
    the file's lock."""
    check(url)
    if url is None:
        return InMemoryStorage()
    if "://" not in url:
        path = Path(url).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    return RDBStorage(url, engine_kwargs=engine_kwargs)


def describe(url: str | None) -> str:
    """`url` without a password, for the log."""
    if url is None:
        return "memory"
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def open_study(
    url: str | None, attempts: int = 5, **study: Any
) -> tuple[optuna.Study, BaseStorage]:
    """Create or load the study `study["study_name"]`, and its storage. Workers that open a new
    database at once race to create its tables (an error for all but one): each tries again."""
    for attempt in range(attempts):
        try:
            storage = open_storage(url)
            return optuna.create_study(storage=storage, load_if_exists=True, **study), storage
        except (SQLAlchemyError, StorageInternalError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")
