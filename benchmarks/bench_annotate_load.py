"""Load test of ``segany annotate``: simulated annotators against a real server process on loopback.

    nice -n 19 python benchmarks/bench_annotate_load.py                        # SQLite and PostgreSQL
    nice -n 19 python benchmarks/bench_annotate_load.py --db sqlite --seconds 30 --users 5
    nice -n 19 python benchmarks/bench_annotate_load.py --write                # update RESULTS.md

Each annotator loops without pause over: ``POST /next``, ``GET`` the image's embedding, ``POST`` 10
objects (COCO RLE, each with its own idempotency key), ``PATCH`` 2 of them (If-Match), ``POST /submit``.
The server is the ``segany annotate`` command in its own process (``--lazy-decoder``, so that no
decoder export runs during the test), on SQLite (WAL) or on a throwaway PostgreSQL (Debian's, started
here with initdb on 127.0.0.1:55414). The encoder is not what this measures: before the server starts,
every image's cache entry is made a hard link to one real embedding of the default model (as a warm
cache would be), so that the run exercises the database, the locks and the file serving.

Pass criteria checked after the run: no failed request, every acknowledged object in the database
exactly once with the acknowledged version, every acknowledged submission in ``submitted``, no
"database is locked" in the server's log. Reported: requests, p50/p95 per endpoint, server memory
(VmRSS) before and after the timed phase.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import glob
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
from _results import cpu_name, write_section  # beside this script
PG_PORT = 55414
ENDPOINTS = ("next", "embedding", "create", "patch", "submit")


def make_images(folder: Path, count: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray((rng.random((48, 64, 3)) * 255).astype(np.uint8)).save(folder / f"im{i:05d}.png")


def warm_cache(folder: Path) -> None:
    """One real embedding of the default model, hard-linked as every image's cache entry."""
    import hashlib

    import segany
    from segany.annotate.modelsvc import model_id, npy_bytes
    from segany.inference.predictor import SamPredictor

    model = segany.load_model()
    predictor = SamPredictor(model)
    files = sorted(folder.glob("*.png"))
    predictor.set_image(str(files[0]))
    cache = folder / ".segany" / "embeddings" / model_id(model)
    cache.mkdir(parents=True, exist_ok=True)
    first = cache / "first.npy"
    first.write_bytes(npy_bytes(predictor.get_image_embedding().numpy()))
    for path in files:
        os.link(first, cache / f"{hashlib.sha256(path.read_bytes()).hexdigest()}.npy")


