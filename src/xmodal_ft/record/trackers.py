"""Where a run's metrics go as it trains: `metrics.jsonl` (local) and W&B, one protocol; the W&B
login checked before anything is built."""

from __future__ import annotations

import hashlib
import json
import netrc
import os
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from xmodal_ft.atomic import atomic_path
from xmodal_ft.errors import UserError

METRICS = "metrics.jsonl"


class Tracker(Protocol):
    """Where a run's metrics go: `log(values, step)` during training, `close()` at the end."""

    def log(self, values: dict[str, float], step: int) -> None: ...

    def summary(self, values: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class LocalTracker:
    """Appends one JSON line per logged step to `<run_dir>/metrics.jsonl`.

    A run resumed from its checkpoint at `start_step` keeps only the lines logged before that
    checkpoint was saved (the rest are logged again), so each step appears once.
    """

    def __init__(self, run_dir: Path, start_step: int = 0):
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / METRICS
        if path.exists():
            kept = [line for line in _lines(path) if _logged_before_checkpoint(line, start_step)]
            with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as file:
                file.writelines(json.dumps(line) + "\n" for line in kept)
        self._file = path.open("a", encoding="utf-8")

    def log(self, values: dict[str, float], step: int) -> None:
        self._file.write(json.dumps({"step": step, **values}) + "\n")
        self._file.flush()

    def summary(self, values: dict[str, Any]) -> None:
        """The local summary is results.json itself, written by `write_results`."""

    def close(self) -> None:
        self._file.close()


def _lines(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of `path`; a line cut short by a kill is left out."""
    lines = []
    for text in path.read_text(encoding="utf-8").splitlines():
        try:
            lines.append(json.loads(text))
        except json.JSONDecodeError:
            continue
    return lines


def _logged_before_checkpoint(line: dict[str, Any], step: int) -> bool:
    """Whether the engine logs `line` before saving the checkpoint of `step`: the steps before
    it, and the training loss that ends at `step` (its validation pass comes after the save)."""
    at_step = line.get("step") == step and not any(key.startswith("val/") for key in line)
    return step > 0 and (line.get("step", step) < step or at_step)


def build_tracker(cfg: dict[str, Any], run_dir: Path, meta: dict[str, Any]) -> Tracker:
    """The tracker of logger option `cfg["name"]`; `meta` carries config, sweep, name, tags and
    the step the run resumes from (`start_step`)."""
    start = meta.get("start_step", 0)
    builders = {
        "local": lambda: LocalTracker(run_dir, start),
        "wandb": lambda: WandbTracker(cfg, meta),
    }
    if cfg["name"] not in builders:
        raise ValueError(f"unknown logger {cfg['name']!r}; choose one of: {', '.join(builders)}")
    return builders[cfg["name"]]()


def check_tracker(cfg: dict[str, Any]) -> None:
    """Fail before anything is built when logger=wandb would need a login that is missing."""
    if cfg.get("name") != "wandb":
        return
    mode = cfg.get("mode") or os.environ.get("WANDB_MODE") or "online"
    if mode in ("offline", "disabled", "dryrun"):
        return
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return
    host = urlsplit(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or ""
    path = Path(os.environ.get("NETRC") or "~/.netrc").expanduser()
    try:
        if netrc.netrc(path).authenticators(host):
            return
    except (OSError, netrc.NetrcParseError):
        pass
    raise UserError(
        f"logger=wandb but W&B has no API key for {host} (no WANDB_API_KEY, nothing in {path}): "
        "run `wandb login` once, or log offline with WANDB_MODE=offline (or logger.mode=offline; "
        "`wandb sync` uploads later), or use logger=local"
    )


class WandbTracker:
    """Weights & Biases run: config, metrics per step, best values as summary; `finish()` on close.

    Also keeps the local metrics.jsonl. The W&B run id derives from the run dir, so a resumed run
    continues its W&B run (`resume="allow"`). `WANDB_MODE=offline` writes an offline run dir.
    """

    def __init__(self, cfg: dict[str, Any], meta: dict[str, Any]):
        import wandb

        run_dir = Path(meta["run_dir"])
        try:
            self._run = wandb.init(
                project=cfg.get("project"),
                entity=cfg.get("entity"),
                group=cfg.get("group") or meta.get("sweep"),
                name=meta.get("name"),
                tags=[*meta.get("tags", []), *(cfg.get("tags") or [])],
                config=meta["config"],
                dir=str(run_dir),
                id=hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:16],
                resume="allow",
                mode=cfg.get("mode"),
                reinit="create_new",  # lockstep: several runs open at once
            )
        except wandb.errors.UsageError as err:  # e.g. a key check_tracker could not see is bad
            raise UserError(
                f"logger=wandb: {err}; run `wandb login`, or set WANDB_MODE=offline"
            ) from err
        self._local = LocalTracker(run_dir, meta.get("start_step", 0))

    def log(self, values: dict[str, float], step: int) -> None:
        self._local.log(values, step)
        self._run.log({k: v for k, v in values.items() if k != "step"}, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        keys = ("best_step", "steps", "metric")
        self._run.log({}, commit=True)  # flush the last row first: it would overwrite the summary
        self._run.summary.update(
            {k: v for k, v in values.items() if k.startswith(("val/", "test/")) or k in keys}
        )

    def close(self) -> None:
        self._local.close()
        self._run.finish()
