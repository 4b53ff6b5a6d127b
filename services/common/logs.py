"""Structured logging (structlog over the standard library), configured once per process.

What a log call costs the caller is bounded, whatever the values logged:

* records are formatted and written on a background thread (an in-process queue drained by a
  :class:`logging.handlers.QueueListener`): a call on the event loop only puts the record on the queue;
* tracebacks are rendered as plain text (never with locals) and cut to ``MAX_LOG_TRACEBACK_CHARS``;
  every other value to ``MAX_LOG_VALUE_CHARS``;
* identical lines (same logger, level, event and key fields, :data:`KEY_FIELDS`) beyond a rate are
  dropped and counted, then reported in one summary line (:class:`RepeatFilter`).

:func:`configure_logging` sets this up (the CLI does, and a ServiceHost that finds logging
unconfigured); :func:`shutdown_logging` writes what is queued and stops the thread (at exit too).
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import queue
import reprlib
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

import structlog
from structlog.types import EventDict

from couturier.services.common import limits

#: Fields that tell lines of one event apart for :class:`RepeatFilter` (others, e.g. a reason, may vary).
KEY_FIELDS: tuple[str, ...] = ("method", "code", "service", "dependency", "ready", "model", "fallback")
#: The event of a RepeatFilter summary line.
SUPPRESSED_EVENT = "repeated log lines suppressed"

_LOG_REPR = reprlib.Repr()
_LOG_REPR.maxstring = _LOG_REPR.maxother = limits.MAX_LOG_VALUE_CHARS
_LOG_REPR.maxlist = _LOG_REPR.maxtuple = _LOG_REPR.maxdict = _LOG_REPR.maxset = 32
_LOG_REPR.maxlevel = 3
_SCALARS = (int, float, bool, type(None))


def _cut(text: str, limit: int, keep_tail: bool = False) -> str:
    if len(text) <= limit:
        return text
    cut = len(text) - limit
    if keep_tail:  # a traceback: its head says where, its tail what was raised
        half = limit // 2
        return f"{text[:half]}\n... [{cut} characters cut] ...\n{text[-half:]}"
    return f"{text[:limit]}... [{cut} more characters cut]"


def bounded_values(_logger: Any, _name: str, event_dict: EventDict) -> EventDict:
    """Processor: every value within MAX_LOG_VALUE_CHARS (a rendered traceback within MAX_LOG_TRACEBACK_CHARS)."""
    for key, value in event_dict.items():
        if key == "exception" and isinstance(value, str):
            event_dict[key] = _cut(value, limits.MAX_LOG_TRACEBACK_CHARS, keep_tail=True)
        elif isinstance(value, str):
            event_dict[key] = _cut(value, limits.MAX_LOG_VALUE_CHARS)
        elif not isinstance(value, _SCALARS) and not key.startswith("_"):
            event_dict[key] = _LOG_REPR.repr(value)
    return event_dict


# -- repeated lines ----------------------------------------------------------------------------


@dataclass
class _Window:
    started: float
    logger: str
    event: str
    fields: dict[str, str]
    count: int = 0
    suppressed: int = 0


@dataclass(eq=False)
class RepeatFilter(logging.Filter):
    """Lets at most ``limit`` identical records through per ``interval_s``; drops and counts the rest.

    Records are identical when their logger, level, event, :data:`KEY_FIELDS` values and exception
    type agree. When a window with dropped records ends, :meth:`take_summaries` returns one summary
    record for it (event :data:`SUPPRESSED_EVENT`, ``suppressed`` = how many were dropped); windows
    are swept when later records arrive and by :meth:`flush`. ``clock`` is injectable for tests.
    """

    limit: int = 10
    interval_s: float = 10.0
    key_fields: Sequence[str] = KEY_FIELDS
    clock: Callable[[], float] = time.monotonic
    max_windows: int = 10_000
    _windows: dict[tuple[Any, ...], _Window] = field(default_factory=dict)
    _due: list[logging.LogRecord] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        super().__init__()
        if self.limit < 1 or self.interval_s <= 0:
            raise ValueError(f"limit must be >= 1 and interval_s > 0, got {self.limit} and {self.interval_s}")

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_couturier_summary", False):
            return True
        event, fields = _event_and_fields(record, self.key_fields)
        key = (record.name, record.levelno, event, tuple(fields.items()), _exception_type(record))
        now = self.clock()
        with self._lock:
            self._sweep(now)
            window = self._windows.get(key)
            if window is None:
                if len(self._windows) >= self.max_windows:  # bounded memory: forget the oldest window
                    self._close(next(iter(self._windows)))
                window = self._windows[key] = _Window(now, record.name, event, fields)
            window.count += 1
            if window.count <= self.limit:
                return True
            window.suppressed += 1
            return False

    def take_summaries(self) -> list[logging.LogRecord]:
        """Summary records of the windows that ended with dropped records (each returned once)."""
        with self._lock:
            due, self._due = self._due, []
        return due

    def flush(self) -> list[logging.LogRecord]:
        """Ends every window now; returns the summaries due (at shutdown)."""
        with self._lock:
            for key in list(self._windows):
                self._close(key)
            due, self._due = self._due, []
        return due

    def _sweep(self, now: float) -> None:
        for key in [k for k, w in self._windows.items() if now - w.started >= self.interval_s]:
            self._close(key)

    def _close(self, key: tuple[Any, ...]) -> None:
        window = self._windows.pop(key)
        if window.suppressed:
            self._due.append(_summary(window, self.interval_s))


def _event_and_fields(record: logging.LogRecord, key_fields: Sequence[str]) -> tuple[str, dict[str, str]]:
    message = record.msg
    if isinstance(message, dict):  # a structlog record: the event dict
        event = message.get("event", "")
        fields = {k: message[k] for k in key_fields if k in message}
    else:  # a standard-library record: its format string (not the formatted message) is the event
        event, fields = message, {}
    text = event if isinstance(event, str) else _LOG_REPR.repr(event)
    return text[:200], {k: (v if isinstance(v, str) else _LOG_REPR.repr(v))[:200] for k, v in fields.items()}


def _exception_type(record: logging.LogRecord) -> str:
    info = record.exc_info
    if info is None and isinstance(record.msg, dict):
        info = record.msg.get("exc_info")
    if isinstance(info, BaseException):
        return type(info).__name__
    if isinstance(info, tuple) and info and info[0] is not None:
        return str(info[0].__name__)
    return ""


def _summary(window: _Window, interval_s: float) -> logging.LogRecord:
    event_dict = {
        "event": SUPPRESSED_EVENT,
        "suppressed": window.suppressed,
        "repeated_event": window.event,
        "interval_s": interval_s,
        **window.fields,
        "level": "warning",
        "logger": window.logger,
        "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
    }
    record = logging.LogRecord(window.logger, logging.WARNING, __file__, 0, event_dict, (), None)
    # the attributes ProcessorFormatter reads from records made by structlog (wrap_for_formatter)
    record._logger = None
    record._name = "warning"
    record._couturier_summary = True
    return record


# -- the background writer -----------------------------------------------------------------------


class _BackgroundQueueHandler(logging.handlers.QueueHandler):
    """Puts records on an in-process queue untouched: formatting happens on the listener's thread
    (the standard prepare() would format here, on the caller's thread). Adds RepeatFilter summaries."""

    def __init__(self, records: queue.SimpleQueue[Any], repeats: RepeatFilter) -> None:
        super().__init__(records)
        self.repeats = repeats
        self.addFilter(repeats)

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record

    def handle(self, record: logging.LogRecord) -> bool:
        passed = bool(super().handle(record))
        for summary in self.repeats.take_summaries():
            self.enqueue(summary)
        return passed


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of writing (it may be replaced after start)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._fixed = stream
        super().__init__(stream)

    @property
    def stream(self) -> TextIO:
        return self._fixed if self._fixed is not None else sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass  # StreamHandler.__init__ sets it; the property decides


@dataclass
class _Logging:
    queue_handler: _BackgroundQueueHandler
    writer: logging.Handler
    listener: logging.handlers.QueueListener


_state: _Logging | None = None
_state_lock = threading.Lock()
_atexit_registered = False


def _formatter(fmt: str) -> logging.Formatter:
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback)
    )
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,  # plain traceback text, no locals
            bounded_values,
            renderer,
        ],
    )


