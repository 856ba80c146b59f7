"""Lease host names and the boot event log.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("leases") as batch:
        batch.add_column(sa.Column("hostname", sa.String(255), nullable=True))
    op.create_table(
        "boot_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  autoincrement=False, nullable=False),
        sa.Column("time", sa.Float(), nullable=False),
        sa.Column("mac", sa.String(17), nullable=False),
        sa.Column("ip", sa.String(15), nullable=True),
        sa.Column("service", sa.String(16), nullable=False),
        sa.Column("stage", sa.String(32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_boot_events"),
    )
    op.create_index("ix_boot_events_mac_id", "boot_events", ["mac", "id"])


def downgrade() -> None:
    op.drop_index("ix_boot_events_mac_id", table_name="boot_events")
    op.drop_table("boot_events")
    with op.batch_alter_table("leases") as batch:
        batch.drop_column("hostname")
