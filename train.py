"""Entrypoint: `python train.py task=mnist model=gpt2 variant=fpt lr=1e-4 seed=1` (see README)."""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    from xmodal_ft import run

    hydra_cfg = HydraConfig.get()
    return run(cfg, run_dir=hydra_cfg.runtime.output_dir, choices=hydra_cfg.runtime.choices)


if __name__ == "__main__":
    main()
