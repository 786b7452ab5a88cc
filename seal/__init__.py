"""seal: SEAL (Self-Adapting LLMs) with ReSTEM, from a laptop to a GPU cluster."""

__version__ = "0.1.0"
