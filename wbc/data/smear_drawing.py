"""Drawing of the synthetic blood smear: slide stains, white-cell geometry, red cells, colour.

Why a module of its own: wbc.data.synthetic is the dataset (spec, labels, files, CLI); this is the
image model behind it. Class identity lives only in morphology (cell/nucleus size and shape,
chromatin grain, nucleoli, granules); the stain is drawn per slide and shared by every class.
Colour follows Beer-Lambert: each layer adds optical density, so stains mix and overlaps darken.
Every function takes the caller's RNG and draws from it in a fixed order, so a given seed always
yields the same image.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

CLASS_NAMES: tuple[str, ...] = ("lymphoblast", "neutrophil", "promyelocyte")

# Optical densities per RGB channel (Beer-Lambert): stains mix and overlapping cells darken.
_NUC_OD_BLUE = np.array([0.95, 1.15, 0.32])  # azure-leaning violet
_NUC_OD_MAGENTA = np.array([0.68, 1.25, 0.48])  # eosin-leaning purple
_GRANULE_OD = np.array([0.65, 1.30, 0.50])  # azurophilic granules: dark red-purple
_EOSIN_OD = np.array([0.07, 0.50, 0.36])  # red cells
_CYTO_OD = {  # lymphoblast pale blue, neutrophil pale pink/lilac, promyelocyte blue-lilac
    "lymphoblast": np.array([0.45, 0.22, 0.06]),
    "neutrophil": np.array([0.10, 0.22, 0.10]),
    "promyelocyte": np.array([0.24, 0.17, 0.06]),
}
# (nucleus density, chromatin contrast, texture "fine"/"coarse") per class
_CHROMATIN = {"lymphoblast": (0.95, 0.12, "fine"), "neutrophil": (1.10, 0.35, "coarse"), "promyelocyte": (0.95, 0.20, "fine")}


def make_slide_stain(seed: int, slide: int) -> dict:
    """Stain of one slide: hue/intensity shared by all classes, so colour does not give the class away."""
    rng = np.random.default_rng([seed, 2, slide])
    t = rng.uniform(0.0, 1.0)
    return {
        "nucleus_od": ((1 - t) * _NUC_OD_BLUE + t * _NUC_OD_MAGENTA).tolist(),
        "nucleus_intensity": float(rng.uniform(0.7, 1.25)),
        "eosin_intensity": float(rng.uniform(0.7, 1.2)),
        "cyto_intensity": float(rng.uniform(0.75, 1.25)),
        "background": (np.array([0.95, 0.92, 0.89]) + rng.uniform(-0.03, 0.03, 3)).tolist(),
    }


# ----------------------------------------------------------------------------- white-cell geometry
@dataclass
class Cell:
    """One white cell: outline, nucleus parts and nucleoli relative to its centre, set when placed."""

    cls: str
    radius: float
    cell_poly: np.ndarray  # (N, 2) x, y relative to the cell centre
    nuc_polys: list[np.ndarray]  # union = nucleus, relative to the cell centre
    nucleoli: np.ndarray  # (m, 3) x, y, r relative to the cell centre
    centre: np.ndarray = field(default_factory=lambda: np.zeros(2))


def _blob(rng: np.random.Generator, rx: float, ry: float, angle: float, wobble: float = 0.03, n: int = 40) -> np.ndarray:
    """Ellipse polygon with smooth low-order radial wobble (irregular but never spiky)."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    harm = np.arange(2, 5)[:, None]
    rad = 1 + (rng.normal(0, wobble, (3, 1)) * np.cos(harm * t + rng.uniform(0, 2 * np.pi, (3, 1)))).sum(0)
    pts = np.stack([rx * rad * np.cos(t), ry * rad * np.sin(t)], 1)
    c, s = np.cos(angle), np.sin(angle)
    return pts @ np.array([[c, s], [-s, c]])


def _bridge(p: np.ndarray, q: np.ndarray, width: float) -> np.ndarray:
    """Rectangle of the given width joining two lobe centres."""
    d = (q - p) / max(float(np.linalg.norm(q - p)), 1e-6)
    nrm = np.array([-d[1], d[0]]) * width / 2
    return np.stack([p + nrm, q + nrm, q - nrm, p - nrm])


def _nucleoli(rng: np.random.Generator, centre: np.ndarray, rn: float, s: float, m: int) -> np.ndarray:
    ang, rad = rng.uniform(0, 2 * np.pi, m), rn * 0.5 * np.sqrt(rng.uniform(0, 1, m))
    return np.stack([centre[0] + rad * np.cos(ang), centre[1] + rad * np.sin(ang), rng.uniform(2.0, 4.0, m) * s], 1)


