"""What the web UI, the control socket and the sync see of the running gateway: a Protocol and its values.

The composition root (``app``) builds the gateway and hands it to them only as a ``Host``:
they may read its configuration, configuration manager, analyzer and status, push by
hand, sync now, reset the analyzer, write a backup and restore one (both raise
``WmbusStreamError`` or ``OSError`` naming why not), nothing else. The status is a tree of frozen
values; ``as_json`` turns it into the JSON every output has always shown (``status``,
the control socket, ``/api/v1/status``), key for key in the same order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import Field, dataclass, fields, is_dataclass
from datetime import datetime, UTC
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar, Protocol

if TYPE_CHECKING:
    from .config.history import HistoryEntry
    from .config.manage import ConfigManager
    from .config.model import Config
    from .core.analyzer import Analyzer

__all__ = ["Counts", "Host", "PushOutcome", "PushTotals", "ReceiverStatus", "RestoreResult", "Status", "SyncOutcome",
           "SyncStatus", "as_json"]


@dataclass(frozen=True, slots=True)
class PushOutcome:
    """What the last push did, for status output and logs."""

    at: float
    ok: bool
    lines: int
    status: int | None
    attempts: int
    error: str | None
    duration: float

    def summary(self) -> str:
        """One line: when, and acknowledged, not sent or failed with why."""
        when = datetime.fromtimestamp(self.at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        if self.ok and not self.attempts:
            return f"{when}: nothing pending, nothing sent"
        if self.ok:
            return f"{when}: acknowledged, {self.lines} lines, HTTP {self.status}, {self.duration:.2f} s"
        if not self.attempts:
            return f"{when}: not sent: {self.error}; {self.lines} meters kept"
        return f"{when}: failed after {self.attempts} attempt(s): {self.error}; {self.lines} meters kept"


@dataclass(frozen=True, slots=True)
class Counts:
    """Runs of something by outcome."""

    ok: int
    failed: int


@dataclass(frozen=True, slots=True)
class ReceiverStatus:
    """The receiver: what it is, whether it delivers, what its framer skipped."""

    protocol: str
    port: str
    state: str
    reconnects: int
    last_error: str | None
    bytes_read: int
    last_data_at: float | None
    silent: bool
    silence_alarms: int
    skipped_bytes: int
    bad_frames: int


@dataclass(frozen=True, slots=True)
class SyncStatus:
    """The configuration sync: its schedule, runs and last result (as the result's JSON)."""

    enabled: bool
    url: str | None
    cron: str
    next: datetime | None
    in_flight: bool
    runs: Counts
    last: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class Status:
    """Everything a field engineer asks first."""

    version: str
    implementation: str
    enabled: bool
    uptime_seconds: float
    gateway_serial: str
    receiver: ReceiverStatus
    telegrams: Mapping[str, int]
    telegrams_long_form: int
    meters_pending: int
    store_write_errors: int
    pushes: Counts
    push_in_flight: bool
    last_push: PushOutcome | None
    next_push: datetime | None
    sync: SyncStatus


@dataclass(frozen=True, slots=True)
class PushTotals:
    """Counters of every push since the start, for the metrics."""

    attempts: int
    seconds: float
    lines_acknowledged: int
    last_success_at: float | None


@dataclass(frozen=True, slots=True)
class RestoreResult:
    """What a restore put in place."""

    entry: HistoryEntry | None
    created: str
    source_serial: str
    serial: str
    pending: int
    history_entries: int
    files: tuple[str, ...]

    @property
    def number(self) -> int | None:
        """The history entry the restored configuration was saved as, if any."""
        return self.entry.number if self.entry else None

    def summary(self) -> str:
        kept = "kept" if self.serial != self.source_serial else "taken from the backup"
        return (f"restored the backup of gateway {self.source_serial} made {self.created}: {self.pending} meters"
                f" pending, {self.history_entries} history entries, {len(self.files)} files; serial {self.serial}"
                f" ({kept})")


class SyncOutcome(Protocol):
    """What one sync did (``sync.procedure.SyncResult``): a dataclass with a log line and a JSON form."""

    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]

    def summary(self) -> str: ...

    def as_dict(self) -> dict[str, Any]: ...


class Host(Protocol):
    """The running gateway as the web UI and the control socket may use it."""

    @property
    def config(self) -> Config: ...

    @property
    def manager(self) -> ConfigManager | None: ...

    @property
    def analyzer(self) -> Analyzer | None: ...

    @property
    def started_at(self) -> float: ...

    def status(self) -> Status: ...

    def push_totals(self) -> PushTotals: ...

    def push_by_hand(self) -> PushOutcome | None: ...

    def sync_now(self) -> SyncOutcome: ...

    def reset_analyzer(self, now: float) -> None: ...

    def backup(self, dest: BinaryIO) -> None: ...

    def restore(self, source: BinaryIO, size: int, keep_serial: bool) -> RestoreResult: ...


def as_json(value: Any) -> Any:
    """``value`` (a status or any part of it) as plain JSON values: fields in order, times in ISO 8601."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: as_json(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {key: as_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_json(item) for item in value]
    return value
