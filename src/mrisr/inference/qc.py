"""Quality-control pictures of an upscaling and the page that lists a batch's.

:func:`capture_planes` cuts three orthogonal planes of the output grid through the centre of the
input's foreground: the input (nearest neighbour, so its true resolution shows), cubic
interpolation, the output and the reference as placed on the output grid. Only the planes are
interpolated, so a picture of a 960x960x155 output costs three planes' work, not a volume's.
:func:`write_qc_png` draws them (the first three on one intensity window, the reference on its
own) under a title line; :func:`write_batch_report` writes the HTML page of a batch.
"""
from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from mrisr.grid import voxel_sizes
from mrisr.io.atomic import atomic_path, write_text_atomic
from mrisr.inference.result import QC_SUFFIX
from mrisr.io.nifti import Volume, companion_path
from mrisr.resample import resample_to_grid

#: Anatomical name of a plane normal to the world (scanner RAS) axis x, y or z.
PLANE_NAMES = ("sagittal", "coronal", "axial")
#: Percentiles of the output's planes that set the shared intensity window.
WINDOW_PERCENTILES = (0.5, 99.5)


def qc_path(out_path: str | os.PathLike) -> Path:
    """``<output>_qc.png`` beside the output (``t2_sr.nii.gz`` -> ``t2_sr_qc.png``, whatever
    the case of the extension)."""
    return companion_path(out_path, QC_SUFFIX)


@dataclass
class QcPlanes:
    """The planes of one picture: ``panels`` maps a column title to three 2D arrays (the
    planes normal to voxel axes 0, 1, 2 of the output grid, each indexed by the two remaining
    axes in order); ``voxel_size`` is the output grid's (mm), ``centre`` the plane indices."""

    panels: dict[str, list[np.ndarray]]
    voxel_size: tuple[float, float, float]
    centre: tuple[int, int, int]
    #: columns drawn on the shared window (the others get their own)
    shared_window: list[str] = field(default_factory=list)
    #: anatomical names of the planes normal to voxel axes 0, 1, 2
    plane_names: tuple[str, str, str] = ("", "", "")


def plane_names(affine: np.ndarray) -> tuple[str, str, str]:
    """The anatomical name of the plane normal to each voxel axis: the world axis the voxel
    axis runs closest to (an oblique grid is named after its nearest plane)."""
    directions = np.abs(np.asarray(affine, dtype=np.float64)[:3, :3])
    return tuple(PLANE_NAMES[int(np.argmax(directions[:, a]))] for a in range(3))


def foreground_centre(data: np.ndarray, affine: np.ndarray, out_affine: np.ndarray,
                      out_shape: Sequence[int]) -> tuple[int, int, int]:
    """Output-grid voxel nearest the centre of mass of ``data``'s foreground (voxels above a
    tenth of its 99th percentile; the whole grid when that is empty), clipped to the grid."""
    from scipy import ndimage

    magnitude = np.abs(np.asarray(data, dtype=np.float32))
    peak = float(np.percentile(magnitude, 99)) if magnitude.size else 0.0
    foreground = magnitude > 0.1 * peak if peak > 0 else np.ones(magnitude.shape, bool)
    centre = np.append(ndimage.center_of_mass(foreground), 1.0)
    world = np.asarray(affine, np.float64) @ centre
    index = np.linalg.solve(np.asarray(out_affine, np.float64), world)[:3]
    return tuple(int(np.clip(round(float(i)), 0, n - 1)) for i, n in zip(index, out_shape))


def _plane_grid(out_affine: np.ndarray, out_shape: Sequence[int], axis: int, index: int
                ) -> tuple[np.ndarray, tuple[int, ...]]:
    """The affine and shape of plane ``index`` along ``axis`` of the output grid, as a grid of
    its own (one voxel thick), so that :func:`resample_to_grid` fills only that plane."""
    affine = np.array(out_affine, dtype=np.float64)
    affine[:3, 3] += affine[:3, axis] * index
    shape = list(out_shape[:3])
    shape[axis] = 1
    return affine, tuple(shape)


