"""Robust image reading: one function that accepts what labs actually have.

8/16-bit, grey, RGB, RGBA, palette, BMP/PNG/TIFF/BigTIFF/JPEG are normalised to uint8 RGB. Corrupt,
truncated, empty and non-image files raise `ImageReadError` naming the file, instead of the
None / partial array / deep traceback the underlying decoders give.

Pixel limit (decompression bombs): the one check is `check_pixels`, on the width x height read from
the header before anything is decoded. Training/evaluation (`data.max_pixels`, through the manifest's
samples) and predict (`max_pixels`, via predict_io.check_file) both use it; `None` means
`DEFAULT_MAX_PIXELS`.

Bit depth: images (`read_rgb`, `decode_bytes`) keep all 16 bits of 16-bit grey and colour files
(Pillow alone keeps only the high byte of 16-bit colour); `to_uint8` (wbc.data.bitdepth) then scales
them by the camera's bit depth (`bit_depth`: auto = guessed from each image's maximum, or 8..16), so
a 10/12/14-bit camera frame saved in a 16-bit file is not read nearly black.
Masks (`read_mask`) are never scaled: 16-bit colour masks become the 8-bit colour codes a mask
encoding names, exactly or not at all (`mask_codes`).

TIFF layouts: one 2-D image is read, grey or colour, its samples interleaved or planar (channels
first); a stack of pages is refused, whichever decoder opens it, since which page is meant cannot be
guessed (`single_image`).

One decode for files and uploads: a file's bytes are read and decoded exactly as an upload's
(`decode_raw` = `decode_bytes`), so Pillow never memory-maps a file (a memory-mapped grey TIFF skipped
its Orientation turn while reporting the turned size: scrambled pixels). What a file is, and whether
it is a TIFF, is decided by its first bytes (IMAGE_MAGIC, TIFF_MAGIC), never by its name: PNG, JPEG,
TIFF/BigTIFF and BMP are read, anything else (WebP, GIF) is refused in training, predict and the web
app alike. Every image and mask is turned by its EXIF / TIFF Orientation tag, whichever decoder
reads it (wbc.data.orientation): what viewers show, and what annotators drew on.
"""

from __future__ import annotations

import io
import math
import numbers
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from wbc.data.bitdepth import AUTO, BitDepthError, to_uint8
from wbc.data.formats import IMAGE_MAGIC, TIFF_MAGIC, ImageReadError, check_magic  # noqa: F401 - IMAGE_MAGIC re-exported
from wbc.data.mask_values import mask_codes, palette_note  # noqa: F401 - palette_note re-exported
from wbc.data.orientation import ORIENTATION_TAG, orient

# Predicting one image costs ~1 GB of process baseline + ~120 bytes per pixel at full resolution
# (RGB uint8, preprocessed copies, float32 probability maps, distance transform, int32 watershed
# labels, overlay), measured: 4 MP -> 1.4 GB, 16 MP -> 2.9 GB, 25 MP -> 4 GB / 75 s on one CPU
# thread. 20 MP keeps one image under ~3.5 GB and ~1 min and still admits a 5472x3648 camera frame;
# larger images (whole slides) must be tiled.
DEFAULT_MAX_PIXELS = 20_000_000
# PIL's own guard (it refuses twice this) stays as a hard ceiling far above any sensible max_pixels;
# its warning is ignored below because `check_pixels` decides.
Image.MAX_IMAGE_PIXELS = 20_000 * 20_000


def pixel_limit(max_pixels: int | float | None, setting: str = "data.max_pixels") -> int:
    """The limit in force: `None` -> DEFAULT_MAX_PIXELS; anything but a positive whole number is an error."""
    if max_pixels is None:
        return DEFAULT_MAX_PIXELS
    ok = isinstance(max_pixels, numbers.Real) and not isinstance(max_pixels, bool) and float(max_pixels).is_integer()
    if not ok or max_pixels <= 0:
        raise ValueError(f"{setting}={max_pixels!r}: expected a positive whole number of pixels, or null for {DEFAULT_MAX_PIXELS}")
    return int(max_pixels)


