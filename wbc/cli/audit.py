"""`wbc-audit` / `python audit.py data=<config> [data.root=...] [oof=<CV sweep dir>]`: audit a dataset.

Reads the dataset exactly as training does (the data config's DataModule: manifest, mask encoding,
the persisted split file of data.splits, written on first use as training would), then runs the pure
audit (wbc.audit) and writes audit.json + audit.md to the run dir. Problems in the data are
findings, not errors: the command fails only when the dataset cannot be listed at all.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from wbc.cli import CONFIG_DIR, prepare
from wbc.run import extras, task_wrapper

log = logging.getLogger("wbc")


def load_split(dm) -> tuple[dict | None, dict]:
    """(the persisted split of the DataModule's data config or None, what to say about it)."""
    from wbc.data.splits import SplitError

    user_file = dm.splits_cfg.get("file")
    path = Path(str(user_file)) if user_file else dm.splits_path()
    existed = path.is_file()
    try:
        splits = dm.load_splits()
    except SplitError as err:
        log.warning("audit: no leakage check: %s", err)
        return None, {"split_file": str(path), "split_error": str(err)}
    info = {"split_file": str(path), "fold": dm.fold, "k": len(splits["folds"]), "n_test": len(splits["test"])}
    if not existed:
        info["split_note"] = "the split file did not exist: written now, as training would"
    return splits, info


@task_wrapper
def audit(cfg: DictConfig) -> tuple[dict, dict]:
    """Audit cfg.data; returns (findings, {"report": the full report, "datamodule": dm})."""
    from hydra.utils import instantiate
    from rich.progress import track

    from wbc.audit.core import audit_samples, unchecked_listing
    from wbc.audit.report import print_summary, write_report
    from wbc.data.manifest import ManifestError
    from wbc.io import write_json, write_text

    out = Path(cfg.paths.output_dir)
    dm = instantiate(cfg.data, _convert_="partial")
    dm.prepare_data()
    meta = {"name": dm.name, "root": str(dm.root), "layout": dm.layout, "single_cell": dm.single_cell}
    try:
        manifest = dm.load_manifest()
        samples, classes = manifest.samples, manifest.classes
        splits, split_info = load_split(dm)
    except ManifestError as err:  # missing files / unknown classes: training would stop here, the audit lists them all
        meta["listing_error"] = str(err)
        try:
            samples = unchecked_listing(dm.root, dm.layout, dm.csv_name, dm.drop_classes, dm.filters, dm.allow_outside_root, dm.max_pixels,
                                        dm.bit_depth)
        except Exception:  # the listing itself is broken: nothing else can be checked
            write_json(out / "audit.json", {"dataset": meta, "manifest_error": str(err)})
            write_text(out / "audit.md", f"# Dataset audit: {dm.name}\n\nThe dataset cannot be listed:\n\n{err}\n")
            raise err from None
        log.warning("audit: the dataset does not load for training (%s); auditing its %d listed rows", err, len(samples))
        classes = list(dm.classes or sorted({s.class_name for s in samples}))
        splits, split_info = None, {"split_error": "not checked: the dataset does not load for training (see listing_error)"}
    report = audit_samples(
        samples, classes, dm.encoding, splits=splits, fold=dm.fold,
        radius=int(cfg.near_duplicate_distance), search=cfg.get("near_duplicate_search"),
        min_match=cfg.get("near_duplicate_match"), oof=cfg.get("oof"), label_method=cfg.get("label_issue_method", "auto"),
        progress=lambda it: track(it, description=f"auditing {dm.name}", total=len(samples), transient=True),
        meta={**meta, **split_info},
    )
    json_path, md_path = write_report(report, out, int(cfg.show))
    print_summary(report, min(int(cfg.show), 10))
    print(f"\nAudit of {dm.name} written to {json_path} and {md_path}")
    return report["findings"], {"report": report, "datamodule": dm}


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="audit.yaml")
def run(cfg: DictConfig) -> None:
    extras(cfg)
    audit(cfg)


def main() -> None:
    """Console script `wbc-audit` (and `python audit.py`)."""
    prepare()
    run()
