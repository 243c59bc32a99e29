"""Atomic file output: write to a temporary file beside the target, then rename.

An interrupted run (exception, Ctrl-C, kill) never leaves a partial file under the final name,
and an existing file is only replaced once the new one is complete.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from mrisr.errors import InputError


def check_output_path(path: str | os.PathLike, overwrite: bool = False,
                      inputs: tuple = ()) -> Path:
    """Validate an output path before any work is done.

    Refuses to write over any of ``inputs`` (even with ``overwrite``), refuses an existing file
    unless ``overwrite`` and refuses a missing parent folder.
    """
    out = Path(path)
    for item in inputs:
        if item is not None and Path(item).exists() and out.exists() and \
                os.path.samefile(out, item):
            raise InputError(f"{out}: output would overwrite an input file")
        if item is not None and Path(item).resolve() == out.resolve():
            raise InputError(f"{out}: output would overwrite an input file")
    if out.exists() and not overwrite:
        raise InputError(f"{out}: output exists (use --overwrite to replace it)")
    if not out.parent.exists():
        raise InputError(f"{out}: output folder {out.parent} does not exist")
    return out


def _suffixes(path: Path) -> str:
    # Keep compound extensions (".nii.gz") so that writers that dispatch on the name still work.
    return "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``path`` on success.

    The temporary keeps the target's extension so format-sniffing writers (nibabel, numpy,
    matplotlib) behave as for the final name. On failure the temporary is removed.
    """
    final = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part" + _suffixes(final),
                                    dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates the file private (0600); give the result the usual permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
