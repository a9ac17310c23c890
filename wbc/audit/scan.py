"""One sample at a time: what its files are, whether they decode, what its mask holds.

Nothing here raises for a bad file: every problem becomes an entry of `Record.problems`
({"kind", "file", "detail"}), so the audit lists all of them where training stops at the first.
Kinds: `missing`, `empty`, `unreadable` (the header does not read), `truncated` (the header reads,
the pixel data does not), `too_large` (over data.max_pixels), `bit_depth` (a maximum over data.bit_depth),
`size_mismatch` (mask and image differ), `mask_values` (values outside data.mask_encoding).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wbc.data.bitdepth import BitDepthError
from wbc.data.imageio import ImageReadError, read_mask, read_rgb
from wbc.data.manifest import CYTOPLASM, NUCLEUS, ManifestError, MaskEncoding, Sample

# PIL mode -> (channels, bits per sample)
PIL_MODES = {
    "1": ("binary", 1), "L": ("grey", 8), "LA": ("grey+alpha", 8), "P": ("palette", 8), "PA": ("palette+alpha", 8),
    "RGB": ("RGB", 8), "RGBA": ("RGBA", 8), "RGBX": ("RGB", 8), "CMYK": ("CMYK", 8), "YCbCr": ("YCbCr", 8),
    "LAB": ("LAB", 8), "HSV": ("HSV", 8), "I;16": ("grey", 16), "I;16B": ("grey", 16), "I;16L": ("grey", 16),
    "I;16N": ("grey", 16), "I": ("grey", 32), "F": ("grey float", 32),
}
TIFF_CHANNELS = {1: "grey", 2: "grey+alpha", 3: "RGB", 4: "RGBA"}
# the side (pixels) of the grey thumbnail kept for the shift-tolerant pixel match of near duplicates
THUMB_SIDE = 96


@dataclass
class Record:
    """What the audit learned about one sample (`thumb` stays in memory, out of the JSON)."""

    id: str
    class_name: str
    group: str | None
    image: str
    mask: str | None
    image_info: dict | None = None
    mask_info: dict | None = None
    problems: list[dict] = field(default_factory=list)
    pixel_hash: str | None = None
    phash: str | None = None
    thumb: np.ndarray | None = field(default=None, repr=False)
    mask_values: Counter = field(default_factory=Counter)
    shares: dict[str, float] | None = None
    mask_flags: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> str | None:
        info = self.image_info
        return f"{info['width']}x{info['height']}" if info else None

    def problem(self, kind: str, file: Path | str | None, detail: str) -> None:
        self.problems.append({"id": self.id, "kind": kind, "file": str(file) if file else None, "detail": detail})


def header_info(path: Path) -> dict:
    """Format, channels and bit depth as the file stores them (PIL's mode; tifffile for TIFFs PIL
    cannot open), read from the header without decoding. Raises ImageReadError."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            channels, bits = PIL_MODES.get(im.mode, (im.mode, 8))
            if im.format == "TIFF":  # PIL may open a 16-bit RGB TIFF as 8-bit RGB: the BitsPerSample tag says
                stored = im.tag_v2.get(258)
                bits = max(stored) if isinstance(stored, tuple | list) and stored else int(stored or bits)
            return {"format": im.format or path.suffix.lstrip(".").upper(), "mode": im.mode, "channels": channels,
                    "bits": bits, "width": im.size[0], "height": im.size[1]}
    except Exception as err:  # noqa: BLE001 - any header failure is the file's problem
        if path.suffix.lower() in (".tif", ".tiff"):
            try:
                import tifffile

                with tifffile.TiffFile(path) as tif:
                    page = tif.pages[0]
                    spp = int(page.samplesperpixel)
                    return {"format": "TIFF", "mode": f"tifffile {page.dtype}", "channels": TIFF_CHANNELS.get(spp, f"{spp} channels"),
                            "bits": int(page.bitspersample), "width": int(page.imagewidth), "height": int(page.imagelength)}
            except Exception:  # noqa: BLE001 - report PIL's message
                pass
        raise ImageReadError(f"{path}: cannot read the image header ({err})") from err


def describe(info: dict | None) -> str:
    """'PNG RGB 8-bit' for the modes table."""
    return "unreadable" if not info else f"{info['format']} {info['channels']} {info['bits']}-bit"


def _kind(err: Exception, header_ok: bool) -> str:
    text = str(err)
    if "exceeds the limit" in text:
        return "too_large"
    if isinstance(err.__cause__, BitDepthError):
        return "bit_depth"
    return "truncated" if header_ok else "unreadable"


def _read(rec: Record, role: str, path: Path, reader) -> np.ndarray | None:
    """Header, then a full decode; a failure is recorded on `rec` (None returned)."""
    if not path.exists():
        rec.problem("missing", path, f"{role} file not found")
        return None
    if path.is_file() and path.stat().st_size == 0:
        rec.problem("empty", path, f"{role} file is empty (0 bytes)")
        return None
    header_ok = False
    try:
        info = header_info(path)
        setattr(rec, f"{role}_info", info)
        header_ok = True
        return reader(path)
    except Exception as err:  # noqa: BLE001 - every bad file is reported, none stops the audit
        detail = str(err.__cause__ or err) if isinstance(err, ImageReadError) else f"{type(err).__name__}: {err}"
        if header_ok and _kind(err, header_ok) == "truncated":
            detail = f"the header reads but the pixel data does not decode ({detail})"
        rec.problem(_kind(err, header_ok), path, detail)
        return None


