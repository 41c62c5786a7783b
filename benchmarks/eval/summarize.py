"""Print the Markdown result tables of benchmarks/eval/README.md from the reports' results.json files.

    python benchmarks/eval/summarize.py            # all reports in benchmarks/eval/
    python benchmarks/eval/summarize.py DIR        # reports in DIR

Each report folder holds one ``segany eval`` run; the tables group them by protocol, then data set.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

NAMES = {"grabcut": "GrabCut", "canny": "Canny"}


def _fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, (int, float)) and value < 0:
        return "–"  # pycocotools' -1: no object of that size
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _reports(folder: Path) -> list[dict[str, Any]]:
    runs = []
    for path in sorted(folder.glob("*/results.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        for method, result in data["methods"].items():
            runs.append({"protocol": data["protocol"], "dataset": data["dataset"]["name"], "method": method,
                         "result": result, "settings": data["settings"]})
    return runs


def tables(folder: Path) -> str:
    runs = _reports(folder)
    out: list[str] = []

    def rows(protocol: str) -> list[dict[str, Any]]:
        # Model rows before baseline rows within a data set.
        chosen = [r for r in runs if r["protocol"] == protocol]
        return sorted(chosen, key=lambda r: (r["dataset"], r["method"] in NAMES, r["method"]))

    points = rows("points")
    if points:
        out += ["Points (center clicks, top-ranked mask; oracle = best of 3 at the first click; max 20 clicks):", "",
                "| data | method | objects | mIoU@1 | oracle@1 | mIoU@3 | mIoU@5 | mIoU@9 | NoC@85 | NoC@90 |",
                "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in points:
            top, oracle = r["result"]["metrics"]["top"], r["result"]["metrics"]["oracle"]
            cells = [top["num_objects"], top["miou@1"], oracle["miou@1"], top["miou@3"], top["miou@5"], top["miou@9"]]
            cells += [_fmt(top["noc@85"], 1), _fmt(top["noc@90"], 1)]
            out.append(
                f"| {r['dataset']} | {NAMES.get(r['method'], r['method'])} | " + " | ".join(map(_fmt, cells)) + " |"
            )
        out.append("")
    boxes = rows("boxes")
    if boxes:
        out += [
            "Boxes (ground-truth boxes, COCO mask AP via pycocotools):",
            "",
            "| data | method | objects | AP | AP50 | AP75 | mIoU |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in boxes:
            m = r["result"]["metrics"]
            cells = [m["num_objects"], m["AP"], m["AP50"], m["AP75"], m["mIoU"]]
            out.append(
                f"| {r['dataset']} | {NAMES.get(r['method'], r['method'])} | " + " | ".join(map(_fmt, cells)) + " |"
            )
        out.append("")
    edges = rows("edges")
    if edges:
        out += ["Edges (BSDS500 test subset, all annotators):", "",
                "| method | images | ODS | OIS | AP | R50 |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for r in edges:
            m = r["result"]["metrics"]
            cells = [r["result"].get("num_images", 0), m["ODS"], m["OIS"], m["AP"], m["R50"]]
            out.append(f"| {NAMES.get(r['method'], r['method'])} | " + " | ".join(map(_fmt, cells)) + " |")
        out.append("")
    proposals = rows("proposals")
    if proposals:
        out += ["Proposals (32x32 grid, no filters, NMS 0.9, top 1000):", "",
                "| data | method | objects | AR@100 | AR@1000 | ABO@100 | proposals/image |",
                "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
        for r in proposals:
            m = r["result"]["metrics"]
            cells = [m["num_objects"], m["AR@100"], m["AR@1000"], m["ABO@100"], _fmt(m["proposals_per_image"], 1)]
            out.append(
                f"| {r['dataset']} | {NAMES.get(r['method'], r['method'])} | " + " | ".join(map(_fmt, cells)) + " |"
            )
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(tables(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent))