def _neutrophil_nucleus(rng: np.random.Generator, radius: float, s: float, k: float) -> list[np.ndarray]:
    """2-5 lobes in a compact C/S chain; bridges >= 7 px (at 256 px) survive a 5x5 opening."""
    n = int(rng.integers(2, 6))
    r = min(rng.uniform(7, 11) * s, radius * (0.42 if n <= 3 else 0.36))
    turns = np.deg2rad(rng.uniform(35, 65, max(n - 2, 0))) * rng.choice([-1.0, 1.0])
    if n >= 4 and rng.random() < 0.4:
        turns[(n - 2) // 2 :] *= -1  # S instead of C
    heads = rng.uniform(0, 2 * np.pi) + np.concatenate([[0.0], np.cumsum(turns)])
    step = r * rng.uniform(1.8, 2.4)
    pts = np.vstack([[0.0, 0.0], np.cumsum(step * np.stack([np.cos(heads), np.sin(heads)], 1), 0)])
    pts -= pts.mean(0)
    reach, limit = float(np.linalg.norm(pts, axis=1).max()), 0.9 * radius - r
    if reach > limit:  # compress the chain so it stays inside the cell
        pts *= max(limit, 0.0) / reach
    pts += rng.normal(0, 1.0 * s, 2)
    lobes = [_blob(rng, r * rng.uniform(0.95, 1.1), r * rng.uniform(0.8, 1.0), rng.uniform(0, np.pi), 0.04) + p for p in pts]
    width = max(7.0 * k, rng.uniform(0.65, 0.85) * r)
    return lobes + [_bridge(pts[i], pts[i + 1], width) for i in range(n - 1)]


def _build_cell(rng: np.random.Generator, cls: str, s: float, k: float, ecc_angle: float) -> Cell:
    """Class morphology at scale s (px per 256-px unit); the nucleus is pushed towards ecc_angle."""
    u = np.array([np.cos(ecc_angle), np.sin(ecc_angle)])
    nucleoli = np.zeros((0, 3))
    angle = rng.uniform(0, np.pi)
    if cls == "neutrophil":
        radius = rng.uniform(22, 30) * s
        nuc = _neutrophil_nucleus(rng, radius, s, k)
        cell = _blob(rng, radius, radius * rng.uniform(0.9, 1.0), angle)
    elif cls == "promyelocyte":  # large cell, big eccentric oval nucleus
        radius = rng.uniform(33, 41) * s
        rn, asp = min(rng.uniform(21, 27) * s, radius - 6 * s), rng.uniform(0.82, 1.0)
        off = u * (radius - rn - rng.uniform(1, 4) * s)
        nuc = [_blob(rng, rn / np.sqrt(asp), rn * np.sqrt(asp), angle, 0.03) + off]
        nucleoli = _nucleoli(rng, off, rn, s, int(rng.integers(1, 3)))
        cell = _blob(rng, radius, radius * rng.uniform(0.88, 1.0), rng.uniform(0, np.pi))
    elif cls == "lymphoblast":  # nucleus fills >= 80 % of the cell, thin blue rim
        radius = rng.uniform(20, 27) * s
        rn, asp = radius * rng.uniform(0.9, 0.95), rng.uniform(0.88, 1.0)
        off = u * (radius - rn) * rng.uniform(0, 0.5)
        nuc = [_blob(rng, rn / np.sqrt(asp), rn * np.sqrt(asp), angle, 0.02) + off]
        nucleoli = _nucleoli(rng, off, rn, s, int(rng.integers(1, 4)))
        cell = _blob(rng, radius / np.sqrt(asp), radius * np.sqrt(asp), angle, 0.015)
    else:
        raise ValueError(f"unknown class {cls!r}; expected one of {CLASS_NAMES}")
    return Cell(cls, float(radius), cell, nuc, nucleoli)


def _border_point(rng: np.random.Generator, size: int, k: float) -> np.ndarray:
    """A centre within ~10 px (at 256 px) of an edge or, one time in four, a corner."""
    near = rng.uniform(2, 10, 2) * k
    far = np.where(rng.random(2) < 0.5, near, size - near)
    if rng.random() < 0.25:
        return far
    axis = int(rng.integers(0, 2))
    p = rng.uniform(0.2, 0.8, 2) * size
    p[axis] = far[axis]
    return p


def place_cells(rng: np.random.Generator, cls: str, s: float, k: float, size: int, clump: bool, border: bool) -> list[Cell]:
    """1-3 cells; a clump is a pair whose nuclei touch (overlap 1.5-3 px; neutrophils: 1-3 px apart)."""
    n_total = max(int(rng.choice([1, 2, 3], p=[0.65, 0.27, 0.08])), 2 if clump else 1)
    theta = rng.uniform(0, 2 * np.pi)
    if border:
        centre = _border_point(rng, size, k)
        to_mid = size / 2 - centre
        theta = float(np.arctan2(to_mid[1], to_mid[0])) + rng.uniform(-0.8, 0.8)
    first = _build_cell(rng, cls, s, k, theta)
    if not border:
        centre = rng.uniform(first.radius, size - first.radius, 2) if 2 * first.radius < size else np.full(2, size / 2)
    first.centre = centre
    cells = [first]
    if clump:
        second = _build_cell(rng, cls, s, k, theta + np.pi)
        u = np.array([np.cos(theta), np.sin(theta)])
        ha = float((np.concatenate(first.nuc_polys) @ u).max())
        hb = float((np.concatenate(second.nuc_polys) @ -u).max())
        gap = rng.uniform(1, 3) * k if cls == "neutrophil" else -rng.uniform(1.5, 3.0) * max(k, 1.0)
        shift = (ha + hb + gap) * u
        if not border:  # keep the whole pair inside the field
            lo = np.maximum(first.radius, second.radius - shift)
            hi = np.minimum(size - first.radius, size - second.radius - shift)
            first.centre = rng.uniform(lo, hi) if np.all(lo < hi) else (size - shift) / 2
        second.centre = first.centre + shift
        cells.append(second)
    for _ in range(n_total - len(cells)):
        cell = _build_cell(rng, cls, s, k, rng.uniform(0, 2 * np.pi))
        for _try in range(25):
            p = rng.uniform(cell.radius, max(size - cell.radius, cell.radius + 1), 2)
            if all(np.linalg.norm(p - o.centre) > 1.05 * (cell.radius + o.radius) + 3 * k for o in cells):
                cell.centre = p
                cells.append(cell)
                break
    return cells


# ----------------------------------------------------------------------------- rendering
def fill_polygons(polys: list[np.ndarray], centre: np.ndarray, size: int) -> np.ndarray:
    """Rasterise polygons (sub-pixel precision, one call each so overlaps stay filled)."""
    m = np.zeros((size, size), np.uint8)
    for p in polys:
        cv2.fillPoly(m, [np.round((p + centre) * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    return m.astype(bool)


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(a.astype(np.float32), (0, 0), sigma)


def _noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Unit-variance blurred noise: chromatin and granule texture at a chosen grain."""
    n = _blur(rng.standard_normal((size, size), dtype=np.float32), sigma)
    return n / (float(n.std()) + 1e-6)


def _red_cells(rng: np.random.Generator, size: int, s: float, cells: list[Cell]) -> np.ndarray:
    """Stain density of red cells: discs with central pallor, overlaps add up, kept off white cells."""
    r_mean = 15 * s
    n = int(rng.uniform(0.3, 0.5) * size * size / (np.pi * r_mean**2))
    cand = rng.uniform(-r_mean, size + r_mean, (3 * n, 2))
    keep = np.ones(len(cand), bool)
    for c in cells:
        keep &= np.linalg.norm(cand - c.centre, axis=1) > c.radius + 0.5 * r_mean
    cand = cand[keep][:n]
    m = len(cand)
    params = zip(cand, rng.uniform(13, 17, m) * s, rng.uniform(0.85, 1.0, m), rng.uniform(0, np.pi, m), rng.uniform(0.35, 0.7, m), rng.uniform(0.85, 1.1, m))
    out = np.zeros((size, size), np.float32)
    for (x, y), r, asp, ang, pallor, dens in params:
        x0, x1, y0, y1 = max(int(x - r - 2), 0), min(int(x + r + 3), size), max(int(y - r - 2), 0), min(int(y + r + 3), size)
        if x0 >= x1 or y0 >= y1:
            continue
        dy, dx = np.ogrid[y0:y1, x0:x1]
        dx, dy = dx - x, dy - y
        d = np.hypot((dx * np.cos(ang) + dy * np.sin(ang)) / r, (dy * np.cos(ang) - dx * np.sin(ang)) / (r * asp))
        edge = np.clip((1 - d) * r + 0.5, 0, 1)
        out[y0:y1, x0:x1] += edge * (1 - pallor * np.exp(-((d / 0.5) ** 2))) * (0.8 + 0.2 * d) * dens
    return out


def paint_smear(
    rng: np.random.Generator,
    cells: list[Cell],
    cell_masks: list[np.ndarray],
    nuc_masks: list[np.ndarray],
    stain: dict,
    size: int,
    s: float,
    k: float,
) -> np.ndarray:
    """RGB uint8 field (size x size) for the cells, whose masks (same order as cells) are given.

    s is the cell scale (px per 256-px unit) and k = size / 256. It keeps drawing from the rng
    the cells were placed with, in a fixed order, so the image depends only on the caller's seed.
    """
    # colour: Beer-Lambert optical density of red cells, cytoplasm, nuclei and granules
    jitter = rng.uniform(0.93, 1.07, 3)
    nuc_od = np.asarray(stain["nucleus_od"]) * stain["nucleus_intensity"] * jitter[0] * (1 + rng.normal(0, 0.03, 3))
    eosin_od = _EOSIN_OD * stain["eosin_intensity"] * jitter[1]
    cyto_scale = stain["cyto_intensity"] * jitter[2]
    textures = {"fine": _noise(rng, size, 0.7 * s + 0.3), "coarse": _noise(rng, size, 2.0 * s + 0.5)}
    sigma = 0.45 + 0.35 * s
    wbc = _blur(np.any(cell_masks, 0), sigma) if cells else np.zeros((size, size), np.float32)
    od = ((_red_cells(rng, size, s, cells) * (1 - wbc))[..., None] * eosin_od).astype(np.float32)
    nuc = np.zeros((size, size), np.float32)
    granules = np.zeros((size, size), np.float32)
    for c, cm, nm in zip(cells, cell_masks, nuc_masks):
        cyto = _blur(cm & ~nm, sigma)  # cytoplasm colour only around the nucleus, not under it
        if c.cls == "neutrophil":  # fine pale granules
            cyto *= 1 + 0.45 * textures["fine"]
        od += cyto[..., None] * (_CYTO_OD[c.cls] * cyto_scale).astype(np.float32)
        density, contrast, grain = _CHROMATIN[c.cls]
        nd = _blur(nm, sigma) * density * (1 + contrast * textures[grain])
        if len(c.nucleoli):
            pale = np.zeros((size, size), np.float32)
            for x, y, r in c.nucleoli + [c.centre[0], c.centre[1], 0]:
                cv2.circle(pale, (int(round(x * 16)), int(round(y * 16))), int(round(r * 16)), 1.0, -1, cv2.LINE_AA, 4)
            nd *= 1 - 0.55 * _blur(pale, 0.5 + 0.5 * s)
        nuc += nd
        if c.cls == "promyelocyte":  # dense dark azurophilic granules, mostly over the cytoplasm
            ys, xs = np.nonzero(cm & ~nm)
            ny, nx = np.nonzero(nm)
            pick, pick_n = rng.integers(0, max(len(ys), 1), int(0.12 * len(ys))), rng.integers(0, max(len(ny), 1), int(0.02 * len(ny)))
            dots = np.zeros((size, size), np.float32)
            np.add.at(dots, (np.concatenate([ys[pick], ny[pick_n]]), np.concatenate([xs[pick], nx[pick_n]])), 1.0)
            granules += _blur(dots, 0.45 + 0.3 * s) * rng.uniform(1.6, 2.4)
    gran_od = _GRANULE_OD * stain["nucleus_intensity"] * jitter[0]
    od += np.clip(nuc, 0, None)[..., None] * nuc_od.astype(np.float32) + granules[..., None] * gran_od.astype(np.float32)

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    gx, gy, vig = rng.uniform(-0.08, 0.08), rng.uniform(-0.08, 0.08), rng.uniform(0, 0.15)
    cx, cy = rng.uniform(0.2, 0.8, 2)
    illum = rng.uniform(0.95, 1.04) * (1 + gx * (xx - 0.5) + gy * (yy - 0.5) - vig * ((xx - cx) ** 2 + (yy - cy) ** 2))
    bg = (np.asarray(stain["background"]) + rng.uniform(-0.015, 0.015, 3)).astype(np.float32)
    img = bg * illum[..., None] * np.exp(-od)
    blur = rng.uniform(0, 1.2) * k
    if blur > 0.25:
        img = cv2.GaussianBlur(img, (0, 0), blur)
    img += rng.standard_normal(img.shape, dtype=np.float32) * rng.uniform(0.004, 0.025)
    rgb = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
    return rgb
