"""Hydra launcher `lockstep`: a multirun's runs that differ only in lr and seed train together."""