def check_pixels(path: Path, width: int, height: int, max_pixels: int | None, setting: str = "data.max_pixels", pixels: int | None = None) -> None:
    """Refuse an image whose header promises more than the limit, before it is decoded."""
    limit = pixel_limit(max_pixels, setting)
    n = width * height if pixels is None else pixels
    if n > limit:
        dims = f"{width}x{height}" if n == width * height else f"{width}x{height} x {n // max(1, width * height)} pages"
        raise ImageReadError(
            f"{path}: {dims} = {n} pixels exceeds the limit max_pixels={limit} ({setting}); "
            f"raise {setting} if this machine has the memory, or tile / downscale the image first"
        )


def _bomb_error(path: Path, err: Exception, max_pixels: int | None, setting: str) -> ImageReadError:
    """PIL's DecompressionBombError (beyond its hard ceiling) as our message, with the pixel count."""
    found = re.search(r"\((\d+) pixels\)", str(err))
    count = f"{found.group(1)} pixels" if found else "more pixels than PIL allows"
    return ImageReadError(
        f"{path}: {count} exceeds the limit max_pixels={pixel_limit(max_pixels, setting)} ({setting}) and PIL's "
        f"decompression-bomb ceiling of {2 * (Image.MAX_IMAGE_PIXELS or 0)} pixels; tile or downscale the image first"
    )


def _tiff_header(tif: Any) -> tuple[int, int, int]:
    """(width, height, pixels) of a tifffile.TiffFile's first series: pages x height x width, samples
    not counted."""
    page = tif.pages[0]
    series = tif.series[0]
    return int(page.imagewidth), int(page.imagelength), int(series.size) // max(1, int(page.samplesperpixel))


def header_size(path: Path, max_pixels: int | None = None, setting: str = "data.max_pixels") -> tuple[int, int, int]:
    """(width, height, pixels) from the file header (PIL, else tifffile for TIFFs); nothing is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return im.size[0], im.size[1], im.size[0] * im.size[1]
    except Image.DecompressionBombError as err:
        raise _bomb_error(path, err, max_pixels, setting) from err
    except Exception as err:  # noqa: BLE001 - an unreadable header is reported like any bad file
        if _head(path).startswith(TIFF_MAGIC):  # TIFFs PIL cannot open (float, planar) are read by tifffile
            try:
                import tifffile

                with tifffile.TiffFile(path) as tif:
                    return _tiff_header(tif)
            except Exception:  # noqa: BLE001 - report PIL's message below
                pass
        raise ImageReadError(f"{path}: cannot read the image header ({err}); truncated or not an image file") from err


def _head(path: Path, n: int = 16) -> bytes:
    """A file's first bytes (empty if unreadable: the caller's own open reports why)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(n)
    except OSError:
        return b""


def check_image_size(path: Path, max_pixels: int | None = None, setting: str = "data.max_pixels") -> tuple[int, int]:
    """(width, height) of an image within the limit (read from the header); else ImageReadError."""
    limit = pixel_limit(max_pixels, setting)
    w, h, n = header_size(path, limit, setting)
    check_pixels(path, w, h, limit, setting, n)
    return w, h


def single_image(tif: Any, label: Any) -> tuple[str, tuple[int, ...]]:
    """(axes, shape) of a tifffile.TiffFile's first series if it is one 2-D image: Y, X and colour
    samples (S, interleaved or planar); other axes of size 1 are ignored. Pages (a z-stack, a time
    series, channels saved as pages, a multi-field scan) are refused: reading page 1 of them silently
    would train or predict on a part of the data. A thumbnail or preview is a series of its own."""
    series = tif.series[0]
    axes, shape = str(series.axes), tuple(int(n) for n in series.shape)
    pages = math.prod(n for a, n in zip(axes, shape) if a not in "YXS")
    if pages > 1:
        raise ImageReadError(
            f"{label}: multi-page TIFF with {pages} pages (shape {shape}, axes {axes}); "
            "expected one 2-D image, grey or RGB: save one field per file"
        )
    return axes, shape


