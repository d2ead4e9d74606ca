"""Every `python train.py` command in the README, docs/ and the config headers composes as
written: its groups, keys and types exist (Hydra's own check, launcher and sweeper keys too),
its values pass the run's checks that need no data or weights, and its task keys are the task
builder's. A multirun's sweep values are checked by their first value. `python -m
xmodal_ft.report` commands parse. Nothing is trained or downloaded."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from conftest import CONF, ROOT
from xmodal_ft import report, schemes, tasks
from xmodal_ft.recipe import checks

SOURCES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
           *sorted((ROOT / "conf").rglob("*.yaml"))]  # fmt: skip
# Commands shown as what fails, or that need files of the reader's own (docs/extending.md).
NOT_RUNNABLE = {
    "lr=abc": "the example of a type error",
    "task=my_task": "a task in the reader's own package",
    "scheme=adamw": "a scheme in the reader's own package",
}


def commands(program: str) -> list[tuple[str, str]]:
    """(where, arguments) of each `<program> ...` in the sources, continuation lines joined,
    cut at a closing backtick, a comment or prose in parentheses; `...` (elided) dropped."""
    found = []
    for path in SOURCES:
        text = path.read_text(encoding="utf-8").replace("\\\n", " ")
        for number, line in enumerate(text.splitlines(), start=1):
            for match in re.finditer(re.escape(program) + r"\s+([^`\n]*)", line):
                args = re.split(r"(?:^|\s)(?:#|\()", match.group(1))[0]
                args = " ".join(a for a in args.split() if a != "...")
                found.append((f"{path.relative_to(ROOT)}:{number}", args))
    return found


TRAIN = list({c[1]: c for c in commands("python train.py")}.values())  # each command once
TRAIN = [c for c in TRAIN if not any(key in c[1] for key in NOT_RUNNABLE)]
REPORT = commands("python -m xmodal_ft.report")


def test_the_docs_show_commands_to_check() -> None:
    assert len(TRAIN) >= 40 and len(REPORT) >= 3
    assert {where.split(":")[0] for where, _ in TRAIN} >= {
        "README.md",
        "docs/sweeps.md",
        "docs/slurm.md",
        "docs/wandb.md",
    }


def first_values(args: list[str]) -> list[str]:
    """The overrides with each sweep (`lr=1e-4,1e-3`, `glob(...)`) replaced by its first value."""
    overrides = OverridesParser.create().parse_overrides(args)
    out = []
    for override, arg in zip(overrides, args, strict=True):
        if override.is_sweep_override():
            value = next(iter(override.sweep_string_iterator()))
            out.append(f"{override.get_key_element()}={value}")
        else:
            out.append(arg)
    return out


@pytest.fixture(scope="module")
def hydra_conf() -> Iterator[None]:
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        yield


@pytest.mark.parametrize("where, line", TRAIN, ids=[where for where, _ in TRAIN])
def test_a_documented_command_composes_and_passes_the_checks(where, line, hydra_conf) -> None:
    args = [a for a in shlex.split(line) if a not in ("-m", "--multirun")]
    if "--cfg" in args:
        args = args[: args.index("--cfg")]
    cfg = compose("config", overrides=first_values(args), return_hydra_config=True)
    checks._validate(cfg)
    scheme = OmegaConf.to_container(cfg.scheme, resolve=True)
    schemes.check(schemes.SchemeConfig(**{k: v for k, v in scheme.items() if k != "_target_"}))
    task = OmegaConf.to_container(cfg.task, resolve=True)
    tasks.check(task, tokenizer=cfg.model.path or "the model's")


@pytest.mark.parametrize("where, line", REPORT, ids=[where for where, _ in REPORT])
def test_a_documented_report_command_parses(where, line, tmp_path, capsys) -> None:
    args = [str(tmp_path / "absent") if "<" in a or "/" in a else a for a in shlex.split(line)]
    args = [a for a in args if a not in ("DIR", "[DIR...]")]
    with pytest.raises(SystemExit):
        report.main(args)
    assert "is not a directory" in capsys.readouterr().err  # the arguments parsed
