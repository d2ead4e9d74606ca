"""A study that several workers share through an RDB storage: opening it, heartbeats for the
trials a worker holds, and retrying the trials of workers that died.

Optuna 2.10's `fail_stale_trials` + `RetryFailedTrialCallback` are not used as they are: on SQLite
their RUNNING → FAIL step reads then writes (SQLite has no SELECT ... FOR UPDATE), so two workers
can both fail one stale trial and both enqueue a retry, and popping a WAITING retry (`Study.ask`)
has the same race: one trial run twice. They also compare `timedelta.seconds`, which wraps at a day
and reads a heartbeat a second in the future (clock skew between hosts on one SQLite file) as
86399 s old. Here a stale trial is failed by one conditional UPDATE (atomic in every database) and
only the worker whose UPDATE changed the row creates the retry, RUNNING and held by that worker.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from datetime import datetime, timedelta
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning, StorageInternalError
from optuna.storages import RDBStorage
from optuna.trial import TrialState
from sqlalchemy import DateTime, Integer, bindparam, func, select, text
from sqlalchemy.exc import SQLAlchemyError

from . import _budget

log = logging.getLogger(__name__)

# Optuna's RDB schema (the same from v2.0 to v4): a study's RUNNING trials and their heartbeats.
_RUNNING = text(
    "SELECT t.trial_id, t.datetime_start, h.heartbeat FROM trials t"
    " LEFT JOIN trial_heartbeats h ON h.trial_id = t.trial_id"
    " WHERE t.study_id = :study AND t.state = 'RUNNING'"
).columns(trial_id=Integer, datetime_start=DateTime, heartbeat=DateTime)
_FAIL = text(
    "UPDATE trials SET state = 'FAIL', datetime_complete = :now"
    " WHERE trial_id = :trial AND state = 'RUNNING'"
).bindparams(bindparam("now", type_=DateTime))
_DB_ERRORS = (SQLAlchemyError, StorageInternalError)


def open_study(
    url: str, *, heartbeat_interval: int, grace_period: int, attempts: int = 5, **study: Any
) -> tuple[optuna.Study, RDBStorage]:
    """Create or load the study `study["study_name"]` in the database at `url` (SQLite writers
    wait up to 60 s for a lock). Workers that open a new database at once race to create its
    tables (an IntegrityError for all but one): each tries again."""
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    for attempt in range(attempts):
        try:
            storage = RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
            )
            return optuna.create_study(storage=storage, load_if_exists=True, **study), storage
        except _DB_ERRORS:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


class SharedStudy:
    """This worker's side of a shared study: the trials it holds (each with a heartbeat every
    `heartbeat_interval` s, from a thread) and the stale trials of others it fails and retries."""

    def __init__(
        self,
        study: optuna.Study,
        storage: RDBStorage,
        *,
        heartbeat_interval: int,
        grace_period: int,
        max_retry: int | None,
    ) -> None:
        self.study, self.storage = study, storage
        self.study_id = storage.get_study_id_from_name(study.study_name)
        self.heartbeat_interval, self.grace_period = heartbeat_interval, grace_period
        self.max_retry = max_retry
        self.held: set[int] = set()  # trial ids
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="optuna-heartbeat", daemon=True)

    def __enter__(self) -> SharedStudy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def trial_id(self, number: int) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)

    def hold(self, trial_id: int) -> None:
        """Beat for `trial_id` now and until `release`."""
        self._record(trial_id)
        with self._lock:
            self.held.add(trial_id)

    def release(self, trial_id: int) -> None:
        with self._lock:
            self.held.discard(trial_id)

    def others_running(self) -> bool:
        """Whether trials not held here are RUNNING (other workers', alive or not yet stale)."""
        with self.storage.engine.connect() as conn:
            rows = conn.execute(_RUNNING, {"study": self.study_id}).all()
        return any(row.trial_id not in self.held for row in rows)

    def retry_stale(self) -> list[int]:
        """Fail the stale trials of other workers and create their retries (same parameters,
        RUNNING, held here): the ids of the trials to run."""
        return [retry for trial_id in self._stale() if (retry := self._retry(trial_id))]

    def _retry(self, trial_id: int) -> int | None:
        """Fail RUNNING trial `trial_id` and create its retry, unless another worker failed it
        first (or it has just finished) or it was retried `max_retry` times."""
        with self.storage.engine.begin() as conn:
            if conn.execute(_FAIL, {"trial": trial_id, "now": datetime.now()}).rowcount != 1:
                return None
        failed = self.storage.get_trial(trial_id)
        first = failed.system_attrs.get(_budget.RETRY_OF, failed.number)
        tried = _budget.retries(self.study.get_trials(deepcopy=False), first)
        if self.max_retry is not None and tried >= self.max_retry:
            log.warning(f"trial {failed.number}: worker lost, retried {tried} times: not again")
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)  # create_trial, stable since 2.0
            retry = optuna.trial.create_trial(
                state=TrialState.RUNNING,
                params=failed.params,
                distributions=failed.distributions,
                user_attrs=failed.user_attrs,
                system_attrs={**failed.system_attrs, _budget.RETRY_OF: first},
            )
        retry_id = self.storage.create_new_trial(self.study_id, template_trial=retry)
        self.hold(retry_id)
        log.warning(
            f"trial {failed.number}: no heartbeat for {self.grace_period} s (its worker died):"
            f" failed, retried as trial {self.storage.get_trial_number_from_id(retry_id)}"
            f" with the same parameters {failed.params}"
        )
        return retry_id

    def _stale(self) -> list[int]:
        """RUNNING trials not held here whose last heartbeat (or, with none, whose start) is more
        than `grace_period` s old. Heartbeats are in the database's clock, starts in Python's
        local time, as Optuna writes them; a heartbeat ahead of the clock (skew) is not stale."""
        with self.storage.engine.connect() as conn:
            db_now = conn.execute(select(func.now())).scalar().replace(tzinfo=None)
            rows = conn.execute(_RUNNING, {"study": self.study_id}).all()
        now, grace = datetime.now(), timedelta(seconds=self.grace_period)
        return [
            row.trial_id
            for row in rows
            if row.trial_id not in self.held
            and (db_now - row.heartbeat if row.heartbeat else now - row.datetime_start) > grace
        ]

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_interval):
            with self._lock:
                held = list(self.held)
            for trial_id in held:
                self._record(trial_id)

    def _record(self, trial_id: int) -> None:
        try:
            self.storage.record_heartbeat(trial_id)
        except _DB_ERRORS as err:  # the next beat tries again; only `grace_period` of them matters
            log.warning(f"heartbeat of trial id {trial_id} not recorded: {err}")
