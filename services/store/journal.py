"""What a decision asks the database to write, grouped for one group commit.

The in-memory books decide; each decision that changes durable state
returns a list of writes. The server collects the writes of every request
that arrives while the previous transaction is being committed into one
:class:`Batch`, which :meth:`Database.apply` writes in a single
transaction. A request's writes stand or fall together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Union


@dataclass(slots=True)
class LeaseWrite:
    """The row of one address; ``insert`` when no row exists for it yet."""

    row: dict[str, Any]
    insert: bool


@dataclass(slots=True)
class MachineWrite:
    row: dict[str, Any]
    insert: bool


@dataclass(slots=True)
class ReservationWrite:
    row: dict[str, Any]  # mac, address, name, os; replaces the MAC's reservation


@dataclass(slots=True)
class ReservationDeletion:
    mac: str


@dataclass(slots=True)
class TokenWrite:
    row: dict[str, Any]  # name, scope, digest, created


@dataclass(slots=True)
class TokenDeletion:
    name: str


@dataclass(slots=True)
class EventWrite:
    row: dict[str, Any]


@dataclass(slots=True)
class EventPruning:
    """Drop events with ids at or below ``upto`` (the log is bounded)."""

    upto: int


Write = Union[LeaseWrite, MachineWrite, ReservationWrite, ReservationDeletion, EventWrite,
              EventPruning, TokenWrite, TokenDeletion]


@dataclass(slots=True)
class Change:
    """The writes of one request, and who is waiting for them."""

    writes: list[Write]
    token: Any = None  # the server's handle to answer once durable


@dataclass(slots=True)
class Batch:
    """Changes written in one transaction, then reads that must see them."""

    changes: list[Change] = field(default_factory=list)
    reads: list[Callable[[Any], Any]] = field(default_factory=list)
    read_tokens: list[Any] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.changes or self.reads)

    def add(self, writes: list[Write], token: Any = None) -> None:
        self.changes.append(Change(writes, token))

    def add_read(self, read: Callable[[Any], Any], token: Any) -> None:
        """``read(connection)`` runs after this batch's writes are committed."""
        self.reads.append(read)
        self.read_tokens.append(token)


@dataclass(slots=True)
class BatchOutcome:
    """``failed`` holds the indexes of changes the database refused (constraint)."""

    failed: frozenset[int] = frozenset()
    reads: list[Any] = field(default_factory=list)
    seconds: float = 0.0
