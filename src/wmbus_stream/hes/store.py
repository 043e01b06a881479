"""What the reference HES keeps and the contract of a store: readings, receptions, one POST's transaction.

A reading is one distinct wireless telegram (key: SHA-256 of its bytes, which cover
manufacturer, meter ID, version, device type, access number and payload); a reception
(``heard_by``) is one gateway hearing it at one time. The same telegram from three gateways
is one reading heard three times; a retried report adds nothing. Every new reading also
gets an outbox row, drained in order by the MQTT publisher (``hes.publish``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from .report import ReportLine

__all__ = ["Heard", "Ingest", "Publication", "Reading", "Reception", "Store", "rssi_dbm", "utc_now"]


@dataclass(frozen=True, slots=True)
class Reading:
    """One distinct wireless telegram, whichever gateways heard it."""

    digest: str
    manufacturer: str
    meter_id: str
    version: int
    device_type: int
    ci: int
    access_number: int | None
    telegram: bytes
    first_heard: str
    first_gateway: str
    stored_at: str


@dataclass(frozen=True, slots=True)
class Heard:
    """One gateway's reception of a reading."""

    digest: str
    gateway: str
    date: str
    rssi_code: int | None
    receiver: str | None
    age_minutes: int | None
    stored_at: str


@dataclass(frozen=True, slots=True)
class Publication:
    """A new reading waiting in the outbox, with the receptions known when it was taken."""

    outbox_id: int
    reading: Reading
    heard: tuple[Heard, ...]


@dataclass(frozen=True, slots=True)
class Reception:
    """One reception as the coverage report reads it."""

    manufacturer: str
    meter_id: str
    device_type: int
    gateway: str
    heard_at: str
    rssi_code: int | None
    version: int  # with manufacturer, meter ID and device type: the meter's link address, so which meter


class Ingest(Protocol):
    """One POST's lines on their way into a store: staged as they arrive, stored all at once or not at all."""

    def stage(self, lines: Sequence[ReportLine]) -> None:
        """Keep validated lines for the commit; memory stays bounded whatever the number of calls."""
        ...

    def commit(self) -> tuple[int, int]:
        """Store everything staged in one transaction, durable when it returns: (new readings, new receptions)."""
        ...

    def abort(self) -> None:
        """Drop what was staged; nothing of it is stored."""
        ...


class Store(Protocol):
    """Where accepted lines go."""

    def begin(self) -> Ingest:
        """A new POST's transaction."""
        ...

    def add(self, lines: Iterable[ReportLine]) -> tuple[int, int]:
        """Store lines in one transaction: (new readings, new receptions)."""
        ...

    def readings(self) -> list[Reading]:
        """All readings, oldest first."""
        ...

    def heard(self) -> list[Heard]:
        """All receptions, oldest first."""
        ...

    def pending(self, limit: int) -> list[Publication]:
        """Up to ``limit`` oldest outbox rows, in order; [] when none, or while another instance drains them."""
        ...

    def published(self, outbox_ids: Sequence[int]) -> None:
        """Remove published rows from the outbox (durable when it returns)."""
        ...

    def receptions(self, since: str, until: str) -> Iterator[Reception]:
        """Every reception with ``since <= heard_at < until`` (``YYYY-MM-DD hh:mm:ss``), in no set order."""
        ...

    def close(self) -> None:
        """Release the file or database."""
        ...


def utc_now() -> str:
    """The ``stored_at`` stamp: UTC with microseconds."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def rssi_dbm(code: int | None) -> int | None:
    """The dBm of a report's RSSI code (spec section 2): 1..62 is 2n-130, 63 is above -6 dBm (given as -4); 0 is none."""
    if not code:
        return None
    return -4 if code >= 63 else 2 * code - 130

