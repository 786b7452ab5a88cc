"""Data shipped with seal (see README.md here for sources and licences)."""
