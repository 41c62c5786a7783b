"""The annotation database: tables, engines (SQLite beside the images, or PostgreSQL) and migrations.

The tables are declared here once; ``migrations/`` holds the Alembic revisions that create them, and
:func:`open_database` upgrades any database to the newest revision before the server uses it. A test
checks that the migrations and these declarations agree.

SQLite runs in WAL mode with a busy timeout, and every write transaction starts with ``BEGIN
IMMEDIATE``: a transaction that first reads and later writes would otherwise fail at once with
"database is locked" when another writer commits in between (busy_timeout does not cover that case).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

IMAGE_STATES = ("todo", "in_progress", "submitted", "accepted", "rejected")
SOURCES = ("manual", "auto", "auto_edited")
ROLES = ("admin", "annotator", "reviewer")


def utcnow() -> dt.datetime:
    """Now, in UTC, without tzinfo (stored that way on both back ends)."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    roles: Mapped[str] = mapped_column(String(64))  # comma-separated subset of ROLES
    password_hash: Mapped[str | None] = mapped_column(String(256), nullable=True)
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    def role_list(self) -> list[str]:
        return [r for r in self.roles.split(",") if r]


class Token(Base):
    """An API token (``Authorization: Bearer``) or a browser session (``kind == "session"``).

    Only the sha256 of the secret is stored; the secret is shown once.
    """

    __tablename__ = "tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    kind: Mapped[str] = mapped_column(String(16))  # "api" or "session"
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    csrf: Mapped[str | None] = mapped_column(String(64), nullable=True)
    name: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    expires: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(256), unique=True)
    allow_unlabelled: Mapped[bool] = mapped_column(Boolean, default=True)
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (
        UniqueConstraint("project_id", "sha256", name="uq_images_project_sha"),
        Index("ix_images_project_state", "project_id", "state"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"))
    sha256: Mapped[str] = mapped_column(String(64))
    # Relative to the project folder, chosen by the server (a scanned file or an upload's server-made name).
    path: Mapped[str] = mapped_column(Text)
    file_size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default="todo")
    version: Mapped[int] = mapped_column(Integer, default=1)
    lock_owner: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    lock_expires: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    annotator_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    reviewer_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    review_comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    updated: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Category(Base):
    __tablename__ = "categories"
    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_categories_project_name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"))
    name: Mapped[str] = mapped_column(String(256))
    fixed: Mapped[bool] = mapped_column(Boolean, default=False)


class Object(Base):
    """One mask on one image. ``deleted`` objects are kept (soft delete) so that the statistics can
    count deleted automatic masks; the API never returns them."""

    __tablename__ = "objects"
    __table_args__ = (Index("ix_objects_image", "image_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"))
    version: Mapped[int] = mapped_column(Integer, default=1)
    idempotency_key: Mapped[str | None] = mapped_column(String(128), unique=True, nullable=True)
    category: Mapped[str | None] = mapped_column(String(256), nullable=True)
    source: Mapped[str] = mapped_column(String(16), default="manual")
    counts: Mapped[str] = mapped_column(Text)  # COCO compressed RLE counts; size = the image's
    bbox: Mapped[Any] = mapped_column(JSON)
    area: Mapped[int] = mapped_column(Integer)
    prompts: Mapped[Any] = mapped_column(JSON, nullable=True)
    extra: Mapped[Any] = mapped_column(JSON, nullable=True)  # predicted_iou, stability_score, ...
    model: Mapped[str | None] = mapped_column(String(64), nullable=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    clicks: Mapped[int] = mapped_column(Integer, default=0)
    strokes: Mapped[int] = mapped_column(Integer, default=0)
    undos: Mapped[int] = mapped_column(Integer, default=0)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)


# -- engines -------------------------------------------------------------------------------------


def sqlite_url(folder: Path) -> str:
    return f"sqlite:///{(folder / 'annotate.sqlite3').as_posix()}"


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL, a busy timeout and ``BEGIN IMMEDIATE`` for writes."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=8, max_overflow=24
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (below)
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            readonly = conn.get_execution_options().get("segany_readonly", False)
            conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_size=8, max_overflow=24, pool_pre_ping=True)


class Database:
    """An engine plus read and write session factories."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.dialect = self.engine.dialect.name
        self._write = sessionmaker(self.engine, expire_on_commit=False)
        self._read = sessionmaker(self.engine.execution_options(segany_readonly=True), expire_on_commit=False)

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A transaction that commits on success and rolls back on any error."""
        with self._write() as session, session.begin():
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._read() as session, session.begin():
            yield session

    def dispose(self) -> None:
        self.engine.dispose()


def migrate(engine: Engine) -> None:
    """Upgrade the database behind ``engine`` to the newest Alembic revision."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
        conn.commit()


def open_database(url: str) -> Database:
    """Open (and migrate) the database at ``url``."""
    db = Database(url)
    migrate(db.engine)
    return db
