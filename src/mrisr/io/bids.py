"""BIDS datasets in, BIDS derivatives out: which images of a dataset to upscale, the reference
of each, and the derivative names mrisr writes.

The dataset is read with ancpbids (the ``bids`` extra), which parses names into entities by the
BIDS schema; mrisr only pairs the images it finds and names its outputs. A target
``sub-01/ses-a/anat/sub-01_ses-a_acq-fast_T2w.nii.gz`` becomes
``<output>/sub-01/ses-a/anat/sub-01_ses-a_acq-fast_desc-sr_T2w.nii.gz`` (``desc`` is the last
entity before the suffix in the BIDS order), with the JSON sidecar mrisr writes beside every
output; ``dataset_description.json`` marks the output folder as a derivative dataset.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from mrisr.errors import InputError
from mrisr.io.atomic import write_text_atomic

#: The ``desc`` entity of mrisr's outputs.
DESC = "sr"
#: BIDS version of the derivative dataset's description.
BIDS_VERSION = "1.9.0"
#: Name of the raw dataset in the outputs' ``Sources`` URIs (``bids:raw:sub-01/...``).
RAW_LINK = "raw"
NIFTI_EXTENSIONS = (".nii.gz", ".nii")
#: Files mrisr writes beside the derivatives that BIDS does not define (QC pictures, pages).
BIDS_IGNORE = ("*_qc.png", "qc*.html")


@dataclass(frozen=True)
class BidsJob:
    """One image of a BIDS dataset to upscale: ``target``, its ``reference`` (or ``None``),
    the derivative ``output`` path and ``metadata``, the BIDS fields of its sidecar
    (:func:`derivative_metadata`)."""

    target: Path
    reference: Optional[Path]
    output: Path
    metadata: dict = field(default_factory=dict, compare=False)


def derivative_metadata(source_uri: str, raw_metadata: dict) -> dict:
    """The BIDS fields of a derivative's sidecar, beside mrisr's own: ``Sources`` (the raw
    image's BIDS URI), ``Description``, and ``SkullStripped`` (required for anatomical
    derivatives): the raw sidecar's value, else false, since mrisr removes nothing."""
    return {"Sources": [source_uri],
            "Description": "super-resolved by mrisr (model, scales and grids in this file)",
            "SkullStripped": bool(raw_metadata.get("SkullStripped", False))}


def _layout(root: Path):
    try:
        import ancpbids
    except ImportError:
        raise InputError("--bids needs the ancpbids package: pip install 'mrisr[bids]' (or "
                         "pip install ancpbids)") from None
    if not root.is_dir():
        raise InputError(f"{root}: --bids needs the root folder of a BIDS dataset; drop "
                         "--bids to upscale a file, a folder or a list file")
    if not (root / "dataset_description.json").is_file():
        raise InputError(f"{root}: not a BIDS dataset (no dataset_description.json); point "
                         "to the dataset's root, or drop --bids to upscale a plain folder")
    return ancpbids.BIDSLayout(str(root))


def _images(layout, suffix: str) -> list:
    """The raw dataset's NIfTI images with ``suffix`` (derivatives and sourcedata left out)."""
    return [a for a in layout.get(suffix=suffix, extension=list(NIFTI_EXTENSIONS), scope="raw")
            if not a.get_relative_path().startswith(("derivatives/", "sourcedata/"))]


def _strip_extension(name: str) -> str:
    for ext in NIFTI_EXTENSIONS:
        if name.endswith(ext):
            return name[:-len(ext)]
    return name


def derivative_name(entities: dict, suffix: str, extension: str = ".nii.gz") -> str:
    """``sub-X[_ses-Y]..._desc-sr_<suffix><extension>`` from a source's ordered entities (short
    keys, as in file names: ``sub``, ``ses``, ``acq``, ...); a source ``desc`` is replaced."""
    parts = [f"{key}-{value}" for key, value in entities.items() if key != "desc"]
    return "_".join(parts + [f"desc-{DESC}", suffix]) + extension


