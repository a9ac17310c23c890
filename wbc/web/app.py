"""The FastAPI app: the page (static files, no CDN), the JSON API it uses (documented at /docs, served
from local files), security headers on every response, plain-words errors.

`create_app(pipe, info, settings)` takes an already loaded pipeline, so tests and benchmarks build it
in-process; `wbc.cli.serve` loads the models once and runs it under uvicorn.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile

from wbc.cell_outputs import UNCLASSIFIED_COLOUR, class_colour
from wbc.data.imageio import ImageReadError
from wbc.web.engine import DOWNLOADS, Engine, Limits, NotFound, StepError, TooLarge
from wbc.web.guard import CSP, DOCS_CSP, GuardedResponses  # noqa: F401 - CSP: the page's, imported from here
from wbc.web.jobs import Busy, JobRunner
from wbc.web.model_info import describe
from wbc.web.store import ImageRecord, ResultStore, display_name
from wbc.web.zipping import zip_all

log = logging.getLogger("wbc")
STATIC = Path(__file__).parent / "static"
UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {"file": {"type": "string", "format": "binary"}}}}},
    }
}


@dataclass(frozen=True)
class Settings:
    max_file_mb: float = 50.0
    max_pixels: int | None = None
    max_images: int = 100
    max_age_min: float = 240.0
    max_store_mb: float = 2048.0
    jobs: int = 2
    queue: int = 32
    # the calls on every user's images (list, delete, ZIP without ids): off, since anyone who can reach the
    # page could otherwise see and fetch other people's uploads; an image is reached by its unguessable id
    every_user: bool = False
    # uploads being read at once (None: jobs + queue, what the workers could take next): each holds its body in
    # memory; one more is answered 503 at once. A body not fully arrived after upload_timeout_s is refused (408),
    # so a stalled client cannot hold its part of the memory forever
    uploads: int | None = None
    upload_timeout_s: float = 120.0


class HTTPProblem(Exception):
    """An error answered as {"detail": message} with a status code."""

    def __init__(self, status: int, message: str, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


class Slots:
    """A count of things in progress, at most `limit`; taken without waiting (the answer is 503 at once). A
    threading lock: a test client may run requests on several event loops."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"uploads must be >= 1, got {limit}")
        self.limit, self.used, self._lock = int(limit), 0, threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self.used >= self.limit:
                return False
            self.used += 1
            return True

    def give(self) -> None:
        with self._lock:
            self.used -= 1


def _timing_header(timings: dict[str, float]) -> dict[str, str]:
    """Server-Timing, so the browser's network panel (and the benchmark) see the split by step."""
    return {"Server-Timing": ", ".join(f"{k.removesuffix('_ms')};dur={v}" for k, v in timings.items())}


def _swagger_dir() -> Path | None:
    """Swagger UI's files from the fastapi-offline package (no CDN), when installed."""
    try:
        import fastapi_offline
    except ImportError:
        return None
    d = Path(fastapi_offline.__file__).parent / "static"
    return d if (d / "swagger-ui-bundle.js").is_file() else None


