"""The inner loop: LoRA fits of the current model on self-edits, each scored on held-out probes.

fit.py (`run_fits`, the one entry point), multilora.py (the batched trainer: B adapters per
forward/backward), train.py (the peft trainer, also the M-step's), score.py (probe answers and
grades, one model or many adapters in one call).
"""