def _resampled_planes(data: np.ndarray, affine: np.ndarray, out_affine: np.ndarray,
                      out_shape: Sequence[int], centre: Sequence[int], order: int,
                      name: str) -> list[np.ndarray]:
    planes = []
    for axis in range(3):
        plane_affine, plane_shape = _plane_grid(out_affine, out_shape, axis, centre[axis])
        values, _ = resample_to_grid(data, affine, plane_affine, plane_shape, order=order,
                                     name=name)
        planes.append(np.take(values, 0, axis=axis))
    return planes


def _cut(volume: np.ndarray, centre: Sequence[int]) -> list[np.ndarray]:
    return [np.asarray(np.take(volume, c, axis=a), dtype=np.float32)
            for a, c in enumerate(centre)]


def capture_planes(target: Volume, output: np.ndarray, out_affine: np.ndarray,
                   reference: Optional[Volume] = None,
                   reference_on_grid: Optional[np.ndarray] = None) -> QcPlanes:
    """The planes of a QC picture of one 3D upscaling.

    target: the input (3D data, its affine). output: the upscaled volume ``(X, Y, Z)`` on
    ``out_affine``. reference: drawn as resampled through its (registered) affine, or
    ``reference_on_grid``: already on the output grid (a 3D model's placed T1w).
    """
    out_shape = output.shape[:3]
    centre = foreground_centre(target.data, target.affine, out_affine, out_shape)
    name = str(target.path)
    panels = {
        "input (nearest)": _resampled_planes(target.data, target.affine, out_affine, out_shape,
                                             centre, 0, name),
        "cubic": _resampled_planes(target.data, target.affine, out_affine, out_shape, centre,
                                   3, name),
        "mrisr": _cut(output, centre),
    }
    shared = list(panels)
    if reference_on_grid is not None and np.any(reference_on_grid):
        panels["reference"] = _cut(reference_on_grid, centre)
    elif reference is not None:
        panels["reference"] = _resampled_planes(reference.data, reference.affine, out_affine,
                                                out_shape, centre, 3, str(reference.path))
    return QcPlanes(panels, tuple(float(z) for z in voxel_sizes(out_affine)), centre, shared,
                    plane_names(out_affine))


def _window(planes: Sequence[np.ndarray]) -> tuple[float, float]:
    values = np.concatenate([p.ravel() for p in planes])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(values, WINDOW_PERCENTILES))
    return lo, hi if hi > lo else lo + 1.0


def qc_title(name: str, info: dict, seconds: Optional[float] = None) -> str:
    """The title line of a picture: file, model, scales, precision and time."""
    scales = "x".join(f"{s:.3g}" for s in info.get("scale", []))
    precision = info.get("precision") or "fp32"
    took = seconds if seconds is not None else info.get("seconds")
    parts = [name, f"model {info.get('model', '?')}", f"scale {scales}", precision]
    if took is not None:
        parts.append(f"{float(took):.1f} s")
    return "  |  ".join(parts)


