"""Models: loading.py (any model.base: folder, s3://, hub name, or a model seal builds, through one
table of builders), tiny.py (random tiny models), warmstart.py (the world's warm-started model),
cache.py (where built and copied models live)."""
