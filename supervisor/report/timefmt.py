"""Time formatting shared by reports and alerts: every human-facing time is ISO 8601 in UTC."""

from __future__ import annotations

from datetime import UTC, datetime


def iso_utc(ts: float) -> str:
    """Seconds since the epoch as ``2024-05-01T12:00:03.250Z`` (milliseconds, UTC, "Z" suffix)."""
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_utc_or(ts: float | None, missing: str = "-") -> str:
    """`iso_utc`, or `missing` when the time is unknown."""
    return missing if ts is None else iso_utc(ts)
