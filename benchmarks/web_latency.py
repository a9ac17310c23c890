"""Web app latency over loopback HTTP: upload -> overlay shown, upload -> classified table shown, for a
256 px and a 640x480 synthetic field, the server-side time split by step, and 8 concurrent clients x
10 uploads (no error, no lost result, p95 latency).

    python benchmarks/web_latency.py --run <pipeline run dir> [--runs 20] [--screenshots docs/]
    python benchmarks/web_latency.py --tiny        (the tests' untrained tiny models: plumbing only)

With --run the server is the real entry point (`python serve.py run=... port=...`, its own process,
models loaded once at start; the start time is printed). "Overlay shown" = what the page waits for
before it can draw the outlines: POST /api/images (upload + decode), POST .../segment (cells and
outlines), GET .../image.png (the picture it draws on), one after the other; "table shown" adds POST
.../classify. The page's own drawing (a canvas, a few ms) is not included. Median and p90 over --runs
after --warmup. --screenshots DIR also drives Chromium (/usr/bin/chromium) through one image and
saves the page in both themes (small PNGs for the README).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PROJECT_ROOT", str(ROOT))
STEPS = ("decode_ms", "segment_ms", "cells_ms", "outlines_ms", "classify_ms", "review_ms")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default=None, help="pipeline run dir (else --tiny)")
    p.add_argument("--tiny", action="store_true", help="untrained tiny models in-process (no run needed)")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--uploads", type=int, default=10, help="uploads per concurrent client")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads in the server")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a serve.py override, e.g. --set scale=0.4 (repeatable)")
    p.add_argument("--screenshots", default=None, help="save the page in both themes into this dir")
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)
    if not args.run and not args.tiny:
        p.error("pass --run <pipeline run dir> (python train.py experiment=pipeline) or --tiny")
    return args


def images() -> dict[str, bytes]:
    """A 256x256 synthetic smear image and a 640x480 field (cells at the training size), as PNG."""
    import cv2

    from wbc.data.synthetic import CLASS_NAMES, SyntheticSpec, render_field, render_image

    spec = SyntheticSpec()
    small = render_image(spec, 7, CLASS_NAMES[0])[0]
    big = render_field(spec, 11, grid=(2, 3))[0][16:496, 64:704]
    assert small.shape[:2] == (256, 256) and big.shape[:2] == (480, 640), (small.shape, big.shape)
    return {name: cv2.imencode(".png", img[..., ::-1])[1].tobytes() for name, img in (("256x256", small), ("640x480", big))}


@contextmanager
def server(args: argparse.Namespace):
    """(base URL, how it was started): serve.py in its own process, or the tiny models in-process."""
    if args.run:
        from wbc.cli.serve import free_port

        port = free_port("127.0.0.1", None)
        cmd = [sys.executable, str(ROOT / "serve.py"), f"run={args.run}", f"port={port}", f"hydra.run.dir={ROOT / 'outputs' / 'serve' / 'bench'}"]
        if args.threads:
            cmd.append(f"threads={args.threads}")
        cmd += args.set
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_up(url, proc)
            yield url, f"python serve.py run={args.run} {' '.join(args.set)}".rstrip() + f" (ready {time.perf_counter() - t0:.1f} s after launch, models loaded once)"
        finally:
            proc.terminate()
            proc.wait(timeout=20)
        return
    import torch

    from tests.helpers_models import tiny_modules
    from tests.helpers_web import web_pipeline
    from wbc.cli import prepare
    from wbc.web.app import create_app
    from wbc.web.background import serve_in_background

    prepare()
    if args.threads:
        torch.set_num_threads(args.threads)
    import tempfile

    clf = tiny_modules(Path(tempfile.mkdtemp()))[1]
    with serve_in_background(create_app(web_pipeline(clf))) as url:
        yield url, "the tests' untrained tiny models (dark-nucleus stand-in segmenter), in-process"


def _wait_up(url: str, proc: subprocess.Popen, timeout_s: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"serve.py exited ({proc.returncode}):\n{proc.stdout.read() if proc.stdout else ''}")
        try:
            if httpx.get(url + "/api/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"serve.py did not answer within {timeout_s} s")


def one_flow(client, data: bytes) -> dict:
    """Upload -> segment -> image -> classify; wall times (ms) and the server's step times."""
    t0 = time.perf_counter()
    r = client.post("/api/images", files={"file": ("field.png", data, "image/png")})
    r.raise_for_status()
    iid = r.json()["id"]
    seg = client.post(f"/api/images/{iid}/segment")
    seg.raise_for_status()
    client.get(f"/api/images/{iid}/image.png").raise_for_status()
    overlay = 1e3 * (time.perf_counter() - t0)
    cls = client.post(f"/api/images/{iid}/classify")
    cls.raise_for_status()
    table = 1e3 * (time.perf_counter() - t0)
    client.delete(f"/api/images/{iid}")
    return {"overlay_ms": overlay, "table_ms": table, "cells": seg.json()["count"], **cls.json()["timings"]}


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def latency(url: str, imgs: dict[str, bytes], runs: int, warmup: int) -> dict:
    import httpx

    out = {}
    with httpx.Client(base_url=url, timeout=120) as client:
        for name, data in imgs.items():
            for _ in range(warmup):
                one_flow(client, data)
            rows = [one_flow(client, data) for _ in range(runs)]
            fig = {k: statistics.median(r[k] for r in rows) for k in ("overlay_ms", "table_ms", *STEPS) if k in rows[0]}
            fig.update(overlay_p90_ms=pct([r["overlay_ms"] for r in rows], 0.9), table_p90_ms=pct([r["table_ms"] for r in rows], 0.9), cells=rows[0]["cells"])
            out[name] = fig
    return out


