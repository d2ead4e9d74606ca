"""What a run leaves on disk: its identity (config hash, run-dir name: `identity`), its results
(`results.json`: `results`) and its metrics as it trains (`metrics.jsonl`, W&B: `trackers`)."""