def create_app(pipe: Any, info: dict | None = None, settings: Settings | None = None) -> FastAPI:
    s = settings or Settings()
    engine = Engine(pipe, Limits(s.max_file_mb, s.max_pixels))
    store = ResultStore(s.max_images, s.max_age_min, s.max_store_mb)
    runner = JobRunner(s.jobs, s.queue)
    uploading = Slots(s.uploads if s.uploads is not None else s.jobs + s.queue)
    colours = {c: list(class_colour(engine.classes, c)) for c in engine.classes}
    model = {**(info if info is not None else describe(pipe, None, "in-process model")), "colours": colours, "unclassified_colour": list(UNCLASSIFIED_COLOUR), "limits": {"max_file_mb": s.max_file_mb, "max_pixels": s.max_pixels, "max_images": s.max_images, "max_age_min": s.max_age_min, "jobs": s.jobs, "every_user": s.every_user}}
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        runner.shutdown()

    app = FastAPI(
        title="wbc-lab web app", version="1", docs_url=None, redoc_url=None, lifespan=lifespan,
        description="Upload a smear image, segment its nuclei, classify the cells, download masks, tables and QuPath GeoJSON.",
    )
    app.state.engine, app.state.store, app.state.runner = engine, store, runner

    @app.exception_handler(HTTPProblem)
    async def problem(_request: Request, err: HTTPProblem) -> JSONResponse:
        return JSONResponse({"detail": err.message}, status_code=err.status, headers=err.headers)

    @app.exception_handler(ImageReadError)
    async def bad_image(_request: Request, err: ImageReadError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=400)

    @app.exception_handler(TooLarge)
    async def too_large(_request: Request, err: TooLarge) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=413)

    @app.exception_handler(StepError)
    async def bad_step(_request: Request, err: StepError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=409)

    @app.exception_handler(NotFound)
    async def not_found(_request: Request, err: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=404)

    @app.exception_handler(Busy)
    async def busy(_request: Request, err: Busy) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=503, headers={"Retry-After": "1"})

    def gone(ids: list[str]) -> HTTPProblem:
        """404 naming every id asked for that is not here (a page sends several at once)."""
        kept = f"the server keeps the last {s.max_images} images for {s.max_age_min:g} minutes"
        if len(ids) == 1:
            return HTTPProblem(404, f"no image {ids[0]!r} here: it was deleted or expired ({kept}); upload it again")
        return HTTPProblem(404, f"no image {', '.join(map(repr, ids))} here: they were deleted or expired ({kept}); upload them again")

    def record(image_id: str) -> ImageRecord:
        rec = store.get(image_id)
        if rec is None:
            raise gone([image_id])
        return rec

    def too_big(head: bytes) -> HTTPProblem:
        """413 naming the file when its part header has arrived (the body is not read further)."""
        found = re.search(rb'filename="([^"\r\n]*)"', head[:4096])
        name = display_name(found.group(1).decode("utf-8", "replace")) + ": " if found else ""
        return HTTPProblem(413, f"{name}the upload is larger than the limit max_file_mb={s.max_file_mb:g}")

    async def read_body(request: Request) -> bytes:
        """The request body; refused as soon as it passes the size limit."""
        limit = engine.limits.max_bytes + 2**20  # + the multipart envelope
        length = request.headers.get("content-length", "")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit or (length.isdigit() and int(length) > limit):  # from the length: the first chunk only
                raise too_big(bytes(body))
        if length.isdigit() and int(length) > limit:  # a body that ended early
            raise too_big(bytes(body))
        return bytes(body)

    async def read_upload(request: Request) -> tuple[bytes, str]:
        """The file of a multipart upload, read in one of the `uploads` slots and within upload_timeout_s."""
        if not uploading.take():
            raise HTTPProblem(503, f"the server is busy ({uploading.limit} uploads arriving); try again in a moment", {"Retry-After": "1"})
        try:
            try:
                request._body = await asyncio.wait_for(read_body(request), s.upload_timeout_s)  # the form parser reads it, never the socket
            except TimeoutError as err:
                raise HTTPProblem(408, f"the upload did not arrive within {s.upload_timeout_s:g} s; try again", {"Connection": "close"}) from err
            try:
                form = await request.form(max_files=1, max_fields=8)
            except Exception as err:  # noqa: BLE001 - a malformed body is the client's error, said plainly
                raise HTTPProblem(400, f"expected a multipart/form-data upload with one 'file' field ({err})") from err
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise HTTPProblem(400, "expected a multipart/form-data upload with one 'file' field")
            data = await upload.read()
            await form.close()
            return data, upload.filename or "image"
        finally:
            uploading.give()

    async def add_image(request: Request) -> ImageRecord:
        data, name = await read_upload(request)
        shown = display_name(name)
        engine.check_upload(data, shown)  # size and type before decoding, on the loop: cheap
        rgb, decode_ms = await runner.run(engine.decode, data, shown)

        def first_view(rec: ImageRecord) -> None:
            rec.timings["decode_ms"] = decode_ms
            engine.publish(rec)

        return store.add(shown, rgb, first_view)

    async def step_or_forget(rec: ImageRecord, step: Awaitable[dict]) -> dict:
        """The step of an upload that segments too; when it fails (busy, an error, the client gone) the
        image is deleted: nobody has its id, yet it would count toward max_images and evict others' images."""
        try:
            return await step
        except BaseException:
            store.delete(rec.id)
            raise

    def every_user(call: str) -> None:
        if not s.every_user:
            raise HTTPProblem(403, f"{call} would act on every user's images, which this server does not allow (it would show one "
                                   "person's uploads to anyone who can reach the page): pass ids=<the ids your uploads returned>, "
                                   "or start serve.py with every_user=true on a server only you use")

    def answer(state: dict) -> JSONResponse:
        return JSONResponse(state, headers=_timing_header(state.get("timings", {})))

    # ----------------------------------------------------------------------------- the API
    @app.get("/api/model", tags=["model"], summary="The loaded model: classes, input sizes, training date, test figures, limits")
    async def get_model() -> dict:
        return model

    @app.get("/api/health", tags=["model"], summary="Jobs running or waiting, and the result store's use")
    async def health() -> dict:
        return {"ok": True, "jobs_pending": runner.pending, "store": store.usage()}

    @app.post("/api/images", tags=["images"], summary="Upload one image (multipart field 'file'); ?segment=true segments it too", openapi_extra=UPLOAD_BODY)
    async def upload(request: Request, segment: bool = False) -> JSONResponse:
        rec = await add_image(request)
        state = await step_or_forget(rec, runner.run(engine.segment, rec)) if segment else engine.view(rec)
        store.trim()
        return answer(state)

    @app.post("/api/predict", tags=["images"], summary="Upload, segment and classify one image in one call (for scripts)", openapi_extra=UPLOAD_BODY)
    async def predict(request: Request) -> JSONResponse:
        rec = await add_image(request)
        state = await step_or_forget(rec, runner.run(_segment_and_classify, engine, rec))
        store.trim()
        return answer(state)

    @app.get("/api/images", tags=["images"], summary="Every image kept on the server, every user's (without their cells); 403 unless serve.py every_user=true")
    async def list_images() -> list[dict]:
        every_user("GET /api/images")
        return [{k: v for k, v in engine.view(r).items() if k != "cells"} for r in store.all()]

    @app.delete(
        "/api/images", tags=["images"],
        summary="Delete these images (ids=a,b,...): {deleted: n, unknown: [ids not here]}, 404 when none is; without ids every image on the server, every user's (403 unless serve.py every_user=true)",
    )
    async def delete_all(ids: str | None = None) -> dict:
        if ids is None:
            every_user("DELETE /api/images without ids")
            return {"deleted": store.clear(), "unknown": []}
        asked = [i for i in ids.split(",") if i]
        deleted, unknown = store.delete_ids(asked)
        if asked and not deleted:
            raise gone(unknown)
        return {"deleted": deleted, "unknown": unknown}

    @app.get("/api/images/{image_id}", tags=["images"], summary="One image's state, cells and outlines (its last finished step)")
    async def get_image(image_id: str) -> JSONResponse:
        return answer(engine.view(record(image_id)))

    @app.delete("/api/images/{image_id}", tags=["images"], summary="Delete one image and its results")
    async def delete_image(image_id: str) -> Response:
        if not store.delete(image_id):
            record(image_id)  # the 404 message
        return Response(status_code=204)

    @app.post("/api/images/{image_id}/segment", tags=["steps"], summary="Segment: nuclei, cells, outlines (drops an earlier classification)")
    async def segment(image_id: str) -> JSONResponse:
        state = await runner.run(engine.segment, record(image_id))
        store.trim()
        return answer(state)

    @app.post("/api/images/{image_id}/classify", tags=["steps"], summary="Classify the segmented cells (reuses the stored segmentation)")
    async def classify(image_id: str) -> JSONResponse:
        return answer(await runner.run(engine.classify, record(image_id)))

    @app.get("/api/images/{image_id}/image.png", tags=["files"], summary="The image as uploaded, as PNG (what the page draws on)")
    async def image_png(image_id: str) -> Response:
        return Response(await runner.run(engine.display_png, record(image_id)), media_type="image/png")

    @app.get("/api/images/{image_id}/crops/{cell}.png", tags=["files"], summary="One cell's crop")
    async def crop_png(image_id: str, cell: int) -> Response:
        return Response(await runner.run(engine.crop_png, record(image_id), cell), media_type="image/png")

    @app.get(
        "/api/images/{image_id}/files/{kind}", tags=["files"],
        summary="A download: " + ", ".join(DOWNLOADS) + " (mask: binary 8-bit; labels: 16-bit instance ids; geojson: QuPath)",
    )
    async def download(image_id: str, kind: str) -> Response:
        rec = record(image_id)
        data = await runner.run(engine.download, rec, kind)
        return Response(data, media_type=DOWNLOADS[kind], headers={"Content-Disposition": f'attachment; filename="{rec.stem}_{kind}"'})

    @app.get(
        "/api/files/all.zip", tags=["files"],
        summary="These images' files in one ZIP, a folder each, and manifest.csv (ids=a,b,...; ids no longer here are named in "
        "manifest.csv and missing.txt, 404 when none is here; without ids every segmented image on the server, every user's: 403 unless serve.py every_user=true)",
    )
    async def all_zip(ids: str | None = None) -> Response:
        missing: list[str] = []
        if ids is None:
            every_user("GET /api/files/all.zip without ids")
            recs = store.all()
        else:  # an image that expired since the page listed it must not cost the page the others
            found = {i: store.get(i) for i in dict.fromkeys(ids.split(",")) if i}
            recs = [r for r in found.values() if r is not None]
            missing = [i for i, r in found.items() if r is None]
            if missing and not recs:
                raise gone(missing)
        if ids is None:  # every image on the server: the segmented ones
            recs = [r for r in recs if r.labels is not None]
        if not any(r.labels is not None for r in recs):  # asked-for images not segmented yet get a manifest row
            raise HTTPProblem(409, "no segmented image to download yet: segment an image first")
        data = await runner.run(zip_all, engine, recs, missing)
        return Response(data, media_type="application/zip", headers={"Content-Disposition": 'attachment; filename="wbc_results.zip"'})

    # ----------------------------------------------------------------------------- the page and the docs
    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> FileResponse:
        return FileResponse(STATIC / "docs.html", media_type="text/html")

    # outside the exception handlers: the headers go on every answer, the 500s made here included
    app.add_middleware(GuardedResponses)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    swagger = _swagger_dir()
    if swagger is not None:
        app.mount("/docs-assets", StaticFiles(directory=swagger), name="docs-assets")
    return app


def _segment_and_classify(engine: Engine, rec: ImageRecord) -> dict:
    state = engine.segment(rec)
    return engine.classify(rec) if engine.has_classifier else state