def write_qc_png(path: str | os.PathLike, planes: QcPlanes, title: str) -> Path:
    """Draw ``planes`` (rows: the three planes; columns: the panels) under ``title`` into the
    PNG ``path``, atomically. Pixels keep the output grid's aspect (its voxel sizes)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = list(planes.panels)
    shared = _window([p for c in planes.shared_window for p in planes.panels[c]])
    # Each row as tall as its plane's extent in mm (vertical / horizontal, within limits), so
    # that thin slabs do not leave large blank rows.
    first_plane = planes.panels[columns[0]]
    heights = []
    for axis in range(3):
        first, second = (a for a in range(3) if a != axis)
        rows, cols = first_plane[axis].shape
        extent = (cols * planes.voxel_size[second]) / (rows * planes.voxel_size[first])
        heights.append(float(np.clip(extent, 0.25, 4.0)))
    width = 2.6
    fig, axes = plt.subplots(3, len(columns), squeeze=False,
                             figsize=(width * len(columns), width * sum(heights) + 0.6),
                             gridspec_kw={"height_ratios": heights})
    for j, column in enumerate(columns):
        lo, hi = shared if column in planes.shared_window else _window(planes.panels[column])
        for axis in range(3):
            ax = axes[axis, j]
            first, second = (a for a in range(3) if a != axis)
            # Rows of the image run along the second remaining axis, upwards: for RAS-like
            # grids the axial plane has anterior up, the other two superior up.
            image = planes.panels[column][axis].T
            ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, origin="lower",
                      aspect=planes.voxel_size[second] / planes.voxel_size[first],
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if axis == 0:
                ax.set_title(column, fontsize=9)
            if j == 0:
                ax.set_ylabel(f"{planes.plane_names[axis]}\naxis {axis} = {planes.centre[axis]}",
                              fontsize=8)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    out = Path(path)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return out


def sidecar_summary(info: dict) -> list[tuple[str, str]]:
    """The lines of a sidecar a reader of the batch page wants: what ran and on what grid."""
    def fmt(values) -> str:
        return " x ".join(f"{float(v):.3g}" for v in values)
    rows = [("model", str(info.get("model", "?")))]
    if "scale" in info:
        rows.append(("scale", fmt(info["scale"])))
    if "output_shape" in info:
        rows.append(("output", f"{fmt(info['output_shape'])} voxels of "
                               f"{fmt(info.get('output_voxel_size', []))} mm"))
    reference = info.get("reference")
    if isinstance(reference, dict):
        registration = reference.get("registration") or {}
        rows.append(("reference", f"{Path(str(reference.get('path', '?'))).name}"
                     + (f", registration {'applied' if registration.get('applied') else 'not applied'}"
                        if registration else "")))
    consistency = info.get("consistency")
    if isinstance(consistency, dict):
        rows.append(("projection", str(consistency.get("model"))))
    gain = info.get("detail_gain")
    if isinstance(gain, dict) and "gain" in gain:
        rows.append(("detail gain", f"{float(gain['gain']):.3g}"))
    adapt = info.get("adapt")
    if isinstance(adapt, dict) and adapt.get("steps"):
        rows.append(("adaptation", f"{adapt['steps']} steps"))
    if "precision" in info:
        rows.append(("precision", str(info["precision"])))
    if "seconds" in info:
        rows.append(("seconds", f"{float(info['seconds']):.1f}"))
    return rows


@dataclass
class ReportEntry:
    """One output on the batch page: its path, QC picture (or ``None``), sidecar content and
    whether this run wrote it or found it (``skipped``)."""

    output: Path
    picture: Optional[Path]
    info: dict
    skipped: bool = False


_STYLE = """body{font-family:sans-serif;margin:1.5em;color:#222}
h1{font-size:1.3em}table.meta td{padding:0 1em 0 0;font-size:.9em;vertical-align:top}
.entry{border-top:1px solid #ccc;padding:.8em 0}.entry img{max-width:100%;height:auto}
.failed{color:#a00}.note{color:#666;font-size:.9em}"""


def write_batch_report(path: str | os.PathLike, entries: Sequence[ReportEntry],
                       failed: Sequence[tuple[Path, str]] = (), title: str = "mrisr batch"
                       ) -> Path:
    """A self-contained HTML page (pictures linked by relative paths) that lists every output
    of a batch with its QC picture and sidecar summary, then the inputs that failed."""
    out = Path(path)
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             f"<p>{len(entries)} output(s), {len(failed)} failed.</p>"]
    for entry in entries:
        name = os.path.relpath(entry.output, out.parent)
        parts.append(f"<div class=\"entry\" id=\"{html.escape(name)}\">"
                     f"<h2>{html.escape(name)}</h2>")
        if entry.skipped:
            parts.append("<p class=\"note\">written by an earlier run (skipped)</p>")
        rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>"
                       for k, v in sidecar_summary(entry.info))
        parts.append(f"<table class=\"meta\">{rows}</table>")
        if entry.picture is not None and entry.picture.exists():
            src = os.path.relpath(entry.picture, out.parent)
            parts.append(f"<img src=\"{html.escape(src)}\" alt=\"QC of {html.escape(name)}\">")
        else:
            parts.append("<p class=\"note\">no QC picture</p>")
        parts.append("</div>")
    if failed:
        parts.append("<h2 class=\"failed\">Failed</h2><ul>")
        parts.extend(f"<li class=\"failed\">{html.escape(str(target))}: "
                     f"{html.escape(reason)}</li>" for target, reason in failed)
        parts.append("</ul>")
    parts.append("</body></html>\n")
    write_text_atomic(out, "\n".join(parts))
    return out
