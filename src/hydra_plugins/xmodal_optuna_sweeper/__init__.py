"""Hydra sweeper `xmodal_optuna`: hydra-optuna-sweeper whose study can be shared by several
workers (`n_trials` in total, heartbeats, a dead worker's trial retried)."""
