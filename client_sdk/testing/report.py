"""The outcome of a simulation run: figures, JSON, a terminal table, a plot, a progress bar.

:class:`SimReport` holds what a run measured (delivery accounting, faults injected,
latencies, throughput) and decides whether the run passed. It round-trips through
JSON strictly (:meth:`SimReport.to_json`, :meth:`SimReport.from_json`) so CI can keep
reports as artefacts and compare them, and is written atomically. :func:`summary_table`
renders it for a terminal, :func:`write_plot` draws latency and throughput (needs the
optional ``sim`` extra, matplotlib), and :class:`Progress` shows a long run advancing.

Nothing here touches keys or plaintexts: a report carries counts, timings and the
failure descriptions the simulation wrote, never message contents.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Final, TextIO

from client_sdk._files import atomic_write

__all__ = [
    "REPORT_VERSION",
    "PlotUnavailable",
    "Progress",
    "ReportError",
    "SimReport",
    "percentile",
    "summary_table",
    "write_plot",
]

REPORT_VERSION: Final = 1
"""Version of the JSON layout written by :meth:`SimReport.to_json`; bumped on any change."""

_DERIVED_KEYS: Final = frozenset({"version", "passed"})
"""Keys :meth:`SimReport.to_json` adds that are not fields (checked, not stored, on load)."""


class ReportError(ValueError):
    """A report could not be loaded or written: bad JSON, a missing or mistyped field."""


class PlotUnavailable(RuntimeError):
    """Plotting needs matplotlib, which is an optional dependency (the ``sim`` extra)."""


def _utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(slots=True, kw_only=True)
class SimReport:
    """What one simulation run measured, and whether it passed.

    Counts are messages unless named otherwise. A *delivery* is one message reaching
    one recipient device, so ``intended_deliveries`` is the number of (message,
    recipient device) pairs the workload planned to see decrypted. The simulation
    fills a report in as it runs (the dataclass is mutable) and appends anything it
    judged wrong that the counters do not capture to ``failures``.
    """

    seed: int
    """Seed of the run's random choices; the same seed replays the same workload."""
    backend: str
    """Relay storage backend the run used (for example ``"sqlite"`` or ``"postgres"``)."""
    users: int
    devices_per_user: int
    client_state_limit_bytes: int
    """Largest serialized client state the run tolerates; above it the run fails."""
    started_at: str = field(default_factory=_utc_now_iso)
    """Start of the run, ISO 8601 in UTC."""
    messages_planned: int = 0
    messages_sent: int = 0
    intended_deliveries: int = 0
    delivered: int = 0
    """Deliveries decrypted exactly once by their recipient device."""
    lost: int = 0
    """Intended deliveries never decrypted by the end of the run."""
    duplicated: int = 0
    """Deliveries surfaced to the application more than once."""
    undecryptable: int = 0
    """Deliveries the recipient received but could not decrypt."""
    redelivered_after_crash: int = 0
    """Deliveries the relay sent again because a client crashed before acknowledging
    (expected and harmless as long as the application saw them once)."""
    out_of_order: int = 0
    misdelivered: int = 0
    """Messages yielded to a device they were not meant for (never expected)."""
    resumed_sends: int = 0
    """Sends in progress when their client process was killed, asked for again after
    the restart with the same client message id (the SDK then never makes a second
    message)."""
    security_events: dict[str, int] = field(default_factory=dict)
    """Security events the clients reported, by kind (``client_sdk.events``)."""
    """Deliveries surfaced before an earlier message of the same sender device."""
    relay_kills: int = 0
    client_kills: int = 0
    disconnects: int = 0
    relay_restarts_s: list[float] = field(default_factory=list)
    """Seconds each relay restart took, from kill to accepting connections again."""
    canary_hits: int = 0
    """Planted plaintext canaries found in relay storage or logs."""
    canary_bytes_scanned: int = 0
    max_client_state_bytes: int = 0
    duration_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    """Per delivery, milliseconds from the send call to the recipient's decryption."""
    throughput: list[tuple[float, int]] = field(default_factory=list)
    """``(seconds since start, deliveries decrypted in that second)`` pairs."""
    failures: list[str] = field(default_factory=list)
    """Problems the simulation found that the counters do not express."""
    event_log: str | None = None
    """Path of the event log written when the run failed, if any."""

    @property
    def problems(self) -> list[str]:
        """Every reason this run did not pass (empty when it passed), most specific first."""
        found = list(self.failures)
        for count, what in (
            (self.lost, "lost"),
            (self.duplicated, "duplicated"),
            (self.undecryptable, "undecryptable"),
            (self.out_of_order, "out of order"),
            (self.misdelivered, "misdelivered"),
        ):
            if count:
                found.append(f"{count} deliveries {what}")
        if self.canary_hits:
            found.append(f"{self.canary_hits} canary hits in relay storage or logs")
        if self.max_client_state_bytes > self.client_state_limit_bytes:
            found.append(
                f"client state reached {self.max_client_state_bytes} bytes,"
                f" above the limit of {self.client_state_limit_bytes}"
            )
        return found

    @property
    def passed(self) -> bool:
        """True when nothing went wrong: no failures, nothing lost, duplicated,
        undecryptable or out of order, no canary found, client state within its limit."""
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON-ready dict (plus ``version`` and the derived ``passed``)."""
        out: dict[str, Any] = {"version": REPORT_VERSION}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "throughput":
                value = [[second, count] for second, count in value]
            elif isinstance(value, list):
                value = list(value)
            out[f.name] = value
        out["passed"] = self.passed
        return out

    @classmethod
    def from_json(cls, data: object) -> SimReport:
        """Rebuild a report from :meth:`to_json` output, checking every field.

        Raises:
            ReportError: ``data`` is not a dict, has the wrong ``version``, lacks a
                field, has an unknown key, or a field has the wrong type or an
                impossible value (a negative count, a non-finite number, a
                ``started_at`` that is not ISO 8601 UTC).
        """
        if not isinstance(data, dict):
            raise ReportError(f"report must be a JSON object, not {type(data).__name__}")
        version = data.get("version")
        if version != REPORT_VERSION:
            raise ReportError(f"unsupported report version {version!r} (expected {REPORT_VERSION})")
        passed = data.get("passed")
        if not isinstance(passed, bool):
            raise ReportError("field 'passed' must be a boolean")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in data if k not in names and k not in _DERIVED_KEYS)
        if unknown:
            raise ReportError(f"unknown report field(s): {', '.join(unknown)}")
        missing = sorted(name for name in names if name not in data)
        if missing:
            raise ReportError(f"missing report field(s): {', '.join(missing)}")
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            parse = _FIELD_PARSERS[f.name] if f.name in _FIELD_PARSERS else _TYPE_PARSERS[f.type]
            values[f.name] = parse(f.name, data[f.name])
        return cls(**values)

    def write(self, path: str | os.PathLike[str]) -> None:
        """Write the report as JSON to ``path`` atomically (a temporary file beside
        it, flushed to disk, then renamed over it), so a reader never sees half a file.

        Raises:
            ReportError: a float field is NaN or infinite (not representable in JSON).
            OSError: the directory is not writable.
        """
        try:
            text = json.dumps(self.to_json(), indent=2, allow_nan=False) + "\n"
        except ValueError as exc:
            raise ReportError(f"report cannot be written as JSON: {exc}") from None
        atomic_write(Path(path), text.encode("utf-8"))

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> SimReport:
        """Load a report written by :meth:`write`.

        Raises:
            ReportError: the file is not valid JSON or not a valid report.
            OSError: the file cannot be read.
        """
        raw = Path(path).read_bytes()
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ReportError(f"{os.fspath(path)} is not valid JSON: {exc}") from None
        return cls.from_json(data)


# --- strict JSON field parsers ------------------------------------------------------


def _parse_int(name: str, value: object, *, signed: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ReportError(f"field {name!r} must be an integer, not {type(value).__name__}")
    if not signed and value < 0:
        raise ReportError(f"field {name!r} must not be negative (got {value})")
    return value


def _parse_float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ReportError(f"field {name!r} must be a number, not {type(value).__name__}")
    if not math.isfinite(value):
        raise ReportError(f"field {name!r} must be finite (got {value})")
    return float(value)


def _parse_str(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise ReportError(f"field {name!r} must be a string, not {type(value).__name__}")
    return value


def _parse_optional_str(name: str, value: object) -> str | None:
    return None if value is None else _parse_str(name, value)


def _parse_list(name: str, value: object) -> list[object]:
    if not isinstance(value, list):
        raise ReportError(f"field {name!r} must be a list, not {type(value).__name__}")
    return value


def _parse_float_list(name: str, value: object) -> list[float]:
    return [_parse_float(f"{name}[{i}]", v) for i, v in enumerate(_parse_list(name, value))]


def _parse_str_list(name: str, value: object) -> list[str]:
    return [_parse_str(f"{name}[{i}]", v) for i, v in enumerate(_parse_list(name, value))]


def _parse_throughput(name: str, value: object) -> list[tuple[float, int]]:
    out: list[tuple[float, int]] = []
    for i, item in enumerate(_parse_list(name, value)):
        where = f"{name}[{i}]"
        if not isinstance(item, list) or len(item) != 2:
            raise ReportError(f"field {where!r} must be a [seconds, count] pair")
        out.append((_parse_float(f"{where}[0]", item[0]), _parse_int(f"{where}[1]", item[1])))
    return out


def _parse_started_at(name: str, value: object) -> str:
    text = _parse_str(name, value)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ReportError(f"field {name!r} must be an ISO 8601 timestamp (got {text!r})") from None
    if moment.utcoffset() != timedelta(0):
        raise ReportError(f"field {name!r} must be in UTC (got {text!r})")
    return text


def _parse_counts(name: str, value: object) -> dict[str, int]:
    if not isinstance(value, dict):
        raise ReportError(f"field {name!r} must be an object of counts")
    return {_parse_str(name, k): _parse_int(name, v) for k, v in value.items()}


def _parse_seed(name: str, value: object) -> int:
    return _parse_int(name, value, signed=True)


_TYPE_PARSERS: Final[dict[object, Callable[[str, object], object]]] = {
    "int": _parse_int,
    "float": _parse_float,
    "str": _parse_str,
    "str | None": _parse_optional_str,
    "list[float]": _parse_float_list,
    "list[str]": _parse_str_list,
    "list[tuple[float, int]]": _parse_throughput,
    "dict[str, int]": _parse_counts,
}
"""Parser per annotation (annotations are strings under ``from __future__ import annotations``)."""

_FIELD_PARSERS: Final[dict[str, Callable[[str, object], object]]] = {
    "seed": _parse_seed,
    "started_at": _parse_started_at,
}
"""Fields whose checks go beyond their type."""


# --- figures ------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile of ``values`` by the nearest-rank method.

    The result is always one of ``values``: the smallest value with at least ``q`` %
    of the values at or below it (``q = 0`` gives the minimum, ``q = 100`` the maximum).

    Raises:
        ValueError: ``values`` is empty or ``q`` is outside [0, 100].
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within [0, 100], got {q}")
    ordered = sorted(values)
    # Rounded before ceil so that float noise (0.07 * 100 = 7.000000000000001) cannot
    # push the rank one place up.
    rank = max(1, math.ceil(round(q * len(ordered) / 100, 9)))
    return ordered[rank - 1]


def _count(n: int) -> str:
    return f"{n:,}"


def _ms(value: float) -> str:
    return f"{value:,.1f}"


def _table_rows(report: SimReport) -> list[tuple[str, str]]:
    lat = report.latencies_ms
    latency = (
        " / ".join(_ms(percentile(lat, q)) for q in (50, 90, 99)) + f" / {_ms(max(lat))}"
        if lat
        else "no data"
    )
    decrypted = sum(count for _, count in report.throughput)
    peak = max((count for _, count in report.throughput), default=0)
    mean = f"{decrypted / report.duration_s:,.1f}" if report.duration_s > 0 else "-"
    restarts = report.relay_restarts_s
    relay_kills = _count(report.relay_kills)
    if restarts:
        relay_kills += (
            f" (restart mean {sum(restarts) / len(restarts):.2f} s, max {max(restarts):.2f} s)"
        )
    rows = [
        ("seed", str(report.seed)),
        ("backend", report.backend),
        ("started (UTC)", report.started_at),
        ("users x devices", f"{_count(report.users)} x {report.devices_per_user}"),
        (
            "messages sent",
            f"{_count(report.messages_sent)} of {_count(report.messages_planned)} planned",
        ),
        ("intended deliveries", _count(report.intended_deliveries)),
        ("delivered", _count(report.delivered)),
        ("lost", _count(report.lost)),
        ("duplicated", _count(report.duplicated)),
        ("undecryptable", _count(report.undecryptable)),
        ("redelivered after crash", _count(report.redelivered_after_crash)),
        ("out of order", _count(report.out_of_order)),
        ("misdelivered", _count(report.misdelivered)),
        ("sends resumed after kill", _count(report.resumed_sends)),
        (
            "security events",
            ", ".join(f"{k} {v}" for k, v in sorted(report.security_events.items())) or "none",
        ),
        ("relay kills", relay_kills),
        ("client kills", _count(report.client_kills)),
        ("disconnects", _count(report.disconnects)),
        (
            "canary hits / bytes scanned",
            f"{_count(report.canary_hits)} / {_count(report.canary_bytes_scanned)}",
        ),
        (
            "max client state (bytes)",
            f"{_count(report.max_client_state_bytes)}"
            f" (limit {_count(report.client_state_limit_bytes)})",
        ),
        ("latency p50/p90/p99/max (ms)", latency),
        ("throughput mean/peak (msg/s)", f"{mean} / {_count(peak)}"),
        ("duration", f"{report.duration_s:,.1f} s"),
    ]
    if report.event_log is not None:
        rows.append(("event log", report.event_log))
    return rows


def summary_table(report: SimReport) -> str:
    """The report as an aligned plain-text table for a terminal, ending with a
    ``PASSED`` line, or a ``FAILED`` line followed by each problem on its own line."""
    rows = _table_rows(report)
    width = max(len(label) for label, _ in rows)
    lines = [f"{label:<{width}}  {value}" for label, value in rows]
    rule = "-" * max(len(line) for line in lines)
    problems = report.problems
    verdict = ["PASSED"] if not problems else [f"FAILED ({len(problems)} problems)"]
    verdict += [f"  - {problem}" for problem in problems]
    return "\n".join([rule, *lines, rule, *verdict]) + "\n"


# --- plot ---------------------------------------------------------------------------

PLOT_SIZE_PX: Final = (1200, 450)
"""Width and height of the PNG :func:`write_plot` draws, in pixels."""
_PLOT_DPI: Final = 100


def write_plot(report: SimReport, path: str | os.PathLike[str]) -> None:
    """Draw the report as a PNG of :data:`PLOT_SIZE_PX` at ``path`` (written atomically):
    a histogram of delivery latencies in ms (p50 and p99 marked) beside the number of
    messages decrypted per second over the run. A panel without data says so.

    Uses matplotlib's Agg renderer through its object API, so neither pyplot's global
    state nor the application's chosen backend is touched.

    Raises:
        PlotUnavailable: matplotlib is not installed.
        OSError: the file cannot be written.
    """
    try:
        # Lazy: matplotlib is the optional ``sim`` extra.
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
        from matplotlib.figure import Figure  # noqa: PLC0415
    except ImportError:
        raise PlotUnavailable(
            "plotting a simulation report needs matplotlib: pip install 'e2ee[sim]'"
        ) from None

    width, height = PLOT_SIZE_PX
    fig = Figure(figsize=(width / _PLOT_DPI, height / _PLOT_DPI), dpi=_PLOT_DPI)
    FigureCanvasAgg(fig)
    verdict = "PASSED" if report.passed else "FAILED"
    fig.suptitle(
        f"{verdict}: seed {report.seed}, {report.backend}, "
        f"{report.users} users x {report.devices_per_user} devices"
    )
    lat_ax, thr_ax = fig.subplots(1, 2)

    lat_ax.set_title("Delivery latency")
    lat_ax.set_xlabel("ms (send call to decryption)")
    lat_ax.set_ylabel("deliveries")
    lat = report.latencies_ms
    if lat:
        lat_ax.hist(lat, bins=max(1, min(50, math.isqrt(len(lat)))), color="tab:blue")
        for q, style in ((50, "--"), (99, ":")):
            value = percentile(lat, q)
            lat_ax.axvline(value, color="black", linestyle=style, label=f"p{q} {value:.1f} ms")
        lat_ax.legend()
    else:
        _no_data(lat_ax)

    thr_ax.set_title("Throughput")
    thr_ax.set_xlabel("seconds since start")
    thr_ax.set_ylabel("messages decrypted per second")
    if report.throughput:
        seconds = [second for second, _ in report.throughput]
        counts = [count for _, count in report.throughput]
        thr_ax.plot(seconds, counts, drawstyle="steps-post", color="tab:green")
        thr_ax.set_ylim(bottom=0)
    else:
        _no_data(thr_ax)

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_PLOT_DPI)
    atomic_write(Path(path), buffer.getvalue())


def _no_data(ax: Any) -> None:
    ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center")
    ax.set_xticks([])
    ax.set_yticks([])


# --- progress -----------------------------------------------------------------------

_REDRAW_INTERVAL_S: Final = 0.1
"""Shortest time between two redraws of the bar on a terminal (at most ~10 a second)."""
_BAR_WIDTH: Final = 24
_LOG_STEPS: Final = 10
"""On a non-terminal stream, a line is printed each time another 1/_LOG_STEPS is done."""


def _clock_text(seconds: float) -> str:
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class Progress:
    """A progress bar for a long run.

    On a terminal it redraws one line in place (bar, count/total, percent, rate, ETA
    and the figures of :meth:`set_postfix`), at most about ten times a second. On any
    other stream (a CI log, a file) it prints a plain line each time another 10 % is
    done, and a last line on :meth:`close`. Use it as a context manager, or call
    :meth:`close` when done.

    Args:
        total: number of steps that make up the run (0 is allowed: always complete).
        stream: where to write; ``None`` (the default) means the current ``sys.stderr``.
        label: short name shown before the bar.
        clock: monotonic time source in seconds (injectable for tests).

    Raises:
        ValueError: ``total`` is negative.
    """

    def __init__(
        self,
        total: int,
        *,
        stream: TextIO | None = None,
        label: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if total < 0:
            raise ValueError(f"progress total must not be negative, got {total}")
        self._total = total
        self._stream = sys.stderr if stream is None else stream
        self._label = label
        self._clock = clock
        self._tty = self._stream.isatty()
        self._count = 0
        self._postfix = ""
        self._started = clock()
        self._last_draw: float | None = None
        self._drawn_width = 0
        self._logged_step = 0
        self._closed = False
        if self._tty:
            self._draw(self._started)

    @property
    def count(self) -> int:
        """Steps done so far."""
        return self._count

    def advance(self, n: int = 1) -> None:
        """Record ``n`` more steps done.

        Raises:
            ValueError: ``n`` is negative.
            RuntimeError: the bar is closed.
        """
        if n < 0:
            raise ValueError(f"progress cannot go back (n={n})")
        self._check_open()
        self._count += n
        self._update()

    def set_postfix(self, **figures: object) -> None:
        """Show ``figures`` after the bar as ``name=value`` pairs (``lost=0 dup=0``).

        Raises:
            RuntimeError: the bar is closed.
        """
        self._check_open()
        self._postfix = " ".join(f"{name}={value}" for name, value in figures.items())
        self._update()

    def close(self) -> None:
        """Draw the final state and end the line; calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        now = self._clock()
        if self._tty:
            self._draw(now)
            self._write("\n")
        else:
            self._write(self._line(now) + "\n")

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("progress bar is closed")

    def _update(self) -> None:
        now = self._clock()
        if self._tty:
            due = self._last_draw is None or now - self._last_draw >= _REDRAW_INTERVAL_S
            if due or (self._total and self._count >= self._total):
                self._draw(now)
            return
        if not self._total:
            return
        step = min(self._count, self._total) * _LOG_STEPS // self._total
        if step > self._logged_step:
            self._logged_step = step
            self._write(self._line(now) + "\n")

    def _draw(self, now: float) -> None:
        line = self._line(now)
        padding = " " * max(0, self._drawn_width - len(line))
        self._write("\r" + line + padding)
        self._drawn_width = len(line)
        self._last_draw = now

    def _line(self, now: float) -> str:
        done = min(self._count, self._total)
        fraction = done / self._total if self._total else 1.0
        elapsed = max(0.0, now - self._started)
        rate = self._count / elapsed if elapsed > 0 else 0.0
        if done >= self._total:
            eta = f"in {_clock_text(elapsed)}"
        elif rate > 0:
            eta = f"ETA {_clock_text((self._total - done) / rate)}"
        else:
            eta = "ETA --:--"
        parts = [f"{self._label}:"] if self._label else []
        if self._tty:
            filled = int(fraction * _BAR_WIDTH)
            parts.append("|" + "#" * filled + "-" * (_BAR_WIDTH - filled) + "|")
        parts += [f"{self._count}/{self._total}", f"{fraction:4.0%}", f"{rate:.1f}/s", eta]
        if self._postfix:
            parts.append(self._postfix)
        return " ".join(parts)

    def _write(self, text: str) -> None:
        self._stream.write(text)
        self._stream.flush()
