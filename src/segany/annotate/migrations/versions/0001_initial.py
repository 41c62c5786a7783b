"""The first schema: users, tokens, projects, images, categories, objects.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("roles", sa.String(64), nullable=False),
        sa.Column("password_hash", sa.String(256), nullable=True),
        sa.Column("created", sa.DateTime, nullable=False),
    )
    op.create_table(
        "tokens",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("csrf", sa.String(64), nullable=True),
        sa.Column("name", sa.String(128), nullable=True),
        sa.Column("created", sa.DateTime, nullable=False),
        sa.Column("expires", sa.DateTime, nullable=True),
        sa.Column("revoked", sa.Boolean, nullable=False),
    )
    op.create_table(
        "projects",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(256), nullable=False, unique=True),
        sa.Column("allow_unlabelled", sa.Boolean, nullable=False),
        sa.Column("created", sa.DateTime, nullable=False),
    )
    op.create_table(
        "images",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id"), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("file_size", sa.BigInteger, nullable=False),
        sa.Column("mtime_ns", sa.BigInteger, nullable=False),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("lock_owner", sa.Integer, sa.ForeignKey("users.id"), nullable=True),
        sa.Column("lock_expires", sa.DateTime, nullable=True),
        sa.Column("annotator_id", sa.Integer, sa.ForeignKey("users.id"), nullable=True),
        sa.Column("reviewer_id", sa.Integer, sa.ForeignKey("users.id"), nullable=True),
        sa.Column("review_comment", sa.Text, nullable=True),
        sa.Column("updated", sa.DateTime, nullable=False),
        sa.UniqueConstraint("project_id", "sha256", name="uq_images_project_sha"),
    )
    op.create_index("ix_images_project_state", "images", ["project_id", "state"])
    op.create_table(
        "categories",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id"), nullable=False),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("fixed", sa.Boolean, nullable=False),
        sa.UniqueConstraint("project_id", "name", name="uq_categories_project_name"),
    )
    op.create_table(
        "objects",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id"), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("idempotency_key", sa.String(128), nullable=True, unique=True),
        sa.Column("category", sa.String(256), nullable=True),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("counts", sa.Text, nullable=False),
        sa.Column("bbox", sa.JSON, nullable=False),
        sa.Column("area", sa.Integer, nullable=False),
        sa.Column("prompts", sa.JSON, nullable=True),
        sa.Column("extra", sa.JSON, nullable=True),
        sa.Column("model", sa.String(64), nullable=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=True),
        sa.Column("created", sa.DateTime, nullable=False),
        sa.Column("updated", sa.DateTime, nullable=False),
        sa.Column("seconds", sa.Float, nullable=False),
        sa.Column("clicks", sa.Integer, nullable=False),
        sa.Column("strokes", sa.Integer, nullable=False),
        sa.Column("undos", sa.Integer, nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False),
    )
    op.create_index("ix_objects_image", "objects", ["image_id"])


def downgrade() -> None:
    for table in ("objects", "categories", "images", "projects", "tokens", "users"):
        op.drop_table(table)