def concurrent(url: str, data: bytes, clients: int, uploads: int) -> dict:
    """`clients` threads, each uploading `uploads` times through /api/predict; then every result is
    fetched back (none lost)."""
    import httpx

    def client_loop(k: int) -> list[tuple[float, int, str | None]]:
        res = []
        with httpx.Client(base_url=url, timeout=300) as c:
            for i in range(uploads):
                t0 = time.perf_counter()
                r = c.post("/api/predict", files={"file": (f"c{k}_{i}.png", data, "image/png")})
                res.append((1e3 * (time.perf_counter() - t0), r.status_code, r.json().get("id") if r.status_code == 200 else None))
        return res

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [x for part in pool.map(client_loop, range(clients)) for x in part]
    wall = time.perf_counter() - t0
    ids = [i for _, code, i in results if code == 200 and i]
    with httpx.Client(base_url=url, timeout=60) as c:
        kept = sum(c.get(f"/api/images/{i}").status_code == 200 for i in ids)
    ms = [m for m, _, _ in results]
    return {
        "requests": len(results), "errors": sum(code != 200 for _, code, _ in results), "results_kept": kept,
        "p50_ms": pct(ms, 0.5), "p95_ms": pct(ms, 0.95), "max_ms": max(ms), "throughput_img_s": len(results) / wall,
    }


def screenshots(url: str, data: bytes, out_dir: Path) -> list[Path]:
    """The page after upload, Segment, Classify and a cell click, in both themes (small PNGs)."""
    import cv2
    import numpy as np
    from playwright.sync_api import sync_playwright

    out_dir.mkdir(parents=True, exist_ok=True)
    saved = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1440, "height": 820}, color_scheme="light")
        page.goto(url)
        page.set_input_files("#file-input", [{"name": "smear_640x480.png", "mimeType": "image/png", "buffer": data}])
        page.wait_for_selector("#segment-btn:not([disabled])")
        page.click("#segment-btn")
        page.wait_for_selector("#classify-btn", state="visible")
        page.click("#classify-btn")
        page.wait_for_selector("#cell-table tbody tr td:nth-child(2):not(:empty)")
        page.wait_for_timeout(300)
        page.locator("#cell-table tbody tr").nth(1).click()
        page.wait_for_timeout(300)
        for theme in ("day", "dark"):
            if theme == "dark":
                page.click("#theme-toggle")
                page.wait_for_timeout(200)
            img = cv2.imdecode(np.frombuffer(page.screenshot(), np.uint8), cv2.IMREAD_COLOR)
            small = cv2.resize(img, (1080, round(img.shape[0] * 1080 / img.shape[1])), interpolation=cv2.INTER_AREA)
            path = out_dir / f"web_{theme}.jpg"  # a small copy for the README
            cv2.imwrite(str(path), small, [cv2.IMWRITE_JPEG_QUALITY, 85])
            saved.append(path)
        browser.close()
    return saved


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import warnings

    warnings.filterwarnings("ignore")
    imgs = images()
    with server(args) as (url, how):
        print(f"server: {how}; {os.cpu_count()} CPU cores")
        lat = latency(url, imgs, args.runs, args.warmup)
        conc = concurrent(url, imgs["256x256"], args.clients, args.uploads)
        shots = screenshots(url, imgs["640x480"], Path(args.screenshots)) if args.screenshots else []
    print("\n| image | cells | upload -> overlay shown, median (p90) | upload -> classified table, median (p90) | server: decode / segment / cells / outlines / classify / review ms |")
    print("|---|---|---|---|---|")
    for name, f in lat.items():
        split = " / ".join(f"{f.get(k, 0):.1f}" for k in STEPS)
        print(f"| {name} | {f['cells']} | {f['overlay_ms']:.0f} ms ({f['overlay_p90_ms']:.0f}) | {f['table_ms']:.0f} ms ({f['table_p90_ms']:.0f}) | {split} |")
    print(
        f"\n{args.clients} clients x {args.uploads} uploads (256x256, /api/predict): {conc['requests']} requests, {conc['errors']} errors, "
        f"{conc['results_kept']} results kept; latency p50 {conc['p50_ms']:.0f} ms, p95 {conc['p95_ms']:.0f} ms, max {conc['max_ms']:.0f} ms; "
        f"{conc['throughput_img_s']:.1f} images/s"
    )
    for p in shots:
        print(f"screenshot: {p}")
    if args.out:
        Path(args.out).write_text(json.dumps({"server": how, "latency": lat, "concurrent": conc}, indent=2))
    return 0 if conc["errors"] == 0 and conc["results_kept"] == conc["requests"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
