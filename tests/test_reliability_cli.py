"""The CLI's shared reliability mechanisms (issue 20): output paths checked before any work, OS errors as
one line with exit 2 and nothing of a failed command left, SIGTERM handled like Ctrl-C, stale temporary
files of killed writes swept, finite prompts, devices checked (audit S20-S53, D01-D04, K7, N08, N09)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from reliability_helpers import REPO, child_env, dead_pid, run_limited, unprivileged_wrapper

from segany.cli.main import main
from segany.errors import OutputError
from segany.io import files
from segany.io.files import (
    LEGACY_TEMP_AGE_S,
    atomic_write_bytes,
    atomic_write_many,
    check_output_path,
    sweep_stale_temps,
    temp_path,
)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "photo.png"
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(path)
    return path


def _segment(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(["segment", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _left(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# -- bad prompts and options: exit 2 before the model is loaded -----------------------------------------


@pytest.mark.parametrize(
    "prompt, message",
    [
        (["-b", "nan,nan,nan,nan"], "must be finite"),  # S32
        (["-b", "0,0,inf,inf"], "must be finite"),  # S33
        (["-b=-inf,-inf,10,10"], "must be finite"),  # S34
        (["-p", "nan,nan"], "must be finite"),  # S20
        (["-p", "10,10,nan"], "the label must be 1"),  # S27 (was an internal error)
        (["-p", "10,10,inf"], "the label must be 1"),
        (["-p", "10,10,2"], "the label must be 1"),  # S25
        (["-p", "10,1e999"], "must be finite"),
        (["-b", "1,2,3"], "expected 4 numbers"),
    ],
)
def test_bad_prompts(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, image: Path, prompt: list[str], message: str
) -> None:
    rc, _, err = _segment(capsys, str(image), *prompt, "-o", str(tmp_path / "m.png"))
    assert rc == 2 and message in err and err.count("\n") == 1 and "internal error" not in err
    assert _left(tmp_path) == []


@pytest.mark.parametrize("device, message", [("banana", "not a torch device"), ("cuda:7", "cuda")])
def test_bad_device(capsys: pytest.CaptureFixture[str], tmp_path: Path, image: Path, device: str, message: str) -> None:
    """Audit N08, N09: torch's RuntimeError used to surface as an internal error."""
    import torch

    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    rc, _, err = _segment(capsys, str(image), "-p", "5,5", "--device", device, "-o", str(tmp_path / "m.png"))
    assert rc == 2 and message in err and "internal error" not in err


# -- output paths -----------------------------------------------------------------------------------------


def test_output_path_checks(capsys: pytest.CaptureFixture[str], tmp_path: Path, image: Path) -> None:
    (tmp_path / "dir.png").mkdir()
    cases = {
        "dir.png": "is a folder",  # S47
        "nodir/m.png": "does not exist",  # S42
        "m.jpg": "must be a .png file",  # S46
    }
    for out, message in cases.items():
        rc, _, err = _segment(capsys, str(image), "-p", "5,5", "-o", str(tmp_path / out))
        assert rc == 2 and message in err, (out, err)
    rc, _, err = _segment(
        capsys, str(image), "-p", "5,5", "-o", str(tmp_path / "m.png"), "--overlay", str(tmp_path / "o.xyz")
    )
    assert rc == 2 and "--overlay" in err and ".png" in err  # S48
    rc, _, err = _segment(capsys, str(image), "-p", "5,5", "-o", str(image))  # S53
    assert rc == 2 and "is the input" in err
    rc, _, err = _segment(capsys, str(image), "-p", "5,5", "--multimask", "-o", str(tmp_path / "x.png"))
    assert rc == 0  # control: the same command with a good output works
    assert _left(tmp_path) == ["dir.png", "x_0.png", "x_1.png", "x_2.png"]
    (tmp_path / "x_1.png").unlink()
    (tmp_path / "x_1.png").mkdir()  # one of the three multimask outputs is a folder
    before = (tmp_path / "x_0.png").read_bytes()
    rc, _, err = _segment(capsys, str(image), "-p", "7,7", "--multimask", "-o", str(tmp_path / "x.png"))
    assert rc == 2 and "x_1.png is a folder" in err and (tmp_path / "x_0.png").read_bytes() == before


