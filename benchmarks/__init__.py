"""Benchmarks of xmodal-ft as users run it: against the HF Trainer and the machine's matmul peak,
sweep overheads, lockstep vs sequential sweeps. A tool of the checkout, not of the package.

python -m benchmarks --quick      (from the repository root; see benchmarks/README.md)
"""
