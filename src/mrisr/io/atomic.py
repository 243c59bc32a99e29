"""Atomic file output: write to a temporary file beside the target, then rename.

An interrupted run (exception, Ctrl-C, SIGTERM, kill) never leaves a partial file under the
final name, and an existing file is only replaced once the new one is complete (or, with
``replace=False``, never: the rename refuses a file that appeared meanwhile).

Temporary names carry their owner, so that what a killed run leaves behind can be recognised
and removed by the next run into the folder (:func:`sweep_stale`):

* ``.NAME.mrisr-HOST-PID.XXXXXXXX.part[.ext]``: a file being written (:func:`atomic_path`);
* ``.mrisr-HOST-PID-XXXXXXXX/``: a scratch folder (:func:`scratch_prefix`);
* ``.NAME.mrisr-lock``: an output being written, holding ``HOST PID`` (:func:`output_lock`).

``HOST`` is a hash of the host name and ``PID`` the process id.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import socket
import tempfile
import time
import zlib
from pathlib import Path
from typing import Iterator, Optional

from mrisr.errors import InputError

# ``tempfile``'s random part: 8 characters of [a-z0-9_].
_RAND = r"[a-z0-9_]{8}"
_OWNED_FILE = re.compile(rf"^\..+\.mrisr-([0-9a-f]{{8}})-(\d+)\.{_RAND}\.part(\.[^.]+)*$")
_OWNED_DIR = re.compile(rf"^\.mrisr-([0-9a-f]{{8}})-(\d+)-{_RAND}$")
_LOCK = re.compile(r"^\..+\.mrisr-lock$")
# Names of earlier mrisr versions (no owner in the name): reported, never removed.
_LEGACY = re.compile(rf"^(\..+\.{_RAND}\.part(\.[^.]+)*|\.mrisr-{_RAND})$")
# A lock without owner (killed between creating and filling it) is stale after this long.
_EMPTY_LOCK_SECONDS = 60.0


def format_size(n_bytes: float) -> str:
    """``950 B``, ``12.3 kB``, ``4.56 MB``, ``1.2 GB`` (decimal units, 3 significant digits)."""
    value = float(n_bytes)
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(value) < 999.5 or unit == "PB":
            return f"{value:.0f} B" if unit == "B" else f"{value:.3g} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def host_id() -> str:
    """8 hex digits naming this host in temporary names (CRC-32 of the host name)."""
    return f"{zlib.crc32(socket.gethostname().encode()) & 0xFFFFFFFF:08x}"


def temp_tag() -> str:
    """``mrisr-HOST-PID``: the owner part of this process's temporary names."""
    return f"mrisr-{host_id()}-{os.getpid()}"


def scratch_prefix() -> str:
    """Prefix for ``tempfile.TemporaryDirectory`` scratch folders in an output folder."""
    return f".{temp_tag()}-"


