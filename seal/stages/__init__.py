"""The stages of a ReSTEM round, one module each, every one reading and writing only the run's store:

    plan.py     choose the round's contexts, cut the work into shards      round-<r>/plan.json
    sample.py   K self-edits per context from the round's policy          round-<r>/edits/<s>.jsonl
    adapt.py    the inner loop (seal.inner) on each candidate self-edit    round-<r>/scores/<a>.jsonl
    improve.py  filter the scores, M-step on the kept edits, summary      round-<r>/kept.jsonl, policy/, summary.json

runs.py holds the store layout and run.json; runtime.py what a process loads once (contexts,
tokenizer, the round's policy); local.py runs every stage in order for `seal run`. The Argo
workflow calls the same functions one shard per pod through `seal plan|sample|adapt|improve`, so
the two cannot drift. A stage is done exactly when its output exists; each output is written
whole, so a rerun after a crash skips finished shards and redoes only what is missing.
"""