def _read_tiff(path: Path | io.BytesIO, max_pixels: int | None, setting: str, label: Any = None) -> np.ndarray:
    """tifffile's decode (what PIL cannot open) of one 2-D image, after the same pixel check on its
    header; planar colour (S, Y, X) comes back as Y x X x S, like every other decoder's."""
    import tifffile

    label = path if label is None else label
    if isinstance(path, io.BytesIO):
        path.seek(0)  # a buffer PIL has read from: tifffile reads from where it stands
    with tifffile.TiffFile(path) as tif:
        axes, shape = single_image(tif, label)
        w, h, n = _tiff_header(tif)
        check_pixels(label, w, h, max_pixels, setting, n)
        tag = tif.pages[0].tags.get(274)
        orientation = tag.value if tag is not None else 1
        arr = np.asarray(tif.series[0].asarray())
    kept = [a for a in axes if a in "YXS"]
    if arr.size != math.prod(shape) or not {"Y", "X"} <= set(kept):
        return arr  # an unusual layout: as_rgb / read_mask name its shape
    arr = arr.reshape([n for a, n in zip(axes, shape) if a in "YXS"])
    return orient(arr.transpose([kept.index(a) for a in "YXS" if a in kept]), orientation)  # tifffile never turns it


def _check_tiff_pages(source: Path | io.BytesIO, label: Any) -> None:
    """`single_image` for a TIFF that PIL opens (PIL reads its first page of a stack silently);
    a file tifffile cannot parse is left to PIL's decode to judge."""
    import tifffile

    pos = source.tell() if isinstance(source, io.BytesIO) else None
    if pos is not None:
        source.seek(0)  # tifffile reads a buffer from where it stands
    try:
        with tifffile.TiffFile(source) as tif:
            single_image(tif, label)
    except ImageReadError:
        raise
    except Exception:  # noqa: BLE001 - PIL's decode reports a broken file
        pass
    finally:
        if pos is not None:
            source.seek(pos)


def decode_raw(
    path: Path, max_pixels: int | None = None, setting: str = "data.max_pixels", *, full_depth: bool = False,
    palette_indices: bool = False,
) -> np.ndarray:
    """The decoded array, turned upright by its Orientation tag; files over `max_pixels` (None =
    DEFAULT_MAX_PIXELS) are refused from their header, before decoding. 16-bit grey stays uint16;
    16-bit colour (RGB/RGBA, grey+alpha) keeps its 16 bits only with `full_depth=True` (read_rgb,
    read_mask), else Pillow's high byte. The file's bytes go through `decode_bytes`' code: one decode."""
    if not path.exists():
        raise ImageReadError(f"{path}: file not found")
    if not path.is_file():
        raise ImageReadError(f"{path}: not a regular file (a folder?); expected an image file")
    limit = pixel_limit(max_pixels, setting)  # a bad setting is a config error, not a bad file
    try:
        data = path.read_bytes()  # never memory-mapped by Pillow (which skipped a grey TIFF's Orientation)
    except PermissionError as err:
        raise ImageReadError(f"{path}: cannot be read ({err.strerror or err}); check the file's permissions") from err
    return _decode_data(data, path, limit, setting, full_depth, palette_indices)


def decode_bytes(
    data: bytes, name: str, max_pixels: int | None = None, setting: str = "max_pixels", *, full_depth: bool = True
) -> np.ndarray:
    """`decode_raw` for an image held in memory (an upload): `name` only labels the messages; the
    same decode, type check, orientation and pixel limit; 16-bit colour keeps its 16 bits unless
    `full_depth=False`."""
    return _decode_data(data, name, pixel_limit(max_pixels, setting), setting, full_depth)


def _decode_data(data: bytes, label: Any, limit: int, setting: str, full_depth: bool, palette_indices: bool = False) -> np.ndarray:
    """The decode of a file's or an upload's bytes: an image type and a TIFF are told by the first bytes."""
    if not data:
        raise ImageReadError(f"{label}: file is empty (0 bytes); expected an image")
    check_magic(data[:16], label)
    return _decode(io.BytesIO(data), label, data.startswith(TIFF_MAGIC), limit, setting, full_depth, palette_indices)