def capture_exc_info(_logger: Any, _name: str, event_dict: EventDict) -> EventDict:
    """Processor (caller's thread): ``exc_info=True`` (``log.exception``) becomes the exception being
    handled now, since the writer thread that renders it later has none."""
    if event_dict.get("exc_info") is True:
        event_dict["exc_info"] = sys.exc_info()
    return event_dict


_SHARED: list[structlog.types.Processor] = [
    capture_exc_info,
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def configure_logging(
    level: str = "INFO",
    fmt: str = "console",
    *,
    repeat_limit: int = 10,
    repeat_interval_s: float = 10.0,
    stream: TextIO | None = None,
) -> None:
    """Route structlog and stdlib logging to stderr (or ``stream``) as JSON lines or readable console
    lines, written by a background thread; at most ``repeat_limit`` identical lines per
    ``repeat_interval_s`` (see :class:`RepeatFilter`). Calling it again replaces the earlier setup."""
    global _state, _atexit_registered
    shutdown_logging()
    structlog.configure(
        processors=[*_SHARED, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    writer = _StderrHandler(stream)
    writer.setFormatter(_formatter(fmt))
    records: queue.SimpleQueue[Any] = queue.SimpleQueue()
    handler = _BackgroundQueueHandler(records, RepeatFilter(limit=repeat_limit, interval_s=repeat_interval_s))
    listener = logging.handlers.QueueListener(records, writer)
    with _state_lock:
        root = logging.getLogger()
        root.handlers[:] = [handler]
        root.setLevel(level)
        listener.start()
        _state = _Logging(handler, writer, listener)
        if not _atexit_registered:
            atexit.register(shutdown_logging)
            _atexit_registered = True


def is_configured() -> bool:
    """True after :func:`configure_logging` (until :func:`shutdown_logging`)."""
    return _state is not None


def shutdown_logging() -> None:
    """Write the pending summaries and queued records, stop the background thread; later records are
    written directly (same format) so nothing logged at exit is lost."""
    global _state
    with _state_lock:
        state, _state = _state, None
        if state is None:
            return
        for summary in state.queue_handler.repeats.flush():
            state.queue_handler.enqueue(summary)
        state.listener.stop()  # drains the queue, then joins the thread
        root = logging.getLogger()
        root.handlers[:] = [state.writer if h is state.queue_handler else h for h in root.handlers]


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger
