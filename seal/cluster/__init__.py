"""Running on a cluster: workflow.py (workflows/restem.yaml: load, check, fill, size), submit.py
(`seal submit`, `seal finish`, `seal plan --dry-run`, the fan-out lists), status.py (`seal status`)."""