def value_counts(raw: np.ndarray) -> Counter:
    """Raw mask values -> pixel counts ('255' for grey, '0,255,255' for colour)."""
    if raw.ndim == 3:  # colours packed into one integer (16 bits a channel): a 1-D unique, far faster than axis=0
        flat = raw.reshape(-1, raw.shape[2]).astype(np.uint64)
        packed = np.zeros(len(flat), np.uint64)
        for ch in range(flat.shape[1]):
            packed = (packed << np.uint64(16)) | flat[:, ch]
        values, counts = np.unique(packed, return_counts=True)
        shifts = [16 * (flat.shape[1] - 1 - ch) for ch in range(flat.shape[1])]
        return Counter({",".join(str((int(v) >> s) & 0xFFFF) for s in shifts): int(n) for v, n in zip(values, counts)})
    values, counts = np.unique(raw, return_counts=True)
    return Counter({str(int(v)): int(n) for v, n in zip(values, counts)})


def mask_checks(labels: np.ndarray, has_cytoplasm: bool) -> dict[str, Any]:
    """Sanity of one decoded mask: `empty_nucleus`; `nucleus_outside_cytoplasm` (nucleus components
    that touch no cytoplasm pixel, 8-connected, when the encoding has a cytoplasm); `nucleus_touches_border`."""
    import cv2

    nucleus = labels == NUCLEUS
    flags: dict[str, Any] = {}
    if not nucleus.any():
        flags["empty_nucleus"] = True
        return flags
    if has_cytoplasm:
        n, comp = cv2.connectedComponents(nucleus.astype(np.uint8), connectivity=8)
        near_cyto = cv2.dilate((labels == CYTOPLASM).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
        touching = set(np.unique(comp[near_cyto & nucleus]).tolist())
        alone = [c for c in range(1, n) if c not in touching]
        if alone:
            flags["nucleus_outside_cytoplasm"] = {"components": len(alone), "pixels": int(np.isin(comp, alone).sum()), "of_components": n - 1}
    border = np.concatenate([nucleus[0], nucleus[-1], nucleus[:, 0], nucleus[:, -1]])
    if border.any():
        flags["nucleus_touches_border"] = int(border.sum())
    return flags


def thumbnail(rgb: np.ndarray, side: int = THUMB_SIDE) -> np.ndarray:
    """Grey uint8 thumbnail, longest side `side`, aspect kept, lightly blurred (sigma 1 px) so focus
    and compression noise do not count in the pixel match."""
    import cv2

    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    scale = side / max(grey.shape)
    if scale < 1:
        grey = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return cv2.GaussianBlur(grey, (0, 0), 1.0)


def pixel_hash(rgb: np.ndarray) -> str:
    """SHA-1 of the decoded pixels (and shape): the same image re-saved in another format hashes alike."""
    digest = hashlib.sha1(repr(rgb.shape).encode())
    digest.update(np.ascontiguousarray(rgb).data)
    return digest.hexdigest()


def perceptual_hash(rgb: np.ndarray) -> str:
    """imagehash's pHash (64 bits, as 16 hex digits)."""
    import imagehash
    from PIL import Image

    return str(imagehash.phash(Image.fromarray(rgb)))


def scan_sample(sample: Sample, encoding: MaskEncoding) -> Record:
    """Read one sample the way training would, recording every problem instead of raising."""
    rec = Record(sample.id, sample.class_name, sample.group, str(sample.image), str(sample.mask) if sample.mask else None)
    rgb = _read(rec, "image", Path(sample.image), lambda p: read_rgb(p, sample.max_pixels, bit_depth=sample.bit_depth))
    raw = _read(rec, "mask", Path(sample.mask), lambda p: read_mask(p, sample.max_pixels)) if sample.mask else None
    if rgb is not None:
        rec.pixel_hash = pixel_hash(rgb)
        rec.phash = perceptual_hash(rgb)
        rec.thumb = thumbnail(rgb)
    if raw is None:
        return rec
    rec.mask_values = value_counts(raw)
    if rgb is not None and raw.shape[:2] != rgb.shape[:2]:
        rec.problem("size_mismatch", sample.mask, f"mask {raw.shape[1]}x{raw.shape[0]} but image {rgb.shape[1]}x{rgb.shape[0]} (width x height)")
        return rec
    try:
        labels = encoding.decode(raw, where=str(sample.mask))
    except ManifestError as err:
        rec.problem("mask_values", sample.mask, str(err).split(": ", 1)[-1])
        return rec
    total = float(labels.size)
    rec.shares = {"nucleus": float((labels == NUCLEUS).sum()) / total, "cytoplasm": float((labels == CYTOPLASM).sum()) / total}
    rec.mask_flags = mask_checks(labels, bool(encoding.cytoplasm))
    return rec