def test_check_output_path_unit(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(OutputError, match="exists and is not a folder"):
        check_output_path(tmp_path / "f.txt", folder=True)
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_output_path(tmp_path / "f.txt" / "sub" / "m.png")
    with pytest.raises(OutputError, match="is the input"):
        check_output_path(tmp_path / "f.txt", inputs=[None, tmp_path / "f.txt"])
    assert check_output_path(tmp_path / "new" / "deeper" / "m.png") == tmp_path / "new" / "deeper" / "m.png"
    assert check_output_path(tmp_path / "new" / "run", folder=True) == tmp_path / "new" / "run"
    assert _left(tmp_path) == ["f.txt"]  # checking writes nothing
    assert isinstance(OutputError("x"), OSError)


def test_read_only_folder_fails_before_the_model(tmp_path: Path, image: Path) -> None:
    """Audit S43/S44/S50/S52, X01, X02: a read-only folder was found only after inference, as an
    internal error. Run as an unprivileged process so that mode 555 really means read-only."""
    wrapper = unprivileged_wrapper()
    if wrapper is None:
        pytest.skip("cannot drop privileges here")
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "prev.png").write_bytes(b"earlier")
    ro.chmod(0o555)
    try:
        runs = {
            "segment": ["segment", str(image), "-p", "5,5", "-o", str(ro / "m.png")],
            "overlay": [
                "segment",
                str(image),
                "-p",
                "5,5",
                "-o",
                str(tmp_path / "m.png"),
                "--overlay",
                str(ro / "o.png"),
            ],
            "export": ["export", "tiny", "-o", str(ro / "sub")],
            "eval": ["eval", "boxes", "--data", str(tmp_path), "-o", str(ro / "rep")],
            "auto": ["auto", str(image), "-o", str(ro / "masks"), "--no-progress"],
            "train": ["train", str(REPO / "recipes" / "tiny_smoke.toml"), "--output", str(ro / "run"), "--no-progress"],
        }
        for name, argv in runs.items():
            result = run_limited(argv, memory_bytes=None, wrapper=wrapper, timeout=120)
            assert result.returncode == 2, (name, result.stderr)
            assert "cannot write" in result.stderr and "Permission denied" in result.stderr, result.stderr
            assert result.stderr.count("\n") == 1 and "internal error" not in result.stderr
        assert _left(ro) == ["prev.png"] and (ro / "prev.png").read_bytes() == b"earlier"
        assert not (tmp_path / "m.png").exists()  # S50: no mask of the failed command
    finally:
        ro.chmod(0o755)


