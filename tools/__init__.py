"""Repository tools (not part of the installed odekern package): run from the repository root,
e.g. ``python -m tools.gpucheck``."""
