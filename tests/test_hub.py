"""Released weights by name: cache lookup, and a download against a loopback HTTP server that serves
whole files, ranges, wrong bytes, errors and dropped connections."""

from __future__ import annotations

import hashlib
import http.server
import threading
from pathlib import Path

import pytest
import torch
from sam_testing import random_tiny

from segany import load_model
from segany.errors import CheckpointError
from segany.io import hub
from segany.io.checkpoint import save_checkpoint


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.payload`` at any path; ``server.mode`` picks a misbehaviour."""

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        srv = self.server
        srv.requests.append(dict(self.headers))  # type: ignore[attr-defined]
        data: bytes = srv.payload  # type: ignore[attr-defined]
        mode: str = srv.mode  # type: ignore[attr-defined]
        if mode == "error":
            self.send_error(500, "Internal Server Error")
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and mode != "no-range":
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode == "drop":  # promise everything, send half, hang up
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.payload = b""  # type: ignore[attr-defined]
    srv.mode = "ok"  # type: ignore[attr-defined]
    srv.requests = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def weights(tmp_path_factory) -> bytes:
    path = save_checkpoint(random_tiny(seed=11), tmp_path_factory.mktemp("w") / "tiny.pth")
    return path.read_bytes()


def _release(server, data: bytes, **kw) -> hub.Release:
    fields = dict(
        name="tiny_release", filename="tiny_release.pth", url=f"http://127.0.0.1:{server.server_port}/tiny.pth",
        description="test", size=len(data), sha256=hashlib.sha256(data).hexdigest(),
    )
    fields.update(kw)
    return hub.Release(**fields)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGANY_CHECKPOINTS", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


def test_download_verifies_and_places_atomically(server, weights, tmp_path):
    server.payload = weights
    release = _release(server, weights)
    target = hub.cache_dir() / release.filename
    assert hub.fetch(release, target, progress=False) == target
    assert target.read_bytes() == weights
    assert not target.with_name(target.name + ".part").exists()


def test_resume_sends_a_range_and_appends(server, weights):
    server.payload = weights
    release = _release(server, weights)
    target = hub.cache_dir() / release.filename
    target.parent.mkdir(parents=True)
    part = target.with_name(target.name + ".part")
    part.write_bytes(weights[:1000])  # left by an interrupted download
    hub.fetch(release, target, progress=False)
    assert server.requests[-1].get("Range") == "bytes=1000-"
    assert target.read_bytes() == weights


def test_resume_restarts_when_the_server_ignores_ranges(server, weights):
    server.payload, server.mode = weights, "no-range"
    release = _release(server, weights)
    target = hub.cache_dir() / release.filename
    target.parent.mkdir(parents=True)
    target.with_name(target.name + ".part").write_bytes(weights[:1000])
    hub.fetch(release, target, progress=False)
    assert target.read_bytes() == weights


def test_complete_part_is_finished_without_a_transfer(server, weights):
    server.payload = weights
    release = _release(server, weights)
    target = hub.cache_dir() / release.filename
    target.parent.mkdir(parents=True)
    target.with_name(target.name + ".part").write_bytes(weights)  # all there, never renamed
    hub.fetch(release, target, progress=False)  # the server answers 416 to the range
    assert target.read_bytes() == weights


def test_wrong_checksum_is_refused_and_nothing_is_cached(server, weights):
    server.payload = weights
    release = _release(server, weights, sha256="0" * 64)
    target = hub.cache_dir() / release.filename
    with pytest.raises(CheckpointError) as info:
        hub.fetch(release, target, progress=False)
    message = str(info.value)
    assert "SHA-256" in message and str(target) in message and release.url in message and "\n" not in message
    assert not target.exists() and not target.with_name(target.name + ".part").exists()


def test_wrong_size_is_refused(server, weights):
    server.payload = weights + b"extra"
    release = _release(server, weights, sha256=None)
    target = hub.cache_dir() / release.filename
    with pytest.raises(CheckpointError, match="bytes where"):
        hub.fetch(release, target, progress=False)
    assert not target.exists()


def test_server_error_says_where_to_put_the_file(server, weights):
    server.payload, server.mode = weights, "error"
    release = _release(server, weights)
    target = hub.cache_dir() / release.filename
    with pytest.raises(CheckpointError, match=r"500.*by hand and put it at") as info:
        hub.fetch(release, target, progress=False)
    assert str(target) in str(info.value)
    assert not target.exists()


def test_interrupted_transfer_keeps_the_part_and_resumes(server, weights):
    server.payload, server.mode = weights, "drop"
    release = _release(server, weights)
    target = hub.cache_dir() / release.filename
    with pytest.raises(CheckpointError, match="interrupted"):
        hub.fetch(release, target, progress=False)
    part = target.with_name(target.name + ".part")
    assert not target.exists() and 0 < part.stat().st_size < len(weights)
    server.mode = "ok"
    hub.fetch(release, target, progress=False)
    assert target.read_bytes() == weights


def test_offline_gives_one_line(weights):
    # A port nothing listens on: bind one, note it, close it.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    release = hub.Release("x", "x.pth", f"http://127.0.0.1:{port}/x.pth", "test")
    with pytest.raises(CheckpointError, match="cannot reach the server.*by hand"):
        hub.fetch(release, hub.cache_dir() / "x.pth", progress=False)


def test_load_model_by_name_downloads_once_then_uses_the_cache(server, weights, monkeypatch):
    server.payload = weights
    monkeypatch.setitem(hub.WEIGHTS, "tiny", _release(server, weights, name="tiny"))
    model = load_model("tiny")
    assert len(server.requests) == 1
    assert torch.equal(model.mask_decoder.iou_token.weight, random_tiny(seed=11).mask_decoder.iou_token.weight)
    load_model("tiny")
    assert len(server.requests) == 1  # found in the cache
    assert not load_model("tiny", pretrained=False).mask_decoder.iou_token.weight.equal(
        model.mask_decoder.iou_token.weight
    )


def test_torch_hub_folder_is_searched(weights, tmp_path):
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    folder.mkdir(parents=True)
    (folder / hub.WEIGHTS["vit_b"].filename).write_bytes(b"x")
    assert hub.resolve("vit_b", download=False) == folder / hub.WEIGHTS["vit_b"].filename


def test_not_downloaded_without_download_and_unknown_names(monkeypatch):
    with pytest.raises(CheckpointError, match="not downloaded; expected at"):
        hub.resolve("vit_b", download=False)
    with pytest.raises(CheckpointError, match="not a known checkpoint name"):
        hub.resolve("vit_q")


def test_cached_file_of_another_architecture_is_refused(weights, monkeypatch):
    target = hub.cache_dir() / hub.WEIGHTS["mobile_sam"].filename
    target.parent.mkdir(parents=True)
    target.write_bytes(weights)  # a tiny SAM where MobileSAM was expected
    with pytest.raises(CheckpointError, match="not mobile_sam"):
        load_model("mobile_sam")


def test_every_release_has_an_official_address_and_an_architecture():
    from segany.model import PRESETS

    for name, release in hub.WEIGHTS.items():
        assert name in PRESETS and release.url.startswith("https://")
        assert release.filename == release.url.rsplit("/", 1)[-1]


def test_download_without_a_known_checksum_warns_in_one_line(server, weights, capsys):
    server.payload = weights
    release = _release(server, weights, sha256=None, md5=None, size=None)
    assert not release.verifiable
    target = hub.cache_dir() / release.filename
    assert hub.fetch(release, target, progress=False) == target
    assert target.read_bytes() == weights
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no checksum is known for tiny_release.pth" in err[0] and "cannot be verified" in err[0]
    # A release with a checksum downloads without that warning.
    verified = _release(server, weights, name="other", filename="other.pth")
    hub.fetch(verified, hub.cache_dir() / verified.filename, progress=False)
    assert "cannot be verified" not in capsys.readouterr().err


def test_the_releases_without_checksums_are_the_ones_nobody_published():
    assert {n for n, r in hub.WEIGHTS.items() if not r.verifiable} == {"mobile_sam", "sam_hq_vit_tiny"}


def test_info_says_checksum_unknown_for_names_and_files(weights, monkeypatch, tmp_path, capsys):
    from segany.cli.main import main

    assert main(["info", "mobile_sam"]) == 0
    assert "checksum:      checksum unknown" in capsys.readouterr().out
    assert main(["info", "vit_b"]) == 0
    assert f"checksum:      SHA-256 {hub.WEIGHTS['vit_b'].sha256}" in capsys.readouterr().out
    # A file with a release's architecture whose checksum is unknown is not claimed as (or denied to be) it.
    path = tmp_path / "tiny.pth"
    path.write_bytes(weights)
    monkeypatch.setitem(hub.WEIGHTS, "tiny", hub.Release("tiny", "tiny.pth", "https://example.org/tiny.pth", "t"))
    assert main(["info", str(path)]) == 0
    assert "release:       tiny's architecture; checksum unknown" in capsys.readouterr().out
    digest = hashlib.sha256(weights).hexdigest()
    monkeypatch.setitem(hub.WEIGHTS, "tiny", hub.Release("tiny", "tiny.pth", "https://x/tiny.pth", "t", sha256=digest))
    assert main(["info", str(path)]) == 0
    assert "release:       tiny (checksum matches)" in capsys.readouterr().out
