"""mrisr: arbitrary-scale MRI super-resolution with implicit neural representations.

Public entry points are re-exported here; see the sub-packages for the building blocks:
``mrisr.grid`` (coordinates and affines), ``mrisr.io``, ``mrisr.degradation``,
``mrisr.data`` (embedded phantom, datasets), ``mrisr.evaluation`` (metrics, harness).
"""
from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("mrisr")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+source"

from mrisr.errors import MrisrError, InputError, ConfigError  # noqa: E402

__all__ = ["__version__", "MrisrError", "InputError", "ConfigError"]
