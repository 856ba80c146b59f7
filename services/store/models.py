"""The store's tables (SQLAlchemy 2.0 declarative models).

The schema is owned by the alembic migrations in ``migrations/versions``;
these classes describe the head revision and are what the code reads and
writes through. Times are float seconds since the epoch, addresses dotted
strings, MACs lower-case ``aa:bb:cc:dd:ee:ff``, as on the bus.
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import (JSON, BigInteger, Boolean, CheckConstraint, Float, ForeignKey, Index,
                        Integer, LargeBinary, MetaData, String, Table, Text)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from astralboot.services.store.leasestate import LeaseState

LEASE_STATES = tuple(state.value for state in LeaseState)  # the column's CHECK constraint

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class PoolRow(Base):
    """One configured subnet; kept so leases of a removed subnet stay readable."""

    __tablename__ = "pools"

    subnet: Mapped[str] = mapped_column(String(18), primary_key=True)
    range_start: Mapped[str] = mapped_column(String(15))
    range_end: Mapped[str] = mapped_column(String(15))
    lease_time: Mapped[int] = mapped_column(Integer)
    relayed: Mapped[bool] = mapped_column(Boolean, default=False)


class LeaseRow(Base):
    """The latest lease of one address (one row per address ever leased)."""

    __tablename__ = "leases"
    __table_args__ = (
        CheckConstraint(f"state IN {LEASE_STATES!r}", name="state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    address: Mapped[str] = mapped_column(String(15), unique=True)
    subnet: Mapped[str] = mapped_column(ForeignKey("pools.subnet"))
    mac: Mapped[str] = mapped_column(String(17), index=True)
    client_id: Mapped[bytes | None] = mapped_column(LargeBinary(255))
    hostname: Mapped[str | None] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(10))
    expires: Mapped[float] = mapped_column(Float)
    lease_time: Mapped[int] = mapped_column(Integer)
    updated: Mapped[float] = mapped_column(Float)


class MachineRow(Base):
    __tablename__ = "machines"

    mac: Mapped[str] = mapped_column(String(17), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    os: Mapped[str | None] = mapped_column(String(64))
    machine_class: Mapped[str | None] = mapped_column("class", String(64))
    labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    boot_once: Mapped[bool] = mapped_column(Boolean, default=False)
    first_seen: Mapped[float] = mapped_column(Float)
    last_seen: Mapped[float] = mapped_column(Float)
    loader: Mapped[str | None] = mapped_column(String(8))


class ReservationRow(Base):
    """A static MAC → address reservation made at run time (config.toml has more)."""

    __tablename__ = "reservations"

    mac: Mapped[str] = mapped_column(String(17), primary_key=True)
    address: Mapped[str] = mapped_column(String(15), unique=True)
    name: Mapped[str | None] = mapped_column(String(63))
    os: Mapped[str | None] = mapped_column(String(64))


class TokenRow(Base):
    """An admin API token: its name, its scope and the SHA-256 of its secret."""

    __tablename__ = "tokens"
    __table_args__ = (CheckConstraint("scope IN ('read', 'write')", name="scope"),)

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    scope: Mapped[str] = mapped_column(String(8))
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    created: Mapped[float] = mapped_column(Float)


class BootEventRow(Base):
    """One boot stage of one machine; ids are assigned by the store, in order."""

    __tablename__ = "boot_events"
    __table_args__ = (Index("ix_boot_events_mac_id", "mac", "id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                    primary_key=True, autoincrement=False)
    time: Mapped[float] = mapped_column(Float)
    mac: Mapped[str] = mapped_column(String(17))
    ip: Mapped[str | None] = mapped_column(String(15))
    service: Mapped[str] = mapped_column(String(16))
    stage: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text, default="")


# The tables themselves, for the Core statements of the group commit.
leases = cast(Table, LeaseRow.__table__)
machines = cast(Table, MachineRow.__table__)
reservations = cast(Table, ReservationRow.__table__)
boot_events = cast(Table, BootEventRow.__table__)
pools = cast(Table, PoolRow.__table__)
tokens = cast(Table, TokenRow.__table__)
