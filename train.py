"""Entrypoint: `python train.py task=mnist model=gpt2 variant=fpt lr=1e-4 seed=1` (see README)."""

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from xmodal_ft import run  # also registers the run_key resolver used by hydra.sweep.subdir


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    hc = HydraConfig.get()
    group = hc.sweep.dir if hc.mode == RunMode.MULTIRUN else None
    name = hc.job.override_dirname or None
    return run(cfg, hc.runtime.output_dir, hc.runtime.choices, group=group, name=name)


if __name__ == "__main__":
    main()
