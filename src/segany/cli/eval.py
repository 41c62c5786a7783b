"""``segany eval``: zero-shot evaluation protocols (SAM paper §7 / Appendix D) with readable reports."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from segany.errors import SeganyError

HELP = "evaluate a model (or a classical baseline) with SAM's zero-shot protocols and write a report"
EXAMPLES = """protocols:
  points     interactive clicks (SAM §D.1): mIoU after 1, 2, 3, 5, 9 points, NoC@85/90, top mask and oracle
  boxes      box prompts -> masks (SAM §D.4): COCO mask AP from ground-truth boxes or --detections
  proposals  automatic masks as object proposals (SAM §D.3): mask AR@100 / AR@1000
  edges      BSDS500 edge detection (SAM §D.2): ODS, OIS, AP, R50 against gt/*.mat

examples:
  segany eval points --data data/DSB2018 -o reports/points_dsb --limit 200 --max-per-image 5
  segany eval points --data data/DSB2018 -o reports/points_dsb_grabcut --baseline grabcut --limit 50
  segany eval points --data data/DSB2018 -o reports/points_dsb_otsu --baseline otsu --max-clicks 1
  segany eval boxes --data data/CVPPP_A1 -c sam_vit_b_01ec64.pth -o reports/boxes_cvppp --limit 10
  segany eval proposals --data data/CVPPP_A1 -o reports/proposals_cvppp --limit 5
  segany eval edges --data data/BSDS500 --split test -o reports/edges_bsds --limit 20
  segany eval edges --data data/BSDS500 --baseline canny -o reports/edges_canny --limit 20

  segany eval points --data data/DSB2018 -o reports/dsb_by_size --group-by size --limit 300
  segany eval boxes --data data/DSB2018 -o reports/dsb_by_modality --groups modality.csv --group-by modality

--limit counts objects for 'points' and images for the other protocols. Without -c the packaged
default model is used ('-c default' names it explicitly, e.g. next to --baseline). With both -c
and --baseline, both are evaluated and shown together; --compare adds earlier reports' numbers.
REPORT_DIR gets results.json, report.md, plots and cases/ (pictures of the best and worst cases)."""

PROTOCOLS = ("points", "boxes", "proposals", "edges")
BASELINES = {"grabcut": ("points", "boxes"), "otsu": ("points",), "canny": ("edges",)}


class EvalError(SeganyError):
    """The evaluation was asked for something it cannot do with the given inputs."""


# (flags, add_argument keyword arguments); the table also rebuilds the command line for the report.
_OPTIONS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (("--data",), dict(required=True, metavar="DIR", help="data set folder (images/ + annotations.json)")),
    (("-o", "--output"), dict(required=True, metavar="REPORT_DIR", help="report folder (created if missing)")),
    (("-c", "--checkpoint"), dict(metavar="PATH", help="model weights; default: the packaged default model")),
    (
        ("--baseline",),
        dict(
            choices=sorted(BASELINES),
            help="classical baseline: grabcut (points, boxes), otsu (points), canny (edges)",
        ),
    ),
    (("--device",), dict(default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")),
    (("--name",), dict(metavar="NAME", help="the model's name in the report (default: from the checkpoint)")),
    (("--split",), dict(metavar="SPLIT", help="split of splits.json to use (default: test for edges, else all)")),
    (("--limit",), dict(type=int, metavar="N", help="evaluate the first N objects (points) or images (others)")),
    (("--max-per-image",), dict(type=int, metavar="K", help="points: at most K random objects per image")),
    (("--seed",), dict(type=int, default=0, help="seed for object sampling and random clicks (default: 0)")),
    (
        ("--click-mode",),
        dict(
            choices=["center", "random"],
            default="center",
            help="points: click at the error region's centre (default) or uniformly in it",
        ),
    ),
    (("--max-clicks",), dict(type=int, default=20, help="points: clicks per object at most (default: 20)")),
    (("--no-feedback",), dict(action="store_true", help="points: do not feed the previous logits back")),
    (("--full-run",), dict(action="store_true", help="points: always make --max-clicks clicks (no early stop)")),
    (("--detections",), dict(metavar="FILE", help="boxes: COCO results file with detector boxes (default: GT boxes)")),
    (("--refine",), dict(action="store_true", help="boxes: feed each box back once more with its mask")),
    (("--points-per-side",), dict(type=int, help="proposals / edges: point grid size (default: 32 / 16)")),
    (("--nms",), dict(type=float, default=0.9, help="proposals: box NMS threshold (default: 0.9)")),
    (("--max-proposals",), dict(type=int, default=1000, help="proposals: kept per image (default: 1000)")),
    (("--nthresh",), dict(type=int, default=99, help="edges: benchmark thresholds (default: 99)")),
    (
        ("--compare",),
        dict(
            action="append",
            default=[],
            metavar="REPORT",
            help="an earlier report (folder or results.json) to show alongside; repeatable",
        ),
    ),
    (("--cases",), dict(type=int, default=3, help="best and worst cases pictured per method (default: 3)")),
    (("--threads",), dict(type=int, metavar="N", help="CPU threads for torch and OpenCV (default: their own)")),
    (
        ("--group-by",),
        dict(
            action="append",
            default=[],
            metavar="KEY",
            help="also report every metric per group of KEY, with 95%% bootstrap intervals: an "
            "annotation or image key of the data, a column of --groups, 'size' or 'category'; "
            "repeatable",
        ),
    ),
    (
        ("--groups",),
        dict(metavar="CSV", help="table of groups: an image_id (or file_name) column and one column per grouping key"),
    ),
    (
        ("--min-group",),
        dict(
            type=int,
            default=20,
            metavar="N",
            help="groups with fewer objects (images for edges) are flagged too small (default: 20)",
        ),
    ),
    (
        ("--bootstrap",),
        dict(type=int, default=1000, metavar="N", help="bootstrap resamples per interval (default: 1000)"),
    ),
    (("--quiet",), dict(action="store_true", help="no progress bar")),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("protocol", choices=PROTOCOLS, help="which protocol to run")
    for flags, kwargs in _OPTIONS:
        parser.add_argument(*flags, **kwargs)


def _command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run (options left at their defaults are omitted)."""
    parts = ["segany", "eval", args.protocol]
    for flags, kwargs in _OPTIONS:
        dest = flags[-1].lstrip("-").replace("-", "_")
        value = getattr(args, dest)
        if value is None or value is False or value == kwargs.get("default") or value == []:
            continue
        for v in value if isinstance(value, list) else [value]:
            parts += [flags[-1]] if v is True else [flags[-1], str(v)]
    return shlex.join(parts)


def _check_inputs(args: argparse.Namespace) -> None:
    data = Path(args.data)
    if not data.is_dir():
        raise EvalError(f"data folder not found: {data}")
    if args.baseline and args.protocol not in BASELINES[args.baseline]:
        raise EvalError(f"the {args.baseline} baseline applies to {' and '.join(BASELINES[args.baseline])}, "
                        f"not to {args.protocol}")
    from segany.cli._common import check_device
    from segany.io.files import check_output_path

    check_output_path(args.output, folder=True, what="report folder")
    if args.checkpoint or not args.baseline:
        check_device(args.device)
    for name in ("limit", "max_per_image", "max_clicks", "points_per_side", "max_proposals", "nthresh", "cases",
                 "threads", "min_group", "bootstrap"):
        v = getattr(args, name)
        if v is not None and v < (0 if name == "cases" else 1):
            raise EvalError(f"--{name.replace('_', '-')} must be at least {0 if name == 'cases' else 1}, got {v}")
    if args.groups and not args.group_by:
        raise EvalError("--groups needs --group-by COLUMN (which column of the table to split by)")
    if args.groups and not Path(args.groups).is_file():
        raise EvalError(f"group table not found: {args.groups}")
    if args.detections and args.protocol != "boxes":
        raise EvalError("--detections applies to the boxes protocol only")


def _model_info(model: Any, path: Path | None, source: str) -> dict[str, Any]:
    """What the report says about the model: configuration, size, and the weights' checksum."""
    import hashlib

    info: dict[str, Any] = {"checkpoint": source, "config": getattr(model.config, "name", "custom"),
                            "image_size": model.image_encoder.img_size,
                            "parameters": sum(p.numel() for p in model.parameters())}
    if path is not None and path.is_file():
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        info["sha256"] = h.hexdigest()
        info["file_bytes"] = path.stat().st_size
    return info


def _load_model(args: argparse.Namespace) -> tuple[Any, str, dict[str, Any]]:
    from segany.build import default_weights_path, load_model

    ckpt = args.checkpoint
    if ckpt is None or (ckpt == "default" and not Path(ckpt).exists()):
        model = load_model(None, device=args.device)  # CheckpointError if this install ships no weights
        return model, args.name or "default", _model_info(model, default_weights_path(), "packaged default")
    if not Path(ckpt).is_file():
        from segany.errors import CheckpointError

        raise CheckpointError(f"checkpoint not found: {ckpt}")
    model = load_model(ckpt, device=args.device)
    return model, args.name or Path(ckpt).stem, _model_info(model, Path(ckpt), str(ckpt))


def _dataset(args: argparse.Namespace, image_limit: int | None) -> Any:
    from segany.io.datasets import SegmentationDataset

    split = args.split
    if split is None and args.protocol == "edges" and (Path(args.data) / "splits.json").is_file():
        split = "test"
    args.split = split
    ds = SegmentationDataset(args.data, split=split, limit=image_limit)
    if len(ds) == 0:
        raise EvalError(f"{args.data}: no images{f' in split {split!r}' if split else ''}")
    if args.protocol != "edges" and ds.num_instances() == 0:
        raise EvalError(f"{args.data}: no annotated objects to evaluate against")
    return ds


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from segany.eval.report import ReportWriter, load_compare, run_info

    _check_inputs(args)
    try:  # reports need matplotlib, the edge benchmark scipy: the 'eval' extra
        import matplotlib  # noqa: F401
        import scipy  # noqa: F401
    except ImportError as exc:
        raise EvalError(f"{exc.name} is missing: install segany[eval] (pip install 'segany[eval]')") from None
    if args.threads:  # on a shared machine one thread each is often faster than fighting over cores
        import cv2
        import torch

        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)
    compare = load_compare(args.compare)
    image_limit = None if args.protocol == "points" else args.limit
    ds = _dataset(args, image_limit)
    group_keys = _group_keys(args, ds)
    methods: list[tuple[str, Any, dict[str, Any]]] = []  # (name, model or baseline name, info)
    if not args.baseline or args.checkpoint:
        model, name, info = _load_model(args)
        methods.append((name, model, info))
    if args.baseline:
        methods.append((args.baseline, args.baseline, {"baseline": args.baseline}))

    runner = {"points": _run_points, "boxes": _run_boxes, "proposals": _run_proposals, "edges": _run_edges}[
        args.protocol
    ]
    writer = ReportWriter(Path(args.output), f"segany eval {args.protocol}: {Path(args.data).name}")
    _check_compare(args, compare, writer)
    results, settings, extra = runner(args, ds, methods, writer, compare)
    dataset_info = {"path": str(Path(args.data).resolve()), "name": Path(args.data).name, "split": args.split,
                    "limit": args.limit, "max_per_image": args.max_per_image,
                    "num_images": max((getattr(r, "num_images", len(ds)) for r in results), default=len(ds)),
                    "images_available": len(ds)}
    payload = {
        "protocol": args.protocol,
        "run": run_info(_command_line(args)),
        "dataset": dataset_info,
        "settings": dataclasses.asdict(settings) if dataclasses.is_dataclass(settings) else settings,
        "methods": {name: dict(res.to_json(), model=info) for (name, _, info), res in zip(methods, results)},
        "compared_with": [c["_path"] for c in compare],
    }
    if group_keys:
        payload["groups"] = _write_groups(args, group_keys, methods, results, ds, writer)
    report = writer.finish(payload, extra)
    for name, js in payload["methods"].items():
        print(f"{name}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                      for k, v in _headline(args.protocol, js["metrics"]).items()))
    print(f"report: {report}")
    return 0


def _group_keys(args: argparse.Namespace, ds: Any) -> list[Any]:
    """Resolve every --group-by key before any work (an unknown key lists the keys the data has)."""
    if not args.group_by:
        return []
    from segany.eval.grouped import IMAGE_LEVEL_PROTOCOLS
    from segany.eval.groups import resolve_group_key
    from segany.io.datasets import SegmentationDataset

    # The group table is checked against every image of the data (and split), not just the first --limit.
    whole = SegmentationDataset(args.data, split=args.split) if args.groups and args.limit else ds
    image_level = args.protocol in IMAGE_LEVEL_PROTOCOLS
    return [resolve_group_key(k, whole, args.groups, image_level=image_level) for k in dict.fromkeys(args.group_by)]


def _write_groups(args: argparse.Namespace, keys: list[Any], methods: Methods, results: list[Any], ds: Any,
                  writer: Any) -> dict[str, Any]:
    from segany.eval.grouped import grouped_metrics, write_groups_section

    samples = _samples(ds)
    out = {}
    for key in keys:
        by_method = {name: grouped_metrics(args.protocol, res, samples, key, args.min_group, args.bootstrap, args.seed)
                     for (name, _, _), res in zip(methods, results)}
        out[key.name] = write_groups_section(writer, key.name, by_method)
        for name, gm in by_method.items():
            sep = gm.separated()
            print(f"{name} by {key.name}: {len(gm.groups)} groups"
                  + (f", {gm.primary} intervals apart for " + "; ".join(f"{a} vs {b}" for a, b in sep) if sep else "")
                  + (f"; too small: {', '.join(gm.too_small())}" if gm.too_small() else ""))
    return out


def _check_compare(args: argparse.Namespace, compare: list[dict[str, Any]], writer: Any) -> None:
    """Warn (terminal and report) when an earlier report was made on other data than this run."""
    import sys

    here = (args.protocol, Path(args.data).name, args.split, args.limit, args.max_per_image, args.seed)
    for c in compare:
        d = c.get("dataset", {})
        there = (c.get("protocol"), d.get("name"), d.get("split"), d.get("limit"), d.get("max_per_image"),
                 c.get("settings", {}).get("seed", 0))
        if there != here:
            msg = (f"{c['_path']} was made on other data or settings (protocol, data set, split, limit, "
                   f"max per image, seed: {there} here {here}); its numbers are not directly comparable")
            print(f"segany eval: warning: {msg}", file=sys.stderr)
            writer.text(f"> **Note:** {msg}.\n")


def _headline(protocol: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """The few numbers printed on the terminal."""
    if protocol == "points":
        top, oracle = metrics["top"], metrics["oracle"]
        out = {"objects": top["num_objects"], "mIoU@1": top.get("miou@1"), "mIoU@1 oracle": oracle.get("miou@1")}
        out.update({f"mIoU@{k}": top[f"miou@{k}"] for k in (5, 9) if f"miou@{k}" in top})
        return dict(out, **{"NoC@90": top.get("noc@90")})
    keys = {"boxes": ["AP", "AP50", "mIoU"], "proposals": ["AR@100", "AR@1000"], "edges": ["ODS", "OIS", "AP", "R50"]}
    return {k: metrics.get(k) for k in keys[protocol]}


# --------------------------------------------------------------------------- protocol runners
# Each returns (results, one per method; settings; extra JSON files for the report folder).

Methods = list[tuple[str, Any, dict[str, Any]]]


def _segmenter(method: Any, name: str) -> Any:
    from segany.eval.prompting import PredictorSegmenter, PromptSegmenter

    if method == "grabcut":
        from segany.eval.baselines import GrabCutSegmenter

        return PromptSegmenter(GrabCutSegmenter(), "grabcut")
    if method == "otsu":
        from segany.eval.baselines import OtsuSegmenter

        return PromptSegmenter(OtsuSegmenter(), "otsu")
    from segany.inference.predictor import SamPredictor

    return PredictorSegmenter(SamPredictor(method), name)


def _note_failures(seg: Any, info: dict[str, Any]) -> None:
    import sys

    failed = getattr(seg, "failures", 0)
    if failed:
        info["prompt_failures"] = failed
        print(f"segany eval: warning: {seg.name} refused {failed} prompt(s); scored as empty masks", file=sys.stderr)


def _samples(ds: Any) -> dict[int, Any]:
    return {s.image_id: s for s in ds}


def _run_points(args: argparse.Namespace, ds: Any, methods: Methods, writer: Any, compare: list) -> tuple:
    from segany.eval.points import PointsSettings, evaluate_points, write_points_report

    st = PointsSettings(max_clicks=args.max_clicks, click_mode=args.click_mode, feed_logits=not args.no_feedback,
                        full_run=args.full_run, seed=args.seed)
    results = []
    for name, method, info in methods:
        seg = _segmenter(method, name)
        results.append(evaluate_points(ds, seg, st, limit=args.limit, max_per_image=args.max_per_image,
                                       progress=not args.quiet))
        _note_failures(seg, info)
    if not any(r.objects for r in results):
        raise EvalError(f"{args.data}: no object left to evaluate (all empty or ignored)")
    write_points_report(writer, results, _samples(ds), compare, args.cases)
    return results, st, {"objects.json": {r.method: [o.summary() for o in r.objects] for r in results}}


def _run_boxes(args: argparse.Namespace, ds: Any, methods: Methods, writer: Any, compare: list) -> tuple:
    from dataclasses import asdict

    from segany.eval.boxes import BoxesSettings, evaluate_boxes, load_detections, write_boxes_report

    st = BoxesSettings(source=args.detections or "ground truth", refine=args.refine)
    detections = load_detections(args.detections, st.max_dets) if args.detections else None
    if detections is not None and not set(detections) & {s.image_id for s in ds}:
        raise EvalError(f"{args.detections}: no detection refers to an image of {args.data}")
    results = []
    for name, method, info in methods:
        seg = _segmenter(method, name)
        results.append(evaluate_boxes(ds, seg, st, detections, progress=not args.quiet))
        _note_failures(seg, info)
    write_boxes_report(writer, results, _samples(ds), compare, args.cases)
    return results, st, {"objects.json": {r.method: [asdict(o) for o in r.objects] for r in results}}


def _run_proposals(args: argparse.Namespace, ds: Any, methods: Methods, writer: Any, compare: list) -> tuple:
    from segany.eval.proposals import ProposalSettings, evaluate_proposals, make_generator, write_proposals_report

    budgets = tuple(sorted({n for n in (1, 10, 100, 1000) if n < args.max_proposals} | {args.max_proposals}))
    st = ProposalSettings(points_per_side=args.points_per_side or 32, box_nms_thresh=args.nms,
                          max_proposals=args.max_proposals, budgets=budgets)
    results = [evaluate_proposals(ds, make_generator(model, st), st, name, progress=not args.quiet)
               for name, model, _ in methods]
    write_proposals_report(writer, results, _samples(ds), compare, args.cases)
    return results, st, {}


def _run_edges(args: argparse.Namespace, ds: Any, methods: Methods, writer: Any, compare: list) -> tuple:
    from segany.eval.edge_protocol import EdgeSettings, canny_edge_map, evaluate_edges, sam_edge_map, write_edges_report

    st = EdgeSettings(points_per_side=args.points_per_side or 16, nthresh=args.nthresh)
    results = []
    for name, method, _ in methods:
        if method == "canny":
            edge_fn = canny_edge_map
        else:
            from segany.inference.predictor import SamPredictor

            predictor = SamPredictor(method)

            def edge_fn(image: Any, predictor: Any = predictor) -> Any:
                return sam_edge_map(predictor, image, st)

        results.append(evaluate_edges(ds, Path(args.data), edge_fn, name, st, progress=not args.quiet))
    write_edges_report(writer, results, _samples(ds), Path(args.data), compare, args.cases)
    return results, st, {}
