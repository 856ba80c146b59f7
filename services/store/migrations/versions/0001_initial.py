"""Pools, leases, machines and reservations.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pools",
        sa.Column("subnet", sa.String(18), nullable=False),
        sa.Column("range_start", sa.String(15), nullable=False),
        sa.Column("range_end", sa.String(15), nullable=False),
        sa.Column("lease_time", sa.Integer(), nullable=False),
        sa.Column("relayed", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("subnet", name="pk_pools"),
    )
    op.create_table(
        "leases",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("address", sa.String(15), nullable=False),
        sa.Column("subnet", sa.String(18), nullable=False),
        sa.Column("mac", sa.String(17), nullable=False),
        sa.Column("client_id", sa.LargeBinary(255), nullable=True),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("expires", sa.Float(), nullable=False),
        sa.Column("lease_time", sa.Integer(), nullable=False),
        sa.Column("updated", sa.Float(), nullable=False),
        sa.CheckConstraint("state IN ('offered', 'bound', 'released', 'declined', 'expired')",
                           name="ck_leases_state"),
        sa.ForeignKeyConstraint(["subnet"], ["pools.subnet"], name="fk_leases_subnet_pools"),
        sa.PrimaryKeyConstraint("id", name="pk_leases"),
        sa.UniqueConstraint("address", name="uq_leases_address"),
    )
    op.create_index("ix_leases_mac", "leases", ["mac"])
    op.create_table(
        "machines",
        sa.Column("mac", sa.String(17), nullable=False),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("os", sa.String(64), nullable=True),
        sa.Column("class", sa.String(64), nullable=True),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("boot_once", sa.Boolean(), nullable=False),
        sa.Column("first_seen", sa.Float(), nullable=False),
        sa.Column("last_seen", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("mac", name="pk_machines"),
        sa.UniqueConstraint("name", name="uq_machines_name"),
    )
    op.create_table(
        "reservations",
        sa.Column("mac", sa.String(17), nullable=False),
        sa.Column("address", sa.String(15), nullable=False),
        sa.Column("name", sa.String(63), nullable=True),
        sa.Column("os", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("mac", name="pk_reservations"),
        sa.UniqueConstraint("address", name="uq_reservations_address"),
    )


def downgrade() -> None:
    op.drop_table("reservations")
    op.drop_table("machines")
    op.drop_index("ix_leases_mac", table_name="leases")
    op.drop_table("leases")
    op.drop_table("pools")