def _pg(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def start_postgres() -> tuple[str, Any]:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise SystemExit("PostgreSQL is not installed (apt-get install postgresql)")
    bindir = Path(found[-1]).parent
    pgdir = Path(tempfile.mkdtemp(prefix="segany-load-pg-"))  # its own folder: the postgres user must reach it
    if os.geteuid() == 0:
        shutil.chown(pgdir, "postgres")
    data = pgdir / "data"
    subprocess.run(_pg([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"]),
                   check=True, capture_output=True)
    opts = f"-p {PG_PORT} -k {pgdir} -c listen_addresses=127.0.0.1 -c max_connections=200"
    subprocess.run(_pg([str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(pgdir / "log"), "-w", "start"]),
                   check=True, capture_output=True)
    subprocess.run(_pg([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(PG_PORT), "-U", "postgres", "annot"]),
                   check=True, capture_output=True)

    def stop() -> None:
        subprocess.run(_pg([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]), capture_output=True)
        shutil.rmtree(pgdir, ignore_errors=True)

    return f"postgresql+psycopg://postgres@127.0.0.1:{PG_PORT}/annot", stop


def free_port() -> int:
    for port in range(8716, 8720):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise SystemExit("ports 8716-8719 are busy")


def rss_kb(pid: int) -> tuple[int, int]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def rle_for(h: int, w: int, k: int, rng: np.random.Generator) -> dict[str, Any]:
    from segany.io.rle import encode_mask

    m = np.zeros((h, w), bool)
    y, x = rng.integers(0, h - 8), rng.integers(0, w - 8)
    m[y: y + 4 + k % 4, x: x + 4 + k % 5] = True
    return encode_mask(m)


async def annotator(
    client: Any, index: int, stop_at: float, stats: dict[str, list[float]], log: dict[str, Any]
) -> None:
    import httpx

    rng = np.random.default_rng(index)
    headers = {"Origin": str(client.base_url).rstrip("/")}

    async def call(kind: str, method: str, url: str, **kw: Any) -> Any:
        t0 = time.perf_counter()
        for attempt in range(3):
            try:
                r = await client.request(method, url, **kw)
                break
            except httpx.TransportError as exc:
                # A dropped connection: retried as the page does (object saves carry their idempotency key,
                # so a retry never duplicates; the exactly-once check below verifies it). Counted apart.
                log["retries"].append(f"{kind}: {type(exc).__name__}")
                if attempt == 2:
                    log["errors"].append(f"{kind}: {type(exc).__name__}: {exc}")
                    return None
            except Exception as exc:  # a benchmark counts every failure
                log["errors"].append(f"{kind}: {type(exc).__name__}: {exc}")
                return None
        stats[kind].append(time.perf_counter() - t0)
        if r.status_code >= 400:
            log["errors"].append(f"{kind}: {r.status_code} {r.text[:200]}")
            return None
        return r

    while time.perf_counter() < stop_at:
        r = await call("next", "POST", "/api/projects/1/next", headers=headers)
        if r is None:
            continue
        if r.status_code == 204:
            log["exhausted"] = True
            return
        image = r.json()
        iid, h, w = image["id"], image["height"], image["width"]
        emb = await call("embedding", "GET", f"/api/images/{iid}/embedding.npy")
        if emb is not None and len(emb.content) < 1000:
            log["errors"].append("embedding: short body")
        created = []
        for k in range(10):
            key = str(uuid.uuid4())
            body = {"rle": rle_for(h, w, k, rng), "category": f"c{k % 3}", "seconds": float(rng.uniform(3, 30)),
                    "clicks": int(k % 5 + 1)}
            r = await call("create", "POST", f"/api/images/{iid}/objects", json=body,
                           headers={**headers, "Idempotency-Key": key})
            if r is not None:
                obj = r.json()
                created.append(obj)
                log["acked"][obj["id"]] = {"key": key, "version": obj["version"], "image": iid}
        for obj in created[:2]:
            r = await call("patch", "PATCH", f"/api/objects/{obj['id']}", json={"category": "edited"},
                           headers={**headers, "If-Match": f'"{obj["version"]}"'})
            if r is not None:
                log["acked"][obj["id"]]["version"] = r.json()["version"]
        r = await call("submit", "POST", f"/api/images/{iid}/submit", headers=headers)
        if r is not None:
            log["submitted"].append(iid)


async def drive(base: str, users: int, seconds: float) -> tuple[dict[str, list[float]], dict[str, Any], float]:
    import httpx

    stats: dict[str, list[float]] = defaultdict(list)
    log: dict[str, Any] = {"errors": [], "retries": [], "acked": {}, "submitted": [], "exhausted": False}
    limits = httpx.Limits(max_connections=users, max_keepalive_connections=users)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(annotator(client, i, t0 + seconds, stats, log) for i in range(users)))
        return stats, log, time.perf_counter() - t0


def verify(db_url: str, log: dict[str, Any]) -> list[str]:
    from sqlalchemy import create_engine, text

    problems = []
    engine = create_engine(db_url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT id, idempotency_key, version, deleted FROM objects")).all()
        states = dict(conn.execute(text("SELECT id, state FROM images")).all())
    engine.dispose()
    by_id = {r[0]: r for r in rows}
    keys = [r[1] for r in rows]
    if len(keys) != len(set(keys)):
        problems.append("duplicate idempotency keys in the database")
    for oid, ack in log["acked"].items():
        row = by_id.get(oid)
        if row is None:
            problems.append(f"acknowledged object {oid} missing")
        elif not row[1].endswith(":" + ack["key"]) or row[2] != ack["version"] or row[3]:
            problems.append(f"object {oid}: stored (key, version) differ from the acknowledged ones")
    if len(rows) != len(log["acked"]):
        problems.append(f"{len(rows)} objects stored, {len(log['acked'])} acknowledged")
    for iid in log["submitted"]:
        if states.get(iid) != "submitted":
            problems.append(f"image {iid} acknowledged as submitted but is {states.get(iid)}")
    return problems


def run_one(backend: str, users: int, seconds: float, images: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="segany-load-"))
    folder = tmp / "images"
    stop_pg = None
    server = None
    try:
        make_images(folder, images)
        warm_cache(folder)
        if backend == "postgresql":
            db_url, stop_pg = start_postgres()
        else:
            db_url = f"sqlite:///{folder / '.segany' / 'annotate.sqlite3'}"
        port = free_port()
        cmd = [sys.executable, "-m", "segany.cli.main", "annotate", str(folder), "--port", str(port), "--lazy-decoder"]
        if backend == "postgresql":
            cmd += ["--db", db_url]
        env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        server_log = open(tmp / "server.log", "w")
        server = subprocess.Popen(cmd, stdout=server_log, stderr=subprocess.STDOUT, env=env)
        base = f"http://127.0.0.1:{port}"
        import httpx

        for _ in range(600):
            try:
                if httpx.get(base + "/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            raise SystemExit("server did not start: " + (tmp / "server.log").read_text()[-2000:])
        # Warm-up: one request of each kind, outside the timed phase.
        _, warm, _ = asyncio.run(drive(base, 1, 0.01))
        rss_before, _ = rss_kb(server.pid)
        stats, log, elapsed = asyncio.run(drive(base, users, seconds))
        log["errors"] += warm["errors"]
        rss_after, hwm = rss_kb(server.pid)
        server.terminate()
        server.wait(30)
        server_log.close()
        text = (tmp / "server.log").read_text()
        problems = verify(db_url, {"acked": {**warm["acked"], **log["acked"]},
                                   "submitted": warm["submitted"] + log["submitted"]})
        if "database is locked" in text:
            problems.append("'database is locked' in the server log")
        return {"backend": backend, "users": users, "seconds": elapsed, "stats": stats, "errors": log["errors"],
                "retries": log["retries"],
                "problems": problems, "objects": len(log["acked"]), "images": len(log["submitted"]),
                "exhausted": log["exhausted"], "rss": (rss_before, rss_after, hwm)}
    finally:
        if server is not None and server.poll() is None:
            server.kill()
        if stop_pg is not None:
            stop_pg()
        shutil.rmtree(tmp, ignore_errors=True)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values) * 1000, q)) if values else float("nan")


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| database | annotators x s | images submitted | objects | requests/s | errors (retries) | checks | "
             + " | ".join(f"{e} p50/p95 ms" for e in ENDPOINTS) + " | server RSS MB before -> after (peak) |",
             "| --- " * (7 + len(ENDPOINTS) + 1) + "|"]
    for r in results:
        requests = sum(len(v) for v in r["stats"].values())
        cells = [f"{pct(r['stats'][e], 50):.0f} / {pct(r['stats'][e], 95):.0f}" for e in ENDPOINTS]
        before, after, hwm = (v / 1024 for v in r["rss"])
        checks = "pass" if not r["problems"] else "; ".join(r["problems"][:3])
        lines.append(
            f"| {r['backend']} | {r['users']} x {r['seconds']:.0f} | {r['images']} | {r['objects']} | "
            f"{requests / r['seconds']:.0f} | {len(r['errors'])} ({len(r['retries'])}) | {checks} | "
            + " | ".join(cells)
            + f" | {before:.0f} -> {after:.0f} ({hwm:.0f}) |"
        )
    return "\n".join(lines)


