"""Configs shipped with the package (the embedded defaults)."""
from importlib.resources import files
from pathlib import Path


def packaged_config(name: str) -> Path:
    """Path of a YAML config shipped inside the package, e.g. ``phantom_eval.yaml``."""
    return Path(str(files(__name__) / name))
