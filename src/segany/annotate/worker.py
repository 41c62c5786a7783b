"""The background encoder: computes every image's embedding once, next images first."""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select

from segany.annotate.db import Database, Image
from segany.annotate.images import inside
from segany.annotate.modelsvc import ModelService

log = logging.getLogger("segany.annotate")
RESCAN_SECONDS = 60.0  # idle worker: look for new files in the folder this often


class EmbeddingWorker:
    """A daemon thread that walks the images in id order, encoding those without a cached embedding.

    :meth:`prefetch` puts images at the front of the queue (the server calls it with the next images
    after handing one out). :meth:`progress` says how far it is. When idle it calls ``rescan`` (which
    adds new files of the folder to the project) every minute.
    """

    def __init__(
        self,
        db: Database,
        service: ModelService,
        root: Path,
        export_decoder: bool = True,
        rescan: Callable[[], int] | None = None,
    ) -> None:
        self.db = db
        self.rescan = rescan
        self.service = service
        self.root = root
        self.export_decoder = export_decoder
        self._urgent: collections.deque[int] = collections.deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="segany-embeddings", daemon=True)
        self.failed: dict[int, str] = {}
        self.busy = False

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def prefetch(self, image_ids: list[int]) -> None:
        for image_id in reversed(image_ids):
            self._urgent.appendleft(image_id)
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def progress(self) -> dict[str, int | bool]:
        with self.db.read() as s:
            shas = set(s.scalars(select(Image.sha256)))
        done = sum(1 for sha in shas if self.service.has_embedding(sha))
        return {"total": len(shas), "done": done, "failed": len(self.failed), "running": self.busy}

    def encode(self, image_id: int) -> bool:
        """Encode one image if needed; False when it cannot be read (remembered in ``failed``)."""
        with self.db.read() as s:
            image = s.get(Image, image_id)
            if image is None:
                return False
            sha, rel = image.sha256, image.path
        if self.service.has_embedding(sha):
            return True
        path = inside(self.root, self.root / rel)
        if path is None:
            self.failed[image_id] = "file missing or outside the project"
            return False
        try:
            self.service.ensure_embedding(sha, path)
        except Exception as exc:  # one bad file must not stop the others
            self.failed[image_id] = f"{type(exc).__name__}: {exc}"
            log.warning("embedding of image %s failed: %s", image_id, exc)
            return False
        return True

    def _pending(self) -> list[int]:
        with self.db.read() as s:
            rows = s.execute(select(Image.id, Image.sha256).order_by(Image.id)).all()
        return [i for i, sha in rows if i not in self.failed and not self.service.has_embedding(sha)]

    def _run(self) -> None:
        decoder_done = not self.export_decoder
        pending: collections.deque[int] = collections.deque()
        last_scan = time.monotonic()
        while not self._stop.is_set():
            self.busy = True
            try:
                while self._urgent and not self._stop.is_set():
                    self.encode(self._urgent.popleft())
                if not pending:
                    # One query per pass over the project, not per image (large projects).
                    pending.extend(self._pending())
                if pending:
                    self.encode(pending.popleft())
                    continue
                if not decoder_done:
                    try:
                        self.service.decoder_path()
                    except Exception as exc:
                        log.warning("decoder export failed: %s", exc)
                    decoder_done = True
                    continue
                if self.rescan is not None and time.monotonic() - last_scan > RESCAN_SECONDS:
                    last_scan = time.monotonic()
                    if self.rescan():  # new files in the folder: encode them too
                        continue
            except Exception as exc:  # e.g. the database went away for a moment
                log.warning("embedding worker: %s", exc)
                self._stop.wait(1.0)
            finally:
                self.busy = False
            self._wake.wait(2.0)
            self._wake.clear()