def _proc_state(pid: int) -> Optional[tuple[str, Optional[float]]]:
    """(state letter, start time in seconds since the epoch) of a Linux process, or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        start = None
        with open("/proc/stat") as f:
            boot = next((float(line.split()[1]) for line in f if line.startswith("btime ")),
                        None)
        if boot is not None:
            start = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
        return fields[0], start
    except (OSError, ValueError, IndexError):
        return None


def owner_running(host: str, pid: int, since: float) -> Optional[bool]:
    """Whether the process that made a file last modified at ``since`` still runs: ``False``
    when it has ended (or its id now belongs to a process started after the file), ``None``
    when this cannot be told (another host, or a platform without signal 0)."""
    if host != host_id() or os.name == "nt":
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    except OSError:
        return None
    state = _proc_state(pid)
    if state is not None:
        letter, start = state
        if letter in ("Z", "X"):
            return False
        # /proc start times are exact to about a second; a file older than its supposed owner
        # is from an earlier process with a reused id.
        if start is not None and start > since + 2.0:
            return False
    return True


def _read_lock(path: Path) -> Optional[tuple[str, int]]:
    try:
        host, pid = path.read_text().split()
        return host, int(pid)
    except (OSError, ValueError):
        return None


def _lock_running(path: Path, mtime: float) -> Optional[bool]:
    owner = _read_lock(path)
    if owner is None:
        return None if time.time() - mtime < _EMPTY_LOCK_SECONDS else False
    return owner_running(*owner, mtime)


def sweep_stale(folder: str | os.PathLike) -> tuple[list[Path], list[Path]]:
    """Remove what interrupted mrisr runs left in ``folder``: temporary files, scratch folders
    and output locks whose owning process (on this host) has ended.

    Returns ``(removed, unknown)``; ``unknown`` are mrisr temporaries whose owner cannot be
    checked (another host, or the owner-less names of older versions): they are left alone, for
    the caller to report.
    """
    removed: list[Path] = []
    unknown: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed, unknown
    for entry in entries:
        name = entry.name
        if not name.startswith("."):
            continue
        path = Path(entry.path)
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
            is_file = entry.is_file(follow_symlinks=False)
            mtime = entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        match = _OWNED_FILE.match(name) if is_file else _OWNED_DIR.match(name) if is_dir \
            else None
        if match:
            running = owner_running(match.group(1), int(match.group(2)), mtime)
        elif is_file and _LOCK.match(name):
            running = _lock_running(path, mtime)
        elif (is_file or is_dir) and _LEGACY.match(name):
            unknown.append(path)
            continue
        else:
            continue
        if running is None:
            unknown.append(path)
        elif running is False:
            try:
                shutil.rmtree(path) if is_dir else path.unlink()
            except FileNotFoundError:
                pass  # removed meanwhile by another run's sweep
            except OSError:
                unknown.append(path)
                continue
            removed.append(path)
    return removed, unknown


def reserve_space(path: str | os.PathLike) -> None:
    """Allocate the disk blocks of a (sparse) file now: on a full disk this raises
    ``OSError(ENOSPC)`` here, where writing through a memory map of it later would kill the
    process (SIGBUS). A no-op where the filesystem cannot preallocate."""
    if not hasattr(os, "posix_fallocate"):
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS):
            raise
    finally:
        os.close(fd)


def check_writable(folder: str | os.PathLike) -> None:
    """Refuse, before any work, a folder in which no file can be created (permissions, a
    read-only mount, an immutable folder), by creating and removing a temporary file."""
    folder = Path(folder)
    try:
        fd, name = tempfile.mkstemp(prefix=f".probe.{temp_tag()}.", suffix=".part", dir=folder)
    except OSError as exc:
        raise InputError(f"{folder}: cannot write in this folder "
                         f"({exc.strerror or type(exc).__name__})") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(name)


def lock_path(path: str | os.PathLike) -> Path:
    """The lock of an output: ``.NAME.mrisr-lock`` beside it."""
    final = Path(path)
    return final.with_name(f".{final.name}.mrisr-lock")


def _lock_holder(lock: Path, remove_stale: bool = True) -> Optional[str]:
    """``None`` when ``lock`` is gone or stale (a stale one is removed with
    ``remove_stale``); otherwise who holds it, for the message (``" (process N)"``, or ``""``
    when unknown)."""
    try:
        mtime = lock.stat().st_mtime
    except FileNotFoundError:
        return None
    if _lock_running(lock, mtime) is False:
        if remove_stale:
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
        return None
    owner = _read_lock(lock)
    if owner is None:
        return ""
    return f" (process {owner[1]}" + ("" if owner[0] == host_id() else " on another host") + ")"


def _locked(final: Path, lock: Path, holder: str) -> InputError:
    return InputError(f"{final}: another mrisr run{holder} is writing this output; if none is, "
                      f"remove {lock}")


def check_unlocked(path: str | os.PathLike) -> None:
    """Refuse, before any work, an output that another running mrisr is writing."""
    lock = lock_path(path)
    if not lock.exists() or _read_lock(lock) == (host_id(), os.getpid()):
        return  # free, or held by this process (upscale_file checks again under its lock)
    holder = _lock_holder(lock, remove_stale=False)  # a stale one: for the sweep to report
    if holder is not None:
        raise _locked(Path(path), lock, holder)


@contextlib.contextmanager
def output_lock(path: str | os.PathLike) -> Iterator[Path]:
    """Hold ``.NAME.mrisr-lock`` beside ``path`` while it is being written.

    A second mrisr run that wants to write the same output fails at once with a one-line
    error, instead of silently replacing the first run's result. A lock left by a run that was
    killed (its process has ended) is taken over.
    """
    final = Path(path)
    lock = lock_path(final)
    fd = None
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            break
        except FileExistsError:
            holder = _lock_holder(lock)
            if holder is None:
                continue  # released meanwhile, or stale and removed: try again
            raise _locked(final, lock, holder) from None
        except OSError as exc:
            raise InputError(f"{final.parent}: cannot write in this folder "
                             f"({exc.strerror or type(exc).__name__})") from None
    if fd is None:
        raise InputError(f"{final}: cannot lock this output ({lock} keeps reappearing)")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(f"{host_id()} {os.getpid()}\n")
        yield lock
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()


def check_new_files(paths, overwrite: bool = False) -> None:
    """Refuse, before any work, to write files that exist (a report or a demo written into a
    folder that holds one, or the user's own files of those names) unless ``overwrite``."""
    for path in paths:
        path = Path(path)
        if path.is_dir():
            raise InputError(f"{path}: is a folder, but mrisr writes a file of this name there")
        if path.exists() and not overwrite:
            raise InputError(f"{path}: exists (use --overwrite to replace it)")


@contextlib.contextmanager
def output_locks(paths) -> Iterator[list[Path]]:
    """:func:`output_lock` on each of ``paths`` (an output and the files written with it)."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(output_lock(p)) for p in paths]


def check_output_path(path: str | os.PathLike, overwrite: bool = False,
                      inputs: tuple = ()) -> Path:
    """Validate an output path before any work is done.

    Refuses to write over any of ``inputs`` (even with ``overwrite``), refuses an existing file
    unless ``overwrite``, a missing parent folder, one in which nothing can be written and an
    output that another mrisr run is writing (:func:`output_lock`).
    """
    out = Path(path)
    for item in inputs:
        if item is not None and Path(item).exists() and out.exists() and \
                os.path.samefile(out, item):
            raise InputError(f"{out}: output would overwrite an input file")
        if item is not None and Path(item).resolve() == out.resolve():
            raise InputError(f"{out}: output would overwrite an input file")
    if out.is_dir():
        raise InputError(f"{out}: is a folder, expected the name of an output file")
    if out.exists() and not overwrite:
        raise InputError(f"{out}: output exists (use --overwrite to replace it)")
    if not out.parent.exists():
        raise InputError(f"{out}: output folder {out.parent} does not exist")
    check_writable(out.parent)
    check_unlocked(out)
    return out


def _suffixes(path: Path) -> str:
    # Keep compound extensions (".nii.gz") so that writers that dispatch on the name still work,
    # in lower case: they recognise ".nii.gz", not always ".NII.GZ" or ".Nii.Gz".
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _move_no_replace(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` onto ``final`` unless ``final`` exists, atomically (a hard link fails
    if the name is taken; filesystems without hard links get a check and a rename)."""
    try:
        os.link(tmp, final)
    except FileExistsError:
        raise InputError(f"{final}: output appeared while this run was writing it (another "
                         "process wrote it); it was not replaced") from None
    except OSError:
        if final.exists():
            raise InputError(f"{final}: output appeared while this run was writing it "
                             "(another process wrote it); it was not replaced") from None
        os.replace(tmp, final)
        return
    tmp.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``path`` on success.

    The temporary keeps the target's extension so format-sniffing writers (nibabel, numpy,
    matplotlib) behave as for the final name. On failure the temporary is removed.
    ``replace=False``: refuse (:class:`InputError`) rather than replace a file that exists at
    ``path`` when the result is complete.
    """
    with atomic_paths([path], replace=replace) as (tmp,):
        yield tmp


@contextlib.contextmanager
def atomic_paths(paths, replace: bool = True) -> Iterator[list[Path]]:
    """:func:`atomic_path` for files that belong together (an image, its sidecar, its
    b-tables): one temporary per path, all renamed onto their paths once the block succeeds, or
    none. ``replace=False``: when any path exists at that moment (another program wrote it
    meanwhile), the files of this set already renamed are removed again and
    :class:`InputError` is raised, so no file that this run did not create is replaced."""
    finals = [Path(p) for p in paths]
    with contextlib.ExitStack() as stack:
        temps = [stack.enter_context(_temporary(final)) for final in finals]
        yield temps
        # mkstemp creates files private (0600); give the results the usual permissions.
        umask = os.umask(0)
        os.umask(umask)
        for tmp in temps:
            os.chmod(tmp, 0o666 & ~umask)
        placed: list[Path] = []
        try:
            for tmp, final in zip(temps, finals):
                if replace:
                    os.replace(tmp, final)
                else:
                    _move_no_replace(tmp, final)
                placed.append(final)
        except BaseException:
            for final in placed:  # created by this run a moment ago
                with contextlib.suppress(OSError):
                    final.unlink()
            raise


@contextlib.contextmanager
def _temporary(final: Path) -> Iterator[Path]:
    """A temporary file beside ``final``, ``.NAME.mrisr-HOST-PID.XXXXXXXX.part[.ext]``,
    removed when the block ends unless it was renamed by then."""
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.{temp_tag()}.",
                                        suffix=".part" + _suffixes(final), dir=final.parent)
    except OSError as exc:
        raise InputError(f"{final.parent}: cannot write in this folder "
                         f"({exc.strerror or type(exc).__name__})") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_text_atomic(path: str | os.PathLike, text: str, replace: bool = True) -> None:
    """Write a text file atomically (UTF-8); ``replace=False`` as in :func:`atomic_path`."""
    with atomic_path(path, replace=replace) as tmp:
        tmp.write_text(text, encoding="utf-8")
