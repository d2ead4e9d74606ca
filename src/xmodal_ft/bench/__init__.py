"""Benchmarks: xmodal-ft's engine against the HF Trainer and the machine's matmul peak.

python -m xmodal_ft.bench --quick      (about 10 minutes on 2 CPU cores; see benchmarks/README.md)
"""
