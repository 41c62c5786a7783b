"""``segany annotate``: the annotation server (the data engine's stages 1 and 2) and its offline tools."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

from segany.errors import SeganyError

HELP = "annotate images in the browser with SAM's help (a multi-user server), export, pre-fill"
EXAMPLES = """examples:
  segany annotate photos/                       # http://127.0.0.1:8714/, SQLite in photos/.segany/
  segany annotate photos/ -c sam_vit_b_01ec64.pth --port 8715
  segany annotate photos/ --auth --host 0.0.0.0 --db postgresql+psycopg://user@dbhost/annot
  segany annotate export photos/ -o coco.json [--polygons] [--state accepted]
  segany annotate export photos/ -o sa1b/ --format sa1b
  segany annotate prefill photos/ masks/*.json  # stage 2: import 'segany auto' output (SA-1B or COCO)
  segany annotate prefill photos/ --generate    # ... or run the automatic generator here
  segany annotate user photos/ alice --roles annotator [--password]   # prints alice's API token

Without --auth the server answers only on loopback addresses and everyone is the admin 'local'.
With --auth, the first start creates the user 'admin' and prints its token once; add people with
'segany annotate user'. Exports and pre-fill work on the database directly (no server needed)."""

ACTIONS = ("export", "prefill", "user")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("words", nargs="+", metavar="WORD",
                        help="DIR (serve it), or: export DIR | prefill DIR FILE... | user DIR NAME")
    parser.add_argument("--db", metavar="URL", help="SQLAlchemy URL (default: SQLite in DIR/.segany/)")
    parser.add_argument("-c", "--checkpoint", metavar="PATH", help="model weights (default: the packaged model)")
    parser.add_argument("--device", default="cpu", help="torch device for the encoder (default: cpu)")
    server = parser.add_argument_group("server")
    server.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    server.add_argument("--port", type=int, default=8714, help="port (default 8714; 0 picks a free one)")
    server.add_argument("--auth", action="store_true", help="require tokens or logins (needed off loopback)")
    server.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                        help="extra trusted Origin behind a proxy, e.g. https://annot.example.org")
    server.add_argument("--max-upload-mb", type=float, default=64.0, help="largest image upload (default 64)")
    server.add_argument("--lock-minutes", type=float, default=15.0, help="how long 'next' holds an image")
    server.add_argument("--lazy-decoder", action="store_true",
                        help="export the decoder ONNX when a page first asks for it, not in the background at start")
    server.add_argument("--decoder-precision", choices=("fp32", "int8"), default="fp32",
                        help="the split decoder the page runs per click: fp32 (default) or int8 (dynamically "
                             "quantised: smaller, masks slightly different; see benchmarks/RESULTS.md)")
    out = parser.add_argument_group("export")
    out.add_argument("-o", "--output", metavar="PATH", help="export: COCO file, or folder for --format sa1b")
    out.add_argument("--format", choices=("coco", "sa1b"), default="coco")
    out.add_argument("--polygons", action="store_true", help="COCO polygons (masks with holes stay RLE)")
    out.add_argument("--tolerance", type=float, default=0.0, help="polygon simplification, pixels (default 0)")
    out.add_argument("--state", action="append", default=[],
                     choices=("todo", "in_progress", "submitted", "accepted", "rejected"),
                     help="export only images in this state (repeatable)")
    pre = parser.add_argument_group("prefill")
    pre.add_argument("--generate", action="store_true", help="prefill: run the automatic generator on todo images")
    pre.add_argument("--min-iou", type=float, default=0.0, help="prefill: skip imported masks below this predicted IoU")
    usr = parser.add_argument_group("user")
    usr.add_argument("--roles", default="annotator", help="user: comma-separated admin, annotator, reviewer")
    usr.add_argument("--password", action="store_true", help="user: also set a password (asked on the terminal)")


def _folder(text: str) -> Path:
    path = Path(text)
    if not path.is_dir():
        raise SeganyError(f"{text}: not a folder of images")
    return path


def _database(args: argparse.Namespace, root: Path):  # type: ignore[no-untyped-def]
    from segany.annotate.db import open_database, sqlite_url
    from segany.annotate.images import DATA_DIR

    if args.db:
        return open_database(args.db)
    data = root / DATA_DIR
    if not (data / "annotate.sqlite3").is_file():
        raise SeganyError(f"{root}: no annotation database yet (start 'segany annotate {root}' once, or pass --db)")
    return open_database(sqlite_url(data))


def _project(db, root: Path) -> int:  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    from segany.annotate.db import Project

    with db.read() as s:
        pid = s.scalar(select(Project.id).where(Project.name == root.resolve().name))
    if pid is None:
        raise SeganyError(f"the database has no project for {root}")
    return int(pid)


def run(args: argparse.Namespace) -> int:
    words = list(args.words)
    action = words[0] if words[0] in ACTIONS and len(words) > 1 else "serve"
    if action != "serve":
        words = words[1:]
    from segany.annotate.errors import ApiError

    try:
        return {"serve": _serve, "export": _export, "prefill": _prefill, "user": _user}[action](args, words)
    except ApiError as exc:
        raise SeganyError(exc.detail) from None


def _serve(args: argparse.Namespace, words: list[str]) -> int:
    if len(words) != 1:
        raise SeganyError("serve one folder: segany annotate DIR")
    root = _folder(words[0])
    from segany.annotate.server import Settings, serve

    model = None
    if args.checkpoint or args.device != "cpu":
        from segany.build import load_model

        model = load_model(args.checkpoint, device=args.device)
    settings = Settings(
        root=root, db_url=args.db, auth=args.auth, model=model, checkpoint=args.checkpoint,
        model_name=Path(args.checkpoint).name if args.checkpoint else "segany default",
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), lock_minutes=args.lock_minutes,
        allowed_origins=tuple(args.allow_origin), export_decoder=not args.lazy_decoder,
        decoder_precision=args.decoder_precision,
    )
    if args.auth:
        _first_admin(settings)
    serve(settings, args.host, args.port)
    return 0


def _first_admin(settings) -> None:  # type: ignore[no-untyped-def]
    """With --auth and nobody but 'local' in the database, create 'admin' and print its token once."""
    from sqlalchemy import func, select

    from segany.annotate import auth
    from segany.annotate.db import User, open_database, sqlite_url
    from segany.annotate.images import DATA_DIR

    data = settings.root / DATA_DIR
    data.mkdir(parents=True, exist_ok=True)
    os.chmod(data, 0o700)
    db = open_database(settings.db_url or sqlite_url(data))
    try:
        with db.read() as s:
            others = s.scalar(select(func.count()).select_from(User).where(User.name != "local")) or 0
        if others == 0:
            user_id = auth.add_user(db, "admin", "admin")
            _, token = auth.new_token(db, user_id, "api", name="first admin")[:2]
            print(f"segany annotate: created user 'admin'; its API token (shown once): {token}", file=sys.stderr)
    finally:
        db.dispose()


def _export(args: argparse.Namespace, words: list[str]) -> int:
    if len(words) != 1 or not args.output:
        raise SeganyError("usage: segany annotate export DIR -o OUTPUT [--format coco|sa1b]")
    from segany.annotate.export import export_coco, export_sa1b

    root = _folder(words[0])
    db = _database(args, root)
    try:
        pid = _project(db, root)
        states = tuple(args.state) or None
        if args.format == "coco":
            report = export_coco(db, pid, args.output, polygons=args.polygons, tolerance=args.tolerance, states=states)
        else:
            if args.polygons:
                raise SeganyError("--polygons applies to --format coco (SA-1B files store RLE)")
            report = export_sa1b(db, pid, args.output, states=states)
    finally:
        db.dispose()
    note = ""
    if args.polygons and report.kept_rle:
        note = f"; {len(report.kept_rle)} objects kept as RLE (holes or too small for a polygon)"
    print(f"segany annotate export: {report.objects} objects on {report.images} images -> {args.output}{note}")
    return 0


def _prefill(args: argparse.Namespace, words: list[str]) -> int:
    if not words or (len(words) == 1 and not args.generate):
        raise SeganyError("usage: segany annotate prefill DIR FILE... (or --generate)")
    from segany.annotate import prefill, store

    root = _folder(words[0])
    db = _database(args, root)
    try:
        pid = _project(db, root)
        local_id = store.ensure_user(db, "local", "admin")
        who = store.Principal(local_id, "local", ("admin",), "local")
        total = prefill.PrefillReport()
        for name in words[1:]:
            report = prefill.import_file(db, pid, who, Path(name), args.min_iou)
            total.added += report.added
            total.existing += report.existing
            total.skipped += report.skipped
            total.unmatched += report.unmatched
        if args.generate:
            from segany.annotate.modelsvc import model_id
            from segany.build import load_model

            model = load_model(args.checkpoint, device=args.device)
            report = prefill.generate(db, pid, who, root.resolve(), model, model_id(model))
            total.added += report.added
            total.existing += report.existing
    finally:
        db.dispose()
    print(f"segany annotate prefill: {total.added} automatic masks added, {total.existing} already there, "
          f"{total.skipped} refused, {len(total.unmatched)} files for images not in the project")
    return 0


def _user(args: argparse.Namespace, words: list[str]) -> int:
    if len(words) != 2:
        raise SeganyError("usage: segany annotate user DIR NAME [--roles annotator,reviewer] [--password]")
    from segany.annotate import auth

    root = _folder(words[0])
    password = None
    if args.password:
        password = getpass.getpass(f"password for {words[1]}: ")
        if len(password) < 8:
            raise SeganyError("passwords need at least 8 characters")
    db = _database(args, root)
    try:
        user_id = auth.add_user(db, words[1], args.roles, password)
        _, token, _ = auth.new_token(db, user_id, "api", name="cli")
    finally:
        db.dispose()
    print(f"user {words[1]} ({args.roles}); API token (shown once): {token}")
    return 0
