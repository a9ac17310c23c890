"""The all-images ZIP: one folder per image (its download stem; a repeated stem gets _2, _3, ...) and
`manifest.csv`, which says which folder is which upload: folder, the file name as uploaded, the image
id, its status and cell count (the csv module, text guarded as in cells.csv: wbc.spreadsheet).

Ids asked for that the server no longer has (expired or deleted) get a manifest row of their own, after
the others, with the status MISSING, and are listed in `missing.txt`: a ZIP without them says so."""

from __future__ import annotations

import csv
import io
from typing import TYPE_CHECKING

from wbc.cell_outputs import csv_records, zip_bytes

if TYPE_CHECKING:
    from wbc.web.engine import Engine
    from wbc.web.store import ImageRecord

MANIFEST = "manifest.csv"
MANIFEST_COLUMNS = ("folder", "file", "image_id", "status", "cells")
MISSING = "not on the server (expired or deleted)"
MISSING_TXT = "missing.txt"


def manifest_csv(rows: list[dict]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(MANIFEST_COLUMNS)
    writer.writerows(csv_records(rows, MANIFEST_COLUMNS))
    return buf.getvalue().encode("utf-8")


def missing_txt(ids: list[str]) -> bytes:
    """The note for ids the server no longer has: it cannot name their files, only their ids."""
    head = ("These images were asked for but are no longer on the server: they expired (the server keeps a limited "
            "number of images for a limited time) or were deleted. Upload them again for their results.")
    return "\n".join([head, "", *ids, ""]).encode("utf-8")


def zip_all(engine: Engine, recs: list[ImageRecord], missing: list[str] | tuple[str, ...] = ()) -> bytes:
    """These images' files, a folder each, and the manifest, with a row (no folder) for each image not
    segmented yet or whose files cannot be written (more cells than a 16-bit label map holds) and a row and
    missing.txt for each id in `missing`; each image's files and its manifest row are read under its lock, so they come
    from one run."""
    files: dict[str, bytes] = {}
    used: set[str] = set()
    rows: list[dict] = []
    later: list[dict] = []  # asked for but not segmented yet: named, no folder
    for rec in recs:
        with rec.lock:
            if rec.labels is None:
                later.append({"file": rec.name, "image_id": rec.id, "status": f"{rec.status}, not segmented: no files"})
                continue
            try:
                image_files = engine.files(rec)
            except ValueError as err:  # more cells than a 16-bit label PNG holds: this image only, named
                later.append({"file": rec.name, "image_id": rec.id, "status": f"{rec.status}, no files: {err}", "cells": len(rec.rows)})
                continue
            folder, n = rec.stem, 1
            while folder.casefold() in used:
                n += 1
                folder = f"{rec.stem}_{n}"
            used.add(folder.casefold())
            files.update({f"{folder}/{name}": data for name, data in image_files.items()})
            rows.append({"folder": folder, "file": rec.name, "image_id": rec.id, "status": rec.status, "cells": len(rec.rows)})
    rows += later
    rows += [{"image_id": i, "status": MISSING} for i in missing]
    extra = {MISSING_TXT: missing_txt(list(missing))} if missing else {}
    return zip_bytes({MANIFEST: manifest_csv(rows), **extra, **files})
