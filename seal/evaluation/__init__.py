"""Held-out evaluations that run the inner loop on policies of a finished run: world.py (`seal
world-report`, the paper's table in the synthetic world) and arc.py (`seal eval-arc`)."""