def _pick_reference(target, candidates: list) -> Optional[Path]:
    """The reference of ``target``: a candidate of the same subject and session; when there are
    several, the one with the same ``acq`` entity."""
    ent = target.get_entities()
    same = [c for c in candidates
            if c.get_entities().get("sub") == ent.get("sub")
            and c.get_entities().get("ses") == ent.get("ses")]
    if len(same) > 1:
        same = [c for c in same if c.get_entities().get("acq") == ent.get("acq")] or same
    if len(same) > 1:
        names = ", ".join(sorted(c.name for c in same))
        raise InputError(f"{target.get_absolute_path()}: {len(same)} candidate references "
                         f"({names}); give them acq- entities matching the targets', or upscale "
                         "with a list file of 'target reference' lines")
    return Path(same[0].get_absolute_path()) if same else None


def plan_bids_jobs(root: str | os.PathLike, output: str | os.PathLike,
                   suffixes: Sequence[str] = ("T2w",), ref_suffix: Optional[str] = None
                   ) -> list[BidsJob]:
    """The images of the BIDS dataset ``root`` with one of ``suffixes``, each with the image of
    ``ref_suffix`` of its subject and session (``None`` when there is none), and the derivative
    path under ``output``, sorted by target path. Raises :class:`InputError` when ``root`` is
    not a dataset, ancpbids is missing, or no image has the suffixes."""
    root, out = Path(root), Path(output)
    layout = _layout(root)
    suffixes = [s.strip() for s in suffixes if s.strip()]
    if ref_suffix in suffixes:
        raise InputError(f"--ref-suffix {ref_suffix}: also in --suffix; a contrast cannot be "
                         "its own reference (drop it from one of the two)")
    candidates = _images(layout, ref_suffix) if ref_suffix else []
    jobs = []
    for suffix in suffixes:
        for art in _images(layout, suffix):
            rel = Path(art.get_relative_path())
            extension = art.name[len(_strip_extension(art.name)):]
            name = derivative_name(art.get_entities(), suffix, extension)
            metadata = derivative_metadata(f"bids:{RAW_LINK}:{rel.as_posix()}",
                                           art.get_metadata() or {})
            jobs.append(BidsJob(Path(art.get_absolute_path()), _pick_reference(art, candidates),
                                out / rel.parent / name, metadata))
    if not jobs:
        raise InputError(f"{root}: no image with suffix {', '.join(suffixes)} in the BIDS "
                         "dataset; choose others with --suffix (e.g. --suffix T2w,FLAIR)")
    return sorted(jobs, key=lambda j: str(j.target))


def dataset_description(root: str | os.PathLike, output: str | os.PathLike, version: str
                        ) -> dict:
    """The derivative dataset's ``dataset_description.json`` content: ``GeneratedBy`` mrisr
    ``version``, the raw dataset linked as ``raw`` (a path relative to ``output``)."""
    root, out = Path(root).resolve(), Path(output).resolve()
    try:
        raw_name = json.loads((root / "dataset_description.json").read_text()).get("Name")
    except (OSError, ValueError, AttributeError):
        raw_name = None
    return {"Name": f"mrisr super-resolution of {raw_name or root.name}",
            "BIDSVersion": BIDS_VERSION, "DatasetType": "derivative",
            "GeneratedBy": [{"Name": "mrisr", "Version": version,
                             "Description": "arbitrary-scale MRI super-resolution"}],
            "DatasetLinks": {RAW_LINK: os.path.relpath(root, out)}}


def write_derivative_metadata(root: str | os.PathLike, output: str | os.PathLike,
                              version: str) -> None:
    """Write ``dataset_description.json`` and ``.bidsignore`` into ``output`` (created) unless
    they exist: shards of one array job write the same files, whichever comes first."""
    out = Path(output)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{out}: cannot create the output folder ({exc.strerror})") from None
    description = out / "dataset_description.json"
    if not description.exists():
        write_text_atomic(description,
                          json.dumps(dataset_description(root, out, version), indent=2) + "\n")
    ignore = out / ".bidsignore"
    if not ignore.exists():
        write_text_atomic(ignore, "\n".join(BIDS_IGNORE) + "\n")
