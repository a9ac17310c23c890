"""Atomic writes: a crash or a kill never leaves a half-written JSON/CSV/PNG behind."""

from __future__ import annotations

import json
import math
import os
import stat
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

_UMASK_LOCK = threading.Lock()


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; None says "undefined" (e.g. empty-mask Dice)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):
        return _jsonable(value.tolist())
    return value


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (/proc); os.umask can only
    be read by setting it, which briefly changes it for every thread, so that is the fallback."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _file_mode(path: Path) -> int:
    """What open() would give: an existing file keeps its mode, a new one gets 0o666 & ~umask."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return 0o666 & ~current_umask()


def atomic_write(path: str | Path, writer: Callable[[Path], None]) -> Path:
    """Call writer(tmp_path) then rename onto path (same folder, so the rename is atomic). The file
    gets the permissions open() would give it, not mkstemp's private 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a short prefix: the temp name must fit where the final name (up to 255 bytes) fits
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem[:16]}.", suffix=path.suffix[:16], dir=path.parent)
    os.close(fd)
    try:
        writer(Path(tmp))
        os.chmod(tmp, _file_mode(path))  # after the writer: it may have recreated the file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_json(path: str | Path, data: Any) -> Path:
    text = json.dumps(_jsonable(data), indent=2, sort_keys=False)
    return atomic_write(path, lambda p: p.write_text(text + "\n"))


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def write_png(path: str | Path, image) -> Path:
    """RGB or grey uint8 array -> PNG, atomically."""
    import cv2
    import numpy as np

    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)

    def _write(p: Path) -> None:
        ok, buf = cv2.imencode(".png", arr)
        if not ok:
            raise OSError(f"could not encode PNG for {path}")
        p.write_bytes(buf.tobytes())

    return atomic_write(path, _write)