def _colour16(im: Image.Image) -> bool:
    """Whether PIL holds 16-bit colour (RGB, RGBA, grey+alpha) that its 8-bit modes would cut to the
    high byte; 16-bit grey ("I;16" modes) is kept whole by PIL and is not."""
    if im.mode.startswith("I") or not im.tile:
        return False
    args = im.tile[0].args
    rawmode = args if isinstance(args, str) else (args[0] if args else "")
    return isinstance(rawmode, str) and ";16" in rawmode


def _planar_deep(im: Image.Image) -> bool:
    """A planar (channels-first, PlanarConfiguration 2) TIFF with more than 8 bits a sample: PIL reads its
    first bytes as 8-bit pixels and OpenCV mis-orders its planes, so tifffile decodes it."""
    tags = getattr(im, "tag_v2", None)
    if tags is None or tags.get(284) != 2:
        return False
    bits = tags.get(258, (8,))
    return max(bits if isinstance(bits, tuple) else (bits,)) > 8


def _decode_colour16(source: io.BytesIO, label: Any, tiff: bool, limit: int, setting: str, orientation: Any) -> np.ndarray | None:
    """16-bit colour with all its bits, RGB(A) order, upright: OpenCV (PNG, turned here by the EXIF
    `orientation`; TIFF through libtiff, any compression, which OpenCV turns itself), else tifffile for a
    TIFF; None if neither decodes it. The pixel limit was checked from the header already."""
    import cv2

    data = source.getvalue()
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is not None and arr.dtype == np.uint16 and arr.ndim == 3 and arr.shape[2] in (3, 4):
        arr = arr[..., [2, 1, 0, 3][: arr.shape[2]]]  # OpenCV's BGR(A)
        return arr if tiff else orient(arr, orientation)  # IMREAD_UNCHANGED ignores a PNG's EXIF
    if tiff:
        try:
            return _read_tiff(io.BytesIO(data), limit, setting, label)
        except ImageReadError:
            raise
        except Exception:  # noqa: BLE001 - the caller falls back to PIL's 8 bits
            pass
    return None


