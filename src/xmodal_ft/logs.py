"""Third-party log lines and warnings that ask nothing of the user, filtered one by one.

`quiet()` (idempotent; `recipe.run` and `recipe.train` call it) drops, by logger and message:
- transformers' weight-loading report when its only rows are UNEXPECTED keys: checkpoint weights
  the model does not use, as MiniLM's pooler under `add_pooling_layer: false`. Reports with
  MISSING, MISMATCH or CONVERSION rows (weights left random) stay, without ANSI codes;
- transformers' "Model config: <x>_token_id must be `None` or an integer within the vocabulary":
  classification never uses special-token ids (the tiny models keep GPT-2's 50256 in a vocab of 99);
- transformers' "Loading weights" progress bar (a local load takes well under a second; download
  bars are huggingface_hub's and stay);
- alembic's "setup plugin" lines (INFO, printed when optuna's database storage is used).
Everything else, warnings included, is shown as its library emits it.
"""

from __future__ import annotations

import logging
import re
from typing import Any

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
LOAD_REPORT = "LOAD REPORT"
HARMLESS_ROWS = {"UNEXPECTED"}  # statuses of a load report that change no loaded weight
TOKEN_ID = re.compile(r"Model config: \w+_token_id must be `None` or an integer within the vocab")
LOADING_BAR = "Loading weights"
EMITTERS = ("transformers.modeling_utils", "transformers.configuration_utils")  # of the above
_installed = False


class TransformersNotices(logging.Filter):
    """Drops transformers' records that ask nothing of the user; strips ANSI codes from the rest."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if TOKEN_ID.match(message):
            return False
        if LOAD_REPORT in message:
            if _report_statuses(message) <= HARMLESS_ROWS:
                return False
            record.msg, record.args = ANSI.sub("", message), ()
        return True


def _report_statuses(report: str) -> set[str]:
    """The Status column of a transformers load report (`Key | Status | ...` table rows)."""
    statuses = set()
    for line in ANSI.sub("", report).splitlines():
        cells = [cell.strip() for cell in line.split("|")]
        if len(cells) >= 2 and cells[1] and cells[1] != "Status" and not cells[1].startswith("-"):
            statuses.add(cells[1])
    return statuses


def quiet() -> None:
    """Install the filters above (once per process)."""
    global _installed
    if _installed:
        return
    _installed = True
    from transformers.utils import logging as hf_logging

    root = hf_logging.get_logger()  # transformers' library logger: its handler prints to stderr
    notices = TransformersNotices()
    root.addFilter(notices)
    for handler in root.handlers:
        handler.addFilter(notices)  # records of its child loggers reach the handler, not the logger
    for name in EMITTERS:  # and at the source, whichever handlers the records reach
        logging.getLogger(name).addFilter(notices)
    set_hook = getattr(hf_logging, "set_tqdm_hook", None)  # transformers >= 5
    if set_hook is not None:
        previous = set_hook(None)

        def no_loading_bar(factory: Any, args: tuple, kwargs: dict) -> Any:
            if kwargs.get("desc") == LOADING_BAR:
                kwargs = {**kwargs, "disable": True}
            return previous(factory, args, kwargs) if previous else factory(*args, **kwargs)

        set_hook(no_loading_bar)
    logging.getLogger("alembic").setLevel(logging.WARNING)
