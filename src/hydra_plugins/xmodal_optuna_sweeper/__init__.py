"""Hydra sweeper `xmodal_optuna`: Optuna sweeps (hydra-optuna-sweeper's keys and grammar on a
current Optuna) whose study several workers fill together (`n_trials` in total, liveness from the
runs' leases, a dead worker's trial retried, Optuna's pruners on validation passes)."""
