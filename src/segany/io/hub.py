"""Released SAM-family weights by name: where they are cached, where else users keep them, and a
download that resumes, verifies and places the file atomically.

A name (``vit_b``, ``mobile_sam``, ``sam_hq_vit_l``, ...) resolves to the first of:

1. segany's checkpoint cache: ``$SEGANY_CHECKPOINTS`` if set, else ``$XDG_CACHE_HOME/segany/checkpoints``
   (``~/.cache/segany/checkpoints``);
2. torch hub's checkpoint folder (``$TORCH_HOME/hub/checkpoints``, ``~/.cache/torch/hub/checkpoints``),
   where ``torch.hub.load_state_dict_from_url`` and other tools put these files;
3. a download from the official address into segany's cache.

A download goes to ``<file>.part`` first (locked against a second process), resumes a ``.part`` left
by an interrupted one with an HTTP Range request, checks the size and checksum, and only then renames
the file into place: the cache never holds a partial or unverified file under its real name.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from segany.errors import CheckpointError


@dataclass(frozen=True)
class Release:
    """One released checkpoint. ``sha256``/``md5``/``size`` are None where not known (see WEIGHTS)."""

    name: str
    filename: str
    url: str
    description: str
    size: int | None = None
    sha256: str | None = None
    md5: str | None = None

    @property
    def verifiable(self) -> bool:
        """Whether a checksum is known, so that a download can be checked to be this release."""
        return bool(self.sha256 or self.md5)


# The released weights. Addresses are the authors' own. Checksums could not be computed here (no
# internet): the SHA-256 sums of sam_vit_b and sam_vit_h and every size come from public listings of
# these files, the MD5 sums from a widely used downloader's table (the SAM ones match the six hex
# digits in the official file names). A download is checked against every value given: SHA-256 when
# known, else MD5, and the size. MobileSAM's and Light HQ-SAM's files have none known (nothing here
# records one: not the reference packages, not their metadata): their downloads print a warning that
# they cannot be verified, are checked by the checkpoint validation only (keys, shapes, sizes), and
# `segany info` says "checksum unknown".
WEIGHTS: dict[str, Release] = {
    r.name: r
    for r in [
        Release(
            "vit_b", "sam_vit_b_01ec64.pth",
            "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
            "SAM ViT-B (Meta, 2023)", size=375042383,
            sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
            md5="01ec64d29a2fca3f0661936605ae66f8",
        ),
        Release(
            "vit_l", "sam_vit_l_0b3195.pth",
            "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
            "SAM ViT-L (Meta, 2023)", size=1249524607, md5="0b3195507c641ddb6910d2bb5adee89c",
        ),
        Release(
            "vit_h", "sam_vit_h_4b8939.pth",
            "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
            "SAM ViT-H (Meta, 2023)", size=2564550879,
            sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
            md5="4b8939a88964f0f4ff5f5b2642c598a6",
        ),
        Release(
            "mobile_sam", "mobile_sam.pt",
            "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
            "MobileSAM: TinyViT-5M encoder distilled from ViT-H (Zhang et al., 2023)",
        ),
        Release(
            "sam_hq_vit_b", "sam_hq_vit_b.pth", "https://huggingface.co/lkeab/hq-sam/resolve/main/sam_hq_vit_b.pth",
            "SAM-HQ ViT-B (Ke et al., 2023)", md5="c6b8953247bcfdc8bb8ef91e36a6cacc",
        ),
        Release(
            "sam_hq_vit_l", "sam_hq_vit_l.pth", "https://huggingface.co/lkeab/hq-sam/resolve/main/sam_hq_vit_l.pth",
            "SAM-HQ ViT-L (Ke et al., 2023)", md5="08947267966e4264fb39523eccc33f86",
        ),
        Release(
            "sam_hq_vit_h", "sam_hq_vit_h.pth", "https://huggingface.co/lkeab/hq-sam/resolve/main/sam_hq_vit_h.pth",
            "SAM-HQ ViT-H (Ke et al., 2023)", md5="3560f6b6a5a6edacd814a1325c39640a",
        ),
        Release(
            "sam_hq_vit_tiny", "sam_hq_vit_tiny.pth",
            "https://huggingface.co/lkeab/hq-sam/resolve/main/sam_hq_vit_tiny.pth",
            "Light HQ-SAM: MobileSAM's TinyViT with the HQ decoder (Ke et al., 2023)",
        ),
    ]
}

# CLIP weights for the text prompt path (segany.io.clip), under the same cache, download and checksum
# rules. OpenAI publishes each file's SHA-256 as the folder name of its address; sizes are not known here.
CLIP_WEIGHTS: dict[str, Release] = {
    r.name: r
    for r in [
        Release(
            "clip_vit_l14_336", "ViT-L-14-336px.pt",
            "https://openaipublic.azureedge.net/clip/models/"
            "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02/ViT-L-14-336px.pt",
            "CLIP ViT-L/14 at 336 px (OpenAI, 2021): the one the SAM paper uses for text prompts",
            sha256="3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02",
        ),
        Release(
            "clip_vit_l14", "ViT-L-14.pt",
            "https://openaipublic.azureedge.net/clip/models/"
            "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt",
            "CLIP ViT-L/14 at 224 px (OpenAI, 2021)",
            sha256="b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836",
        ),
        Release(
            "clip_vit_b32", "ViT-B-32.pt",
            "https://openaipublic.azureedge.net/clip/models/"
            "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
            "CLIP ViT-B/32 (OpenAI, 2021): small, for trying the text path out",
            sha256="40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af",
        ),
    ]
}

CHUNK = 1 << 20


def cache_dir() -> Path:
    """segany's checkpoint cache (not created here)."""
    if os.environ.get("SEGANY_CHECKPOINTS"):
        return Path(os.environ["SEGANY_CHECKPOINTS"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "segany" / "checkpoints"


def search_dirs() -> list[Path]:
    """Where a released file is looked for, in order: segany's cache, then torch hub's checkpoints."""
    dirs = [cache_dir()]
    try:
        import torch.hub

        dirs.append(Path(torch.hub.get_dir()) / "checkpoints")
    except Exception:  # torch hub's location is a convenience; never fail over it
        pass
    return dirs


def find_cached(release: Release) -> Path | None:
    for folder in search_dirs():
        path = folder / release.filename
        if path.is_file():
            return path
    return None


def known_release(path: str | os.PathLike[str]) -> Release | None:
    """The release a file is, by size and then checksum (None when it matches none)."""
    p = Path(path)
    if not p.is_file():
        return None
    size = p.stat().st_size
    candidates = [r for r in WEIGHTS.values() if r.size in (None, size) and (r.sha256 or r.md5)]
    if not candidates:
        return None
    sha, md5 = _hash_file(p)
    for r in candidates:
        if (r.sha256 and r.sha256 == sha) or (not r.sha256 and r.md5 == md5):
            return r
    return None


def _hash_file(path: Path) -> tuple[str, str]:
    sha, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            sha.update(chunk)
            md5.update(chunk)
    return sha.hexdigest(), md5.hexdigest()


def resolve(
    name: str, download: bool = True, progress: bool = True, table: dict[str, Release] | None = None
) -> Path:
    """The local file of the release ``name``, downloaded into segany's cache when it is nowhere.
    ``table``: where ``name`` is looked up (default :data:`WEIGHTS`; :data:`CLIP_WEIGHTS` for CLIP)."""
    table = WEIGHTS if table is None else table
    release = table.get(name)
    if release is None:
        raise CheckpointError(f"{name}: not a known checkpoint name ({', '.join(table)})")
    found = find_cached(release)
    if found is not None:
        return found
    target = cache_dir() / release.filename
    if not download:
        raise CheckpointError(f"{name}: not downloaded; expected at {target}")
    return fetch(release, target, progress=progress)


def _by_hand(release: Release, target: Path) -> str:
    return f"download {release.url} by hand and put it at {target}"


def fetch(release: Release, target: Path, progress: bool = True, timeout: float = 60.0) -> Path:
    """Download ``release`` to ``target``: resumable, verified, atomic. Errors are one line that says
    what failed and where to put the file by hand. A release without a known checksum is downloaded
    after a one-line warning on stderr that it cannot be verified."""
    if not release.verifiable:
        print(
            f"segany: warning: no checksum is known for {release.filename}; the download from {release.url} "
            "cannot be verified (only loading it checks its layout)",
            file=sys.stderr,
            flush=True,
        )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + ".part")
        handle = open(part, "ab")
    except OSError as exc:
        raise CheckpointError(
            f"{target.parent}: cannot write the checkpoint cache ({exc.strerror}); "
            "set SEGANY_CHECKPOINTS to a writable folder"
        ) from None
    with handle:
        _lock(handle, release, target)
        try:
            _transfer(release, part, handle, progress, timeout, target)
        except OSError as exc:
            if isinstance(exc, urllib.error.HTTPError):
                what = f"the server answered {exc.code} {exc.reason}"
            elif isinstance(exc, urllib.error.URLError):
                what = f"cannot reach the server ({exc.reason})"
            elif exc.errno == errno.ENOSPC:
                what = "the disk is full"
            else:
                what = str(exc) or type(exc).__name__
            raise CheckpointError(f"{release.name}: download failed: {what}; {_by_hand(release, target)}") from None
        _verify(release, part, target)
        os.replace(part, target)
    return target


def _lock(handle: object, release: Release, target: Path) -> None:
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, as torch hub
        return
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # type: ignore[attr-defined]
    except OSError:
        raise CheckpointError(
            f"{release.name}: another process is downloading {target}; wait for it to finish"
        ) from None


def _transfer(release: Release, part: Path, handle: object, progress: bool, timeout: float, target: Path) -> None:
    """Append the rest of the file to ``part`` (resuming from its current size)."""
    have = part.stat().st_size
    request = urllib.request.Request(release.url, headers={"User-Agent": "segany"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code != 416 or not have:
            raise
        # Nothing left to send: the part is complete (verified next), or longer than the file.
        return
    with response:
        if have and response.status != 206:
            handle.truncate(0)  # type: ignore[attr-defined]  # the server ignored the range: start over
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None and length.isdigit() else release.size
        from tqdm import tqdm

        with tqdm(
            total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
            desc=f"downloading {release.filename}", disable=None if progress else True, leave=False,
        ) as bar:
            broken = False
            try:
                while chunk := response.read(CHUNK):
                    handle.write(chunk)  # type: ignore[attr-defined]
                    bar.update(len(chunk))
            except (http.client.HTTPException, ConnectionError, TimeoutError):
                broken = True  # the connection dropped: keep what arrived for a resume
        handle.flush()  # type: ignore[attr-defined]
        got = part.stat().st_size
        if broken or (total is not None and got < total):
            raise CheckpointError(
                f"{release.name}: download interrupted at {got} of {total} bytes (kept in {part}; run again to "
                f"resume, or {_by_hand(release, target)})"
            )


def _verify(release: Release, part: Path, target: Path) -> None:
    size = part.stat().st_size
    problem = None
    if release.size is not None and size != release.size:
        problem = f"{size} bytes where {release.size} were expected"
    elif release.sha256 or release.md5:
        sha, md5 = _hash_file(part)
        if release.sha256 and sha != release.sha256:
            problem = f"SHA-256 {sha} where {release.sha256} was expected"
        elif not release.sha256 and md5 != release.md5:
            problem = f"MD5 {md5} where {release.md5} was expected"
    if problem:
        part.unlink(missing_ok=True)  # a wrong file is no start for a resume
        raise CheckpointError(f"{release.name}: the downloaded file is wrong ({problem}); {_by_hand(release, target)}")