def write_results(text: str) -> None:
    title = "## Annotation server load"
    write_section(title, f"{title}\n\n{text}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument(
        "--images", type=int, default=1500, help="images in the project (the annotators stop if all are done)"
    )
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args()
    backends = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    load0 = os.getloadavg()[0]
    started = dt.datetime.now(dt.timezone.utc)
    results = [run_one(b, args.users, args.seconds, args.images) for b in backends]
    load1 = os.getloadavg()[0]
    text = table(results)
    print(text)
    for r in results:
        for e in r["errors"][:5] + r["problems"][:5]:
            print(f"{r['backend']}: {e}")
        if r["exhausted"]:
            print(f"{r['backend']}: every image was submitted before the time was up")
    header = (
        f"Measured {started:%Y-%m-%d %H:%M} UTC by `python benchmarks/bench_annotate_load.py"
        f" --users {args.users} --seconds {args.seconds:.0f}` on {cpu_name()} "
        f"({os.cpu_count()} cores), Python {platform.python_version()}. Load average {load0:.1f} before the run "
        f"and {load1:.1f} at its end (the run's own processes count: server, database and the {args.users} "
        "simulated annotators share the same cores).\n\n"
        "Each simulated annotator loops without pause over next image -> embedding (.npy, served from its file) -> "
        "10 object saves (idempotency keys) -> 2 edits (If-Match) -> submit, against `segany annotate` in its own "
        "process on loopback. Embedding cache warm (hard links to one real default-model embedding; the encoder is "
        "not measured here). Checks: no failed request, every acknowledged object stored exactly once with its "
        "acknowledged version, every acknowledged submission stored, no 'database is locked'. A request whose "
        "connection drops is retried (at most twice, the same idempotency key) and counted under retries. RSS: the server "
        "process after a warm-up request of each kind, and at the end of the timed phase.\n"
    )
    if args.write:
        write_results(header + "\n" + text)


if __name__ == "__main__":
    main()
