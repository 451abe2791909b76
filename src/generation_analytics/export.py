"""Exported events as flat rows, and the files they are written to: CSV, JSON Lines and Parquet.

One row shape for every way out: the CLI (`generation-analytics export`, from ExportEvents' StoredEvent
messages) and the HTTP gateway's `events.csv` (from database rows) write the same columns, spelled the
same way, so a file does not depend on the path it took. Needs only the client's packages; Parquet
needs pyarrow (the `[parquet]` extra) and says so when it is missing.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol

from generation_analytics.v1 import events_pb2
from generation_analytics.vocabulary import label

# The columns of an export, in order: generation_events' columns (image dimensions flattened).
COLUMNS = (
    "id", "event_id", "event_type", "generation_id", "user_id", "timestamp", "duration_ms", "success",
    "error_type", "error_message", "model_checkpoint", "generation_type", "queue_length", "queue_wait_time_ms",
    "generation_time_ms", "batch_size", "image_width", "image_height", "prompt_tokens", "attributes", "created_at",
)  # fmt: skip
FORMATS = ("csv", "jsonl", "parquet")
_OPTIONAL = (
    "duration_ms", "success", "queue_length", "queue_wait_time_ms", "generation_time_ms", "batch_size", "prompt_tokens",
)  # fmt: skip
_TEXT = ("error_type", "error_message", "model_checkpoint", "generation_type")
_EVENT_TYPES = events_pb2.EventType.DESCRIPTOR

Row = dict[str, Any]


def flat_event(stored: events_pb2.StoredEvent) -> Row:
    """A StoredEvent as an export row: unset fields (and empty texts) are None, times are UTC datetimes."""
    event: Any = stored.event  # HasField by a name held in a variable
    row: Row = {
        "id": stored.id,
        "event_id": event.event_id,
        "event_type": label(_EVENT_TYPES, event.event_type),
        "generation_id": event.generation_id,
        "user_id": event.user_id,
        "timestamp": event.timestamp.ToDatetime(tzinfo=UTC),
        "attributes": dict(event.attributes),
        "created_at": stored.created_at.ToDatetime(tzinfo=UTC),
        "image_width": event.image_dimensions.width if event.HasField("image_dimensions") else None,
        "image_height": event.image_dimensions.height if event.HasField("image_dimensions") else None,
    }
    for name in _OPTIONAL:
        row[name] = getattr(event, name) if event.HasField(name) else None
    for name in _TEXT:
        row[name] = getattr(event, name) or None
    return row


def record_row(record: Any) -> Row:
    """A database row (any object with the columns as attributes) as an export row."""
    row = {name: getattr(record, name) for name in COLUMNS}
    for name in _TEXT:
        row[name] = row[name] or None
    return row


def iso(moment: datetime) -> str:
    """RFC 3339 in UTC with a Z (microseconds when there are any)."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def cell(value: Any) -> str:
    """A value as CSV text: empty for None, true/false, RFC 3339 times, attributes as a JSON object."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return str(value)


def csv_text(rows: Iterable[Row], *, header: bool = False) -> str:
    """Rows as CSV (RFC 4180: CRLF line ends, quotes where needed), with the header line if asked."""
    out = io.StringIO()
    writer = csv.writer(out)
    if header:
        writer.writerow(COLUMNS)
    writer.writerows([cell(row[name]) for name in COLUMNS] for row in rows)
    return out.getvalue()


def json_value(value: Any) -> Any:
    return iso(value) if isinstance(value, datetime) else value


class Writer(Protocol):
    def write(self, rows: Sequence[Row]) -> None: ...

    def close(self) -> None: ...


class CsvWriter:
    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._stream.write(csv_text([], header=True))

    def write(self, rows: Sequence[Row]) -> None:
        self._stream.write(csv_text(rows))

    def close(self) -> None:
        self._stream.flush()


class JsonlWriter:
    """One JSON object per line, keys in COLUMNS order, null for missing values."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def write(self, rows: Sequence[Row]) -> None:
        self._stream.write(
            "".join(
                json.dumps({name: json_value(row[name]) for name in COLUMNS}, ensure_ascii=False) + "\n" for row in rows
            )
        )

    def close(self) -> None:
        self._stream.flush()


class MissingPyarrow(RuntimeError):
    """Parquet was asked for without pyarrow installed."""


def _pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow  # type: ignore[import-untyped,unused-ignore]
        import pyarrow.parquet  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        raise MissingPyarrow("--format parquet needs pyarrow: pip install 'generation-analytics[parquet]'") from None
    return pyarrow, pyarrow.parquet


def parquet_schema() -> Any:
    pa, _ = _pyarrow()
    text, integer = pa.string(), pa.int64()
    moment = pa.timestamp("us", tz="UTC")
    types = {
        "id": integer, "event_id": text, "event_type": text, "generation_id": text, "user_id": text,
        "timestamp": moment, "duration_ms": integer, "success": pa.bool_(), "error_type": text,
        "error_message": text, "model_checkpoint": text, "generation_type": text, "queue_length": integer,
        "queue_wait_time_ms": integer, "generation_time_ms": integer, "batch_size": integer,
        "image_width": integer, "image_height": integer, "prompt_tokens": integer,
        "attributes": pa.map_(text, text), "created_at": moment,
    }  # fmt: skip
    return pa.schema([(name, types[name]) for name in COLUMNS])


class ParquetWriter:
    """A Parquet file, one row group per batch written (so memory stays one batch)."""

    def __init__(self, path: Path) -> None:
        pa, pq = _pyarrow()
        self._pa = pa
        self._schema = parquet_schema()
        self._writer = pq.ParquetWriter(str(path), self._schema)

    def write(self, rows: Sequence[Row]) -> None:
        if not rows:
            return
        columns = {name: [row[name] for row in rows] for name in COLUMNS}
        columns["attributes"] = [list(value.items()) for value in columns["attributes"]]
        self._writer.write_table(self._pa.Table.from_pydict(columns, schema=self._schema))

    def close(self) -> None:
        self._writer.close()


def open_writer(fmt: str, path: Path, stream: IO[str] | None = None) -> Writer:
    """A writer of `fmt` ("csv", "jsonl", "parquet") to `path` (or to the open text `stream`)."""
    if fmt == "parquet":
        return ParquetWriter(path)
    if stream is None:
        raise ValueError("csv and jsonl write to an open text stream")
    return CsvWriter(stream) if fmt == "csv" else JsonlWriter(stream)
