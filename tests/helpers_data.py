"""Tiny on-disk datasets for the data-layer tests (written into tmp_path; no committed images).

Images are drawn cells: light background, a pink cytoplasm disc and a dark purple nucleus disc.
Masks use the default grey encoding (0 background, 128 cytoplasm, 255 nucleus) unless an RGB
colour code is asked for.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np

GREY_CODE = {"background": 0, "cytoplasm": 128, "nucleus": 255}
RGB_CODE = {"background": (255, 255, 255), "cytoplasm": (0, 0, 255), "nucleus": (0, 255, 255)}
RGB_ENCODING = {
    "mode": "rgb",
    "background": [list(RGB_CODE["background"])],
    "cytoplasm": [list(RGB_CODE["cytoplasm"])],
    "nucleus": [list(RGB_CODE["nucleus"])],
}


def write_image(path: Path, arr: np.ndarray) -> Path:
    """Write an RGB (HxWx3), RGBA (HxWx4) or grey (HxW) array, any integer depth cv2 accepts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = arr[..., ::-1]  # cv2 writes BGR
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[..., [2, 1, 0, 3]]
    if not cv2.imwrite(str(path), np.ascontiguousarray(arr)):
        raise OSError(f"cv2 could not write {path}")
    return path


def cell(size: int | tuple[int, int] = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 image, label map 0/1/2) of one centred cell with a little noise."""
    h, w = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    cy, cx = h // 2 + int(rng.integers(-2, 3)), w // 2 + int(rng.integers(-2, 3))
    r_cell = max(3, min(h, w) // 3)
    yy, xx = np.mgrid[:h, :w]
    d2 = (yy - cy) ** 2 + (xx - cx) ** 2
    labels = np.zeros((h, w), np.uint8)
    labels[d2 <= r_cell**2] = 1
    labels[d2 <= (r_cell // 2) ** 2] = 2
    colours = np.array([[235, 225, 200], [190, 140, 135], [110, 40, 105]], np.int16)
    img = colours[labels] + rng.integers(-8, 9, (h, w, 3))
    return img.clip(0, 255).astype(np.uint8), labels


def grey_mask(labels: np.ndarray) -> np.ndarray:
    lut = np.array([GREY_CODE["background"], GREY_CODE["cytoplasm"], GREY_CODE["nucleus"]], np.uint8)
    return lut[labels]


def rgb_mask(labels: np.ndarray) -> np.ndarray:
    lut = np.array([RGB_CODE["background"], RGB_CODE["cytoplasm"], RGB_CODE["nucleus"]], np.uint8)
    return lut[labels]


def make_csv_dataset(
    root: Path,
    counts: Mapping[str, int],
    size: int = 32,
    groups: Sequence[str] | None = None,
    mask_mode: str = "grey",
    extra_rows: Sequence[Mapping[str, str]] = (),
    columns: Sequence[str] = ("image", "mask", "class_name", "group"),
) -> Path:
    """`root/labels.csv` + `root/images/<class>_<i>.png` + `root/masks/<class>_<i>.png`.

    `groups`, if given, is one group id per image in row order (classes in `counts` order).
    """
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    n = 0
    for class_name, count in counts.items():
        for i in range(count):
            img, labels = cell(size, seed=n)
            stem = f"{class_name}_{i:03d}"
            write_image(root / "images" / f"{stem}.png", img)
            mask = grey_mask(labels) if mask_mode == "grey" else rgb_mask(labels)
            write_image(root / "masks" / f"{stem}.png", mask)
            row = {"image": f"images/{stem}.png", "mask": f"masks/{stem}.png", "class_name": class_name}
            row["group"] = groups[n] if groups is not None else ""
            rows.append(row)
            n += 1
    rows.extend(dict(r) for r in extra_rows)
    write_labels(root, rows, columns)
    return root


def write_labels(root: Path, rows: Sequence[Mapping[str, str]], columns: Sequence[str]) -> Path:
    path = root / "labels.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def make_folder_dataset(root: Path, counts: Mapping[str, int], size: int = 32, mask_ext: str = ".png") -> Path:
    """`root/images/<class>/<class>_<i>.png` and `root/masks/<class>/<class>_<i><mask_ext>`."""
    n = 0
    for class_name, count in counts.items():
        for i in range(count):
            img, labels = cell(size, seed=n)
            stem = f"{class_name}_{i:03d}"
            write_image(root / "images" / class_name / f"{stem}.png", img)
            write_image(root / "masks" / class_name / f"{stem}{mask_ext}", grey_mask(labels))
            n += 1
    return root


def truncate(path: Path) -> Path:
    """Cut a file in half (a download that stopped midway)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def disc_pair(size: int = 96, centre: tuple[int, int] = (34, 58), radius: int = 14, seed: int = 0):
    """(RGB image with a bright disc on a dark textured background, uint8 0/1 mask of the same disc)."""
    rng = np.random.default_rng(seed)
    img = rng.integers(10, 60, (size, size, 3)).astype(np.uint8)
    mask = np.zeros((size, size), np.uint8)
    cv2.circle(mask, centre, radius, 1, -1)
    img[mask > 0] = (240, 235, 230)
    return img, mask


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height but holds almost no data (a decompression bomb's shape)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))
    return path


def add_uncalibrated_columns(path: Path, p_a: Mapping[str, float]) -> Path:
    """Give a two-class (a, b) predictions CSV the columns training writes since the temperature leak was
    found (`uncalibrated_p_a`, `uncalibrated_p_b`): `p_a` maps each row's sample id to its p(a) before it."""
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    rows[0] += ["uncalibrated_p_a", "uncalibrated_p_b"]
    for r in rows[1:]:
        r += [p_a[r[0]], 1 - p_a[r[0]]]
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return path
