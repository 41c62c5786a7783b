"""Fixtures for the annotation server: a tiny random model, folders of images, and the database back
ends. PostgreSQL is a real server (Debian's ``postgresql``): initdb in a temporary folder, listening on
127.0.0.1 on a free port, started once per session and stopped at the end; every test gets a fresh database."""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("sqlalchemy")

from annotate_helpers import write_images

def _free_port() -> int:
    """A port nothing listens on now (a server left behind by a killed run keeps its own)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


PG_PORT = int(os.environ.get("SEGANY_TEST_PG_PORT") or _free_port())
BASE_URL = "http://127.0.0.1"


@pytest.fixture(scope="session")
def tiny_model():  # type: ignore[no-untyped-def]
    from segany.build import load_model

    torch.manual_seed(0)
    return load_model("tiny")


# -- PostgreSQL ------------------------------------------------------------------------------------


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _as_postgres(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL server; yields the admin URL prefix ``postgresql+psycopg://postgres@127.0.0.1:PORT``."""
    pytest.importorskip("psycopg")
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; .ci/run does it)")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root without a 'postgres' user for initdb")
    tmp = Path(tempfile.mkdtemp(prefix="segany-pg-"))
    data = tmp / "data"
    if os.geteuid() == 0:
        shutil.chown(tmp, "postgres")
    os.chmod(tmp, 0o700)
    subprocess.run(_as_postgres([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                                 "--no-sync", "-E", "UTF8"]), check=True, capture_output=True)
    options = f"-p {PG_PORT} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    subprocess.run(_as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(tmp / "log"),
                                 "-w", "-t", "60", "start"]), check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{PG_PORT}"
    finally:
        subprocess.run(_as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
                       capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


_counter = itertools.count()


def fresh_pg_database(server: str) -> str:
    import psycopg

    name = f"segany_test_{os.getpid()}_{next(_counter)}"
    with psycopg.connect(f"host=127.0.0.1 port={PG_PORT} user=postgres dbname=postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{server}/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str | None:
    """None (SQLite beside the images) or a fresh database on the test PostgreSQL server."""
    if request.param == "sqlite":
        return None
    return fresh_pg_database(request.getfixturevalue("postgres_server"))


def _factory(tmp_path: Path, model, url: str | None):  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from segany.annotate.app import create_app
    from segany.annotate.server import Settings

    clients: list[TestClient] = []

    def make(sizes: list[tuple[int, int]] | None = None, folder: Path | None = None, **settings):  # type: ignore[no-untyped-def]
        root = folder or tmp_path / "images"
        if folder is None:
            write_images(root, sizes or [(40, 60), (50, 30), (32, 32)])
        settings.setdefault("background", False)
        settings.setdefault("export_decoder", False)
        app = create_app(Settings(root=root, db_url=url, model=model, **settings))
        client = TestClient(app, base_url=BASE_URL)
        client.__enter__()
        clients.append(client)
        return client

    return make, clients


@pytest.fixture
def make_client(tmp_path: Path, tiny_model, db_url) -> Iterator[Callable[..., object]]:  # type: ignore[no-untyped-def]
    """Build a TestClient over a folder of images, on SQLite and on PostgreSQL:
    ``make_client(sizes=..., **settings)``."""
    make, clients = _factory(tmp_path, tiny_model, db_url)
    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def make_sqlite_client(tmp_path: Path, tiny_model) -> Iterator[Callable[..., object]]:  # type: ignore[no-untyped-def]
    """``make_client`` on SQLite only, for what does not depend on the database."""
    make, clients = _factory(tmp_path, tiny_model, None)
    yield make
    for client in clients:
        client.__exit__(None, None, None)
