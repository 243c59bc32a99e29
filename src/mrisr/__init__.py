"""mrisr: arbitrary-scale MRI super-resolution with implicit neural representations.

Public entry points are re-exported here; see the sub-packages for the building blocks:
``mrisr.grid`` (coordinates and affines), ``mrisr.io``, ``mrisr.degradation``,
``mrisr.data`` (embedded phantom, datasets), ``mrisr.evaluation`` (metrics, harness).
"""
from mrisr.errors import MrisrError, InputError, ConfigError


def __getattr__(name: str):
    """``__version__``, read from the installed metadata on first use: reading it takes tens
    of milliseconds, which ``mrisr`` spends before it can handle Ctrl-C."""
    if name != "__version__":
        raise AttributeError(f"module 'mrisr' has no attribute '{name}'")
    from importlib.metadata import PackageNotFoundError, version

    try:
        value = version("mrisr")
    except PackageNotFoundError:  # running from a source tree without installation
        value = "0.0.0+source"
    globals()["__version__"] = value
    return value

__all__ = ["__version__", "MrisrError", "InputError", "ConfigError"]
