"""Each machine's loader: iPXE or Debian's signed shim + GRUB (Secure Boot).

NULL (every machine until an operator sets one) means the configured
default, ``[uefi] loader``.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("machines") as batch:
        batch.add_column(sa.Column("loader", sa.String(8), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("machines") as batch:
        batch.drop_column("loader")