def _decode(
    source: io.BytesIO, label: Any, tiff: bool, limit: int, setting: str, full_depth: bool = False, palette_indices: bool = False,
) -> np.ndarray:
    """PIL's decode of a buffer (tifffile for the TIFFs PIL cannot open; OpenCV/tifffile for 16-bit
    colour when `full_depth`), upright; a palette image's indices with `palette_indices`, else its
    colours; `label` names it in errors."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # check_pixels decides
            with Image.open(source) as im:
                check_pixels(label, im.size[0], im.size[1], limit, setting)
                if tiff and getattr(im, "n_frames", 1) > 1:
                    _check_tiff_pages(source, label)
                elif im.format == "PNG" and getattr(im, "n_frames", 1) > 1:  # APNG: frame 1 alone was read silently (a JPEG's MPO previews are not fields)
                    raise ImageReadError(f"{label}: animated {im.format} with {im.n_frames} frames; expected one 2-D image: "
                                         "save one field per file")
                if tiff and _planar_deep(im):  # PIL and OpenCV decode these to wrong pixels, silently
                    return _read_tiff(source, limit, setting, label)
                colour16 = full_depth and _colour16(im)
                if colour16:
                    deep = _decode_colour16(source, label, tiff, limit, setting, im.getexif().get(ORIENTATION_TAG))
                    if deep is not None:
                        return deep
                im.load()  # forces a full decode: truncated files raise here
                ImageOps.exif_transpose(im, in_place=True)  # JPEG/PNG/WebP; a TIFF's turn Pillow made in load()
                if colour16:
                    warnings.warn(f"{label}: 16-bit colour read as 8 bits (the high byte): OpenCV and tifffile cannot decode it", stacklevel=3)
                if im.mode == "P" and palette_indices:
                    idx = np.asarray(im)
                    pal = np.asarray(im.getpalette() or [], dtype=np.int32).reshape(-1, 3)
                    used = pal[np.unique(idx)[np.unique(idx) < len(pal)]]
                    if len(used) and (used == used[:, :1]).all():  # a grey palette: the greys it shows, as before
                        return np.asarray(im.convert("L"))
                    return idx  # colours standing for classes: the values the annotator painted
                if im.mode == "P":
                    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                elif im.mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
                    im = im.convert("RGB")
                elif im.mode == "LA":
                    im = im.convert("L")
                return np.asarray(im)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as err:
        raise _bomb_error(label, err, limit, setting) from err
    except PermissionError as err:
        raise ImageReadError(f"{label}: cannot be read ({err.strerror or err}); check the file's permissions") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        if tiff:
            try:
                return _read_tiff(source, limit, setting, label)
            except ImageReadError:
                raise
            except Exception:  # noqa: BLE001 - report the original decoder's message below
                pass
        raise ImageReadError(f"{label}: cannot decode as an image ({err}); truncated or not an image file") from err


def read_rgb(
    path: str | Path, max_pixels: int | None = None, setting: str = "data.max_pixels", *, bit_depth: int | str = AUTO,
    depth_setting: str = "data.bit_depth",
) -> np.ndarray:
    """Read any supported image as HxWx3 uint8 RGB (grey is replicated, alpha dropped); images over
    `max_pixels` (None = DEFAULT_MAX_PIXELS; `setting` names the config key) are refused undecoded;
    wider than 8 bits: scaled by `bit_depth` (`as_rgb`)."""
    path = Path(path)
    return as_rgb(decode_raw(path, max_pixels, setting, full_depth=True), path, bit_depth, depth_setting)


def as_rgb(arr: np.ndarray, label: Any, bit_depth: int | str = AUTO, depth_setting: str = "data.bit_depth") -> np.ndarray:
    """A decoded array (decode_raw / decode_bytes) as HxWx3 uint8 RGB: grey replicated, alpha dropped,
    wider than 8 bits divided by 2**bit_depth - 1 (auto: the image's effective depth; wbc.data.bitdepth:
    a maximum over the depth is refused, naming `depth_setting`); `label` names the image in errors."""
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[..., :3]
    elif arr.ndim == 3 and arr.shape[2] == 2:
        arr = np.repeat(arr[..., :1], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ImageReadError(f"{label}: unsupported image shape {arr.shape}; expected HxW, HxWx3 or HxWx4")
    if min(arr.shape[:2]) < 1:
        raise ImageReadError(f"{label}: image has no pixels")
    try:
        return np.ascontiguousarray(to_uint8(arr, bit_depth, label, depth_setting))
    except BitDepthError as err:
        raise ImageReadError(str(err)) from err


def read_mask(path: str | Path, max_pixels: int | None = None, setting: str = "data.max_pixels", *, palette_indices: bool = False) -> np.ndarray:
    """Read a mask with its raw values: HxW (grey, any depth, as stored) or HxWx3 (colour-coded,
    as 8-bit codes: `mask_codes`); alpha dropped; the same pixel limit and orientation as `read_rgb`.
    A palette image gives its colours, or with `palette_indices` (a grey encoding) its indices."""
    path = Path(path)
    arr = decode_raw(path, max_pixels, setting, full_depth=True, palette_indices=palette_indices)  # 16-bit colour whole
    if arr.ndim == 3 and arr.shape[2] == 2:
        arr = arr[..., 0]  # grey + alpha
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[..., :3]
    if arr.ndim == 3 and arr.shape[2] == 3:
        grey = bool((arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all())
        try:
            arr = mask_codes(arr, path)
        except ImageReadError:
            if not grey:
                raise
            # grey stored as RGB with values no 8-bit code explains (a 16-bit label map): raw, as a grey file's
        if grey:
            arr = arr[..., 0]
    if arr.ndim != 2 and (arr.ndim != 3 or arr.shape[2] != 3):
        raise ImageReadError(f"{path}: unsupported mask shape {arr.shape}; expected HxW or HxWx3")
    return np.ascontiguousarray(arr)
