"""Progress bars that stay readable in logs: frequent on a terminal, every 30 s otherwise."""
from __future__ import annotations

import sys

from tqdm.auto import tqdm


def progress(iterable=None, **kwargs) -> tqdm:
    """``tqdm`` with a refresh interval suited to where stderr goes."""
    interactive = sys.stderr.isatty()
    kwargs.setdefault("mininterval", 0.2 if interactive else 30.0)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)
