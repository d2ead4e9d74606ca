"""Entrypoint: `python train.py task=mnist model=gpt2 variant=fpt lr=1e-4 seed=1` (see README)."""

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from xmodal_ft import errors, logs, run  # importing xmodal_ft registers conf/'s schemas (config.py)


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    with errors.reported(debug=cfg.debug, multirun=multirun):
        sweep, name = (hc.sweep.dir if multirun else None), hc.job.override_dirname or None
        return run(cfg, hc.runtime.output_dir, hc.runtime.choices, sweep=sweep, name=name)


if __name__ == "__main__":
    logs.quiet()  # before Hydra imports a sweeper (optuna): third-party notices that ask nothing
    errors.main(main)  # user errors (and Hydra's) end in one line; HYDRA_FULL_ERROR=1: traceback
