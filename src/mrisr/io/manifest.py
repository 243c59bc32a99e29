"""Dataset manifests: which subjects exist, which files hold their contrasts, and the split.

A manifest is a CSV (or YAML list) with one row per subject::

    subject,split,target,reference,mask
    sub-01,train,sub-01/t2.nii.gz,sub-01/t1.nii.gz,
    sub-02,test,sub-02/t2.nii.gz,sub-02/t1.nii.gz;sub-02/pd.nii.gz,sub-02/mask.nii.gz

``reference`` may list several files separated by ``;`` (the first is the default reference);
``mask`` is optional. Relative paths are relative to the manifest's folder. Split names are
free-form (``train``, ``val``, ``test`` by convention).

:func:`brats_manifest` builds the same structure from a BraTS-style folder tree (one folder per
patient, files ``<patient>_<contrast>.nii.gz``), split by patient, never by slice.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from mrisr.errors import InputError

COLUMNS = ("subject", "split", "target", "reference", "mask")


@dataclass(frozen=True)
class Subject:
    """One subject: a target contrast, zero or more reference contrasts, an optional mask."""

    subject: str
    split: str
    target: Path
    references: tuple[Path, ...] = ()
    mask: Optional[Path] = None

    @property
    def reference(self) -> Optional[Path]:
        return self.references[0] if self.references else None


@dataclass
class Manifest:
    subjects: list[Subject] = field(default_factory=list)
    source: Optional[Path] = None

    def split(self, name: str) -> list[Subject]:
        """Subjects of one split (``"all"`` returns every subject)."""
        if name == "all":
            return list(self.subjects)
        chosen = [s for s in self.subjects if s.split == name]
        if not chosen:
            known = sorted({s.split for s in self.subjects})
            raise InputError(f"{self.source or 'manifest'}: no subject in split '{name}' "
                             f"(splits: {', '.join(known)})")
        return chosen

    def digest(self) -> str:
        """SHA-256 of the manifest's content (subjects, splits, file names): identifies the data
        a model was trained on, independent of where the data folder lives."""
        rows = [[s.subject, s.split, s.target.name, [r.name for r in s.references],
                 s.mask.name if s.mask else ""] for s in self.subjects]
        return hashlib.sha256(json.dumps(rows).encode()).hexdigest()

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(COLUMNS)
        for s in self.subjects:
            writer.writerow([s.subject, s.split, s.target, ";".join(map(str, s.references)),
                             s.mask or ""])
        return buf.getvalue()


def _subject_from_row(row: dict, base: Path, source: Path, line: int) -> Subject:
    unknown = set(row) - set(COLUMNS)
    if unknown:
        raise InputError(f"{source}: unknown column(s) {', '.join(sorted(map(str, unknown)))} "
                         f"(expected {', '.join(COLUMNS)})")
    for key in ("subject", "target"):
        if not row.get(key):
            raise InputError(f"{source}: entry {line} has no '{key}'")

    def resolve(value: str) -> Path:
        from mrisr.config import expand_vars
        p = Path(os.path.expandvars(expand_vars(str(value))))
        # A path built on ${MRISR_DATA} is relative to the working directory, as that folder is.
        return p if p.is_absolute() or "${" in str(value) else base / p

    refs = row.get("reference") or ""
    refs = refs if isinstance(refs, list) else [r for r in str(refs).split(";") if r.strip()]
    return Subject(subject=str(row["subject"]), split=str(row.get("split") or "all"),
                   target=resolve(row["target"]),
                   references=tuple(resolve(r.strip()) for r in refs),
                   mask=resolve(row["mask"]) if row.get("mask") else None)


def load_manifest(path: str | os.PathLike) -> Manifest:
    """Read a CSV or YAML manifest; see the module docstring for the format."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: manifest not found")
    base = p.parent
    text = p.read_text()
    if p.suffix.lower() in (".yaml", ".yml"):
        try:
            rows = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise InputError(f"{p}: invalid YAML ({str(exc).splitlines()[0]})") from None
        rows = rows.get("subjects") if isinstance(rows, dict) else rows
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise InputError(f"{p}: expected a list of subjects")
    else:
        reader = csv.DictReader(io.StringIO(text))
        if reader.fieldnames is None or "subject" not in reader.fieldnames:
            raise InputError(f"{p}: CSV manifest needs a header row with {', '.join(COLUMNS)}")
        rows = list(reader)
    subjects = [_subject_from_row(r, base, p, i + 1) for i, r in enumerate(rows)]
    names = [s.subject for s in subjects]
    if len(set(names)) != len(names):
        raise InputError(f"{p}: duplicate subject names")
    if not subjects:
        raise InputError(f"{p}: manifest lists no subject")
    return Manifest(subjects=subjects, source=p)


def brats_manifest(root: str | os.PathLike, target: str = "t2",
                   references: tuple[str, ...] = ("t1",), n_test: int = 2,
                   n_val: int = 0) -> Manifest:
    """Manifest of a BraTS-style folder, split by patient in sorted order.

    The first patients go to ``train``, then ``n_val`` to ``val`` and the last ``n_test`` to
    ``test`` (the split suggested for ``brats18-tcia``: 6 train, 2 test).
    """
    r = Path(root)
    if not r.is_dir():
        raise InputError(f"{r}: data folder not found (set MRISR_DATA or the config's root)")
    patients = sorted(d for d in r.iterdir() if d.is_dir())
    if len(patients) <= n_test + n_val:
        raise InputError(f"{r}: {len(patients)} patients, too few for {n_test} test + {n_val} val")
    subjects = []
    for i, d in enumerate(patients):
        split = "test" if i >= len(patients) - n_test else \
            "val" if i >= len(patients) - n_test - n_val else "train"

        def file(contrast: str) -> Path:
            return d / f"{d.name}_{contrast}.nii.gz"
        subjects.append(Subject(subject=d.name, split=split, target=file(target),
                                references=tuple(file(c) for c in references)))
    return Manifest(subjects=subjects, source=r)