def test_disk_full_leaves_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, image: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Audit D01/D04: ENOSPC while writing the overlay (after the mask): exit 2 naming the path, the
    mask of the failed command not left, an earlier file intact, no temporary file."""
    (tmp_path / "m.png").write_bytes(b"earlier mask")
    real = files._write_fd
    calls = []

    def write(fd: int, data: bytes) -> None:
        calls.append(len(data))
        if len(calls) == 2:
            os.close(fd)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd, data)

    monkeypatch.setattr(files, "_write_fd", write)
    rc, _, err = _segment(
        capsys, str(image), "-p", "5,5", "-o", str(tmp_path / "m.png"), "--overlay", str(tmp_path / "o.png")
    )
    assert rc == 2 and err.count("\n") == 1
    assert "o.png: cannot write (No space left on device)" in err
    assert _left(tmp_path) == ["m.png"] and (tmp_path / "m.png").read_bytes() == b"earlier mask"


def test_atomic_write_many_rolls_back_new_files_when_a_rename_fails(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()  # a folder in the way of the second file: its rename fails
    with pytest.raises(OutputError, match="it is a folder"):
        atomic_write_many({tmp_path / "a": b"1", tmp_path / "b": b"2", tmp_path / "c": b"3"})
    assert _left(tmp_path) == ["b"]
    assert atomic_write_many({tmp_path / "a": b"1", tmp_path / "c": b"3"}) == [tmp_path / "a", tmp_path / "c"]
    assert (tmp_path / "a").read_bytes() == b"1"


def test_unhandled_os_error_is_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from segany.cli import info

    def boom(args: object) -> int:
        raise PermissionError(errno.EACCES, "Permission denied", "/some/where")

    monkeypatch.setattr(info, "run", boom)
    rc = main(["info", "tiny"])
    err = capsys.readouterr().err
    assert rc == 2 and err == "segany info: error: /some/where: Permission denied\n"


# -- stale temporary files ------------------------------------------------------------------------------


def test_save_checkpoint_sweeps_a_killed_writers_temporary(tmp_path: Path) -> None:
    """Audit K8: a checkpoint write killed midway left its hidden temporary file for good."""
    from sam_testing import random_tiny

    from segany.io.checkpoint import load_checkpoint, save_checkpoint

    stale = tmp_path / f".model.safetensors.{files._HOST}-{dead_pid()}-abcdef.tmp"
    stale.write_bytes(b"half a checkpoint")
    model = random_tiny()
    path = save_checkpoint(model, tmp_path / "model.safetensors")
    assert _left(tmp_path) == ["model.safetensors"] and (path.stat().st_mode & 0o777) == 0o644
    loaded = load_checkpoint(path)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_killed_writers_leftovers_are_swept(tmp_path: Path) -> None:
    dead = dead_pid()
    host = files._HOST
    stale_file = tmp_path / f".m.png.{host}-{dead}-abcdef.tmp"
    stale_file.write_bytes(b"partial")
    stale_dir = tmp_path / f".img.{host}-{dead}-012345.tmp"
    stale_dir.mkdir()
    (stale_dir / "0.png").write_bytes(b"partial")
    live = temp_path(tmp_path / "m.png")  # this process: still writing
    live.write_bytes(b"in progress")
    other_host = tmp_path / f".m.png.{'0000' if host != '0000' else '1111'}-{dead}-abcdef.tmp"
    other_host.write_bytes(b"another machine's")
    legacy_old = tmp_path / ".x.json.0123456789ab.tmp"
    legacy_old.write_bytes(b"old")
    old = time.time() - LEGACY_TEMP_AGE_S - 10
    os.utime(legacy_old, (old, old))
    legacy_new = tmp_path / ".y.json.0123456789ab.tmp"
    legacy_new.write_bytes(b"maybe still being written")
    users = tmp_path / ".notes.tmp"
    users.write_text("not ours")

    removed = sweep_stale_temps(tmp_path, "m.png")  # the leftovers of writes to m.png only
    assert removed == [stale_file] and stale_dir.exists() and live.exists()
    stale_file.write_bytes(b"partial")
    atomic_write_bytes(tmp_path / "m.png", b"new")  # the first write into a folder sweeps all of it
    assert not stale_file.exists() and not stale_dir.exists() and not legacy_old.exists()
    assert live.exists() and other_host.exists() and legacy_new.exists() and users.exists()
    assert (tmp_path / "m.png").read_bytes() == b"new"
    stale_file.write_bytes(b"partial")
    atomic_write_bytes(tmp_path / "n.png", b"new")  # once per folder and process: no rescan
    assert stale_file.exists() and sweep_stale_temps(tmp_path) == [stale_file]


# -- SIGTERM ----------------------------------------------------------------------------------------------

_SLEEPY = r"""
import sys, time, types
from pathlib import Path
from segany.cli import main as m
from segany.io.files import temp_path

mod = types.ModuleType("sleepy")
mod.HELP = "sleep while holding a temporary file"
mod.add_arguments = lambda p: p.add_argument("folder")

def run(args):
    tmp = temp_path(Path(args.folder) / "out.json")
    tmp.write_text("partial")
    try:
        print("ready", flush=True)
        time.sleep(60)
    finally:
        tmp.unlink()
    return 0

mod.run = run
m._modules = lambda: {"sleepy": mod}
sys.exit(m.main(["sleepy", sys.argv[1]]))
"""


@pytest.mark.parametrize(
    "sig, status, word", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")]
)
def test_sigterm_like_sigint(tmp_path: Path, sig: signal.Signals, status: int, word: str) -> None:
    """Audit K7: SIGTERM (timeout, docker stop, schedulers) killed the process with no message and left
    its temporary files; now it unwinds like Ctrl-C."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLEEPY, str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=child_env(),
        # As from a terminal: a test run launched in the background (`pytest &`) has SIGINT ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    assert len(list(tmp_path.iterdir())) == 1
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == status and err == f"segany sleepy: {word}\n"
    assert list(tmp_path.iterdir()) == []


def test_main_restores_the_sigterm_handler(capsys: pytest.CaptureFixture[str]) -> None:
    before = signal.getsignal(signal.SIGTERM)
    main(["info", "tiny", "--json"])
    assert json.loads(capsys.readouterr().out)["architecture"] == "tiny"
    assert signal.getsignal(signal.SIGTERM) == before
