"""What the audit writes and prints: audit.json (everything), audit.md (the short version) and a
rich summary on the terminal. Lists are cut to `show` entries in audit.md and on screen only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from wbc.io import write_json, write_text

JSON_NAME, MD_NAME = "audit.json", "audit.md"
FINDING_LABELS = {
    "bad_files": "images with unreadable / truncated / mismatched files",
    "exact_duplicate_groups": "exact duplicates (groups of identical pixels)",
    "near_duplicate_pairs": "near-duplicate pairs (pHash radius, or pixel match)",
    "near_duplicate_pairs_confirmed": "... of them confirmed by the pixel match",
    "duplicate_clusters": "clusters of copies (exact or confirmed near)",
    "redundant_images": "images beyond the first of each cluster",
    "duplicate_label_conflicts": "duplicate pairs with different labels",
    "leaking_pairs_test": "duplicate pairs across the test split",
    "leaking_pairs_cv": "duplicate pairs across train/val of a CV fold",
    "leaking_pairs_possible": "unconfirmed near pairs (pHash only) on two sides",
    "leaking_groups": "groups (patient/slide) on two sides",
    "empty_nucleus": "masks without nucleus pixels",
    "nucleus_outside_cytoplasm": "masks with a nucleus part touching no cytoplasm",
    "nucleus_touches_border": "masks whose nucleus touches the image border",
    "label_issues": "label issues from out-of-fold predictions",
}


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return lines


def _more(n: int, show: int) -> list[str]:
    return [f"... and {n - show} more (audit.json lists all)"] if n > show else []


def _pair_rows(pairs: Sequence[Mapping], show: int, leak: bool = False) -> list[list[Any]]:
    rows = []
    for p in pairs[:show]:
        kind = p.get("kind", "near") + ("" if p.get("confirmed", True) else " (unconfirmed)")
        row = [p["a"], p["b"], kind, p.get("distance"), p.get("match"), " / ".join(p.get("classes", []))]
        if leak:
            row += [" / ".join(p["sides"]), "; ".join(p["where"])]
        rows.append(row)
    return rows


PAIR_HEADER = ["a", "b", "kind", "pHash distance", "pixel match", "classes"]


def to_markdown(report: Mapping, show: int = 20) -> str:
    """audit.md: the findings table and the first `show` entries of each list."""
    ds, counts, images, masks = report["dataset"], report["counts"], report["images"], report["masks"]
    dupes, leaks, issues = report["duplicates"], report["leakage"], report["label_issues"]
    out = [f"# Dataset audit: {ds.get('name', '?')} ({ds['date']})", ""]
    out += [f"- root: `{ds.get('root', '?')}`; {ds['n_samples']} images; classes {', '.join(ds['classes'])}"]
    if ds.get("split_file"):
        out += [f"- split: `{ds['split_file']}` (fold {ds.get('fold')} of k={ds.get('k')}; {ds.get('n_test')} test images)"]
    if ds.get("listing_error"):
        out += [f"- **the dataset does not load for training**: {ds['listing_error']}"]
    if ds.get("split_error"):
        out += [f"- split: not checked ({ds['split_error']})"]
    out += ["", "## Findings", "", *_table(["check", "count"], [[FINDING_LABELS.get(k, k), v] for k, v in report["findings"].items()])]
    out += ["", "## Classes", "", f"Imbalance ratio (largest / smallest class): {_fmt(counts['imbalance_ratio'])}", ""]
    shares = masks["share_per_class"]
    out += _table(["class", "images", "nucleus share (mean)", "cytoplasm share (mean)"],
                  [[c, n, shares.get(c, {}).get("nucleus_mean"), shares.get(c, {}).get("cytoplasm_mean")] for c, n in counts["per_class"].items()])
    if counts["per_group"]:
        groups = list(counts["per_group"].items())
        out += ["", f"{counts['n_groups']} groups ({counts['ungrouped']} images without one); largest: "
                + ", ".join(f"{g} ({n})" for g, n in groups[:show]) + (" ..." if len(groups) > show else "")]
    else:
        out += ["", "No group column (patient/slide): splits cannot be grouped."]
    out += ["", "## Files", ""]
    out += ["- image sizes: " + ", ".join(f"{s} ({n})" for s, n in list(images["sizes"].items())[:show])]
    out += ["- image modes: " + ", ".join(f"{s} ({n})" for s, n in images["modes"].items())]
    out += ["- mask modes: " + (", ".join(f"{s} ({n})" for s, n in images["mask_modes"].items()) or "no masks")]
    out += ["- mask values (pixels): " + ", ".join(f"{v}: {n}" for v, n in masks["values"].items())]
    problems = report["problems"]
    out += ["", f"## Bad files ({len(problems)})", ""]
    out += _table(["id", "kind", "file", "detail"], [[p["id"], p["kind"], p["file"], p["detail"]] for p in problems[:show]]) if problems else ["None."]
    out += _more(len(problems), show)
    out += ["", f"## Duplicates ({dupes['n_exact_groups']} exact groups, {dupes['n_near_pairs']} near pairs)", ""]
    s = dupes["settings"]
    out += [f"Near: pHash distance <= {s['phash_radius']}, or <= {s['search_radius']} with a pixel match >= {s['min_match']} "
            "(one image's centre found in the other: 1.0 = the same pixels up to a shift). A pair within the pHash radius "
            "but with a low match may be two similar-looking cells.", ""]
    if dupes["clusters"]:
        out += ["Clusters (copies of one field): " + "; ".join(", ".join(c) for c in dupes["clusters"][:show]), ""]
    pairs = [*dupes["exact_pairs"], *dupes["near_pairs"]]
    out += _table(PAIR_HEADER, _pair_rows(pairs, show)) if pairs else ["None."]
    out += _more(len(pairs), show)
    out += ["", "## Leakage", ""]
    if leaks is None:
        out += ["Not checked (no split)."]
    else:
        out += [f"{leaks['test_pairs']} duplicate pair(s) across the test split, {leaks['fold_pairs']} across train/val "
                f"of a CV fold (exact or confirmed near duplicates), {leaks['possible_pairs']} unconfirmed near pair(s) "
                f"on two sides, {len(leaks['groups'])} group(s) on two sides. Sides: where the configured fold puts "
                "each image; where: every crossing (test vs train/val holds for every fold)."]
        if leaks["pairs"]:
            out += ["", *_table([*PAIR_HEADER, "sides (fold)", "where"], _pair_rows(leaks["pairs"], show, leak=True))]
            out += _more(len(leaks["pairs"]), show)
        if leaks["groups"]:
            out += ["", *_table(["group", "images", "sides", "where"], [[g["group"], g["n"], ", ".join(g["sides"]), "; ".join(g["where"])] for g in leaks["groups"][:show]])]
    out += ["", "## Mask sanity", ""]
    for key in ("empty_nucleus", "nucleus_outside_cytoplasm", "nucleus_touches_border"):
        items = masks[key]
        names = [i if isinstance(i, str) else i["id"] for i in items]
        out += [f"- {FINDING_LABELS[key]}: {len(items)}" + (": " + ", ".join(names[:show]) + (" ..." if len(names) > show else "") if names else "")]
    if issues is not None:
        out += ["", f"## Label issues ({len(issues['issues'])} of {issues['n_images']} images; {issues['method']})", ""]
        out += [f"Source: `{issues['source']}`: {issues['n_crops']} out-of-fold crops; {_fmt(issues['without_predictions'])} "
                "dataset images without a prediction (the test split, normally).", ""]
        out += _table(["id", "cell", "given", "suggested", "self-confidence", "p(suggested)", "flagged crops"],
                      [[i["id"], i["cell"], i["given"], i["suggested"], i["self_confidence"], i["p_suggested"], f"{i['flagged_crops']} of {i['crops']}"]
                       for i in issues["issues"][:show]])
        out += _more(len(issues["issues"]), show)
    return "\n".join(out) + "\n"


def write_report(report: Mapping, out_dir: str | Path, show: int = 20) -> tuple[Path, Path]:
    """audit.json and audit.md in `out_dir`."""
    out_dir = Path(out_dir)
    return write_json(out_dir / JSON_NAME, report), write_text(out_dir / MD_NAME, to_markdown(report, show))


def print_summary(report: Mapping, show: int = 10, console: Any = None) -> None:
    """The findings, classes and the leaking / duplicate pairs as rich tables."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    if console is None:
        console = Console()
        if not console.is_terminal:  # a log file or a pipe: no terminal width to fit, keep the tables readable
            console = Console(width=140)
    ds = report["dataset"]
    console.rule(f"Dataset audit: {ds.get('name', '?')}: {ds['n_samples']} images, {len(ds['classes'])} classes")
    counts, shares = report["counts"], report["masks"]["share_per_class"]
    t = Table("class", "images", "nucleus", "cytoplasm", title=f"imbalance ratio {_fmt(counts['imbalance_ratio'])}")
    for c, n in counts["per_class"].items():
        t.add_row(escape(c), str(n), _fmt(shares.get(c, {}).get("nucleus_mean")), _fmt(shares.get(c, {}).get("cytoplasm_mean")))
    console.print(t)
    images = report["images"]
    console.print("sizes: " + ", ".join(f"{s} ({n})" for s, n in list(images["sizes"].items())[:show]))
    console.print("modes: " + ", ".join(f"{s} ({n})" for s, n in images["modes"].items())
                  + "; masks: " + (", ".join(f"{s} ({n})" for s, n in images["mask_modes"].items()) or "none"))
    f = Table("check", "count", title="findings")
    for k, v in report["findings"].items():
        style = "bold red" if isinstance(v, int) and v > 0 and k.startswith(("leaking", "bad", "exact", "empty")) else ""
        f.add_row(FINDING_LABELS.get(k, k), f"[{style}]{_fmt(v)}[/]" if style else _fmt(v))
    console.print(f)
    for p in report["problems"][:show]:
        console.print(f"[red]{p['kind']}[/] {escape(p['id'])}: {escape(p['detail'])}")
    dupes, leaks = report["duplicates"], report["leakage"]
    tables = [("duplicate pairs", [*dupes["exact_pairs"], *dupes["near_pairs"]], False)]
    if leaks:
        tables.append(("leaking pairs (split on two sides)", leaks["pairs"], True))
    for title, pairs, leak in tables:
        if not pairs:
            continue
        pt = Table(*PAIR_HEADER, *(["sides", "where"] if leak else []), title=f"{title}: {len(pairs)}")
        for row in _pair_rows(pairs, show, leak=leak):
            pt.add_row(*(escape(_fmt(c)) for c in row))
        console.print(pt)
    issues = report["label_issues"]
    if issues and issues["issues"]:
        it = Table("id", "cell", "given", "suggested", "self-confidence", title=f"label issues: {len(issues['issues'])} ({issues['method'].split(' ')[0]})")
        for i in issues["issues"][:show]:
            it.add_row(escape(i["id"]), escape(str(i["cell"])), escape(i["given"]), escape(i["suggested"]), _fmt(i["self_confidence"]))
        console.print(it)
    for g in (leaks or {}).get("groups", [])[:show]:
        console.print(f"[red]group {escape(g['group'])}[/] ({g['n']} images) on {', '.join(g['sides'])}: {'; '.join(g['where'])}")
