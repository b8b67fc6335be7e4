"""Logging: structlog JSON lines to stdout, configured once, with stdlib logging routed through it.

RunPod collects a worker's stdout, so one JSON object a line (ISO time, level, logger, event and
the job's ``job_id``/``operation``) is what its log view and any shipper can parse. Library
logs (transformers, uvicorn, asyncio) go through the same renderer. The runpod SDK prints through
its own ``RunPodLogger``, whose default level is DEBUG (a line per poll): it is held at WARN unless
our level is DEBUG or ``RUNPOD_LOG_LEVEL`` says otherwise.
"""

from __future__ import annotations

import logging
import os
import sys

import msgspec
import structlog

_HANDLER_NAME = "burst-nli-json"

_SHARED_PROCESSORS: list[structlog.typing.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.stdlib.ExtraAdder(),
]


_JSON = msgspec.json.Encoder(enc_hook=repr)  # what it cannot encode it prints as repr, as structlog's own does


def _json_line(event_dict: object, **_: object) -> str:
    """structlog's ``JSONRenderer`` serializer: msgspec, several times faster than ``json.dumps``."""
    return _JSON.encode(event_dict).decode()


_PROCESSORS: list[structlog.typing.Processor] = []
"""The one list structlog is configured with, changed in place: loggers are cached on first use
and keep a reference to it (so does ``structlog.testing.capture_logs``)."""


def configure_logging(level: str = "INFO") -> None:
    """Configure structlog and the stdlib root logger; calling it again only changes the level."""
    level = level.upper()
    numeric = logging.getLevelName(level)
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    _PROCESSORS[:] = [
        # First: a call below the level (every job's debug line) stops here, before the
        # timestamp and the rest of the chain are built for a record stdlib would drop.
        structlog.stdlib.filter_by_level,
        *_SHARED_PROCESSORS,
        structlog.stdlib.PositionalArgumentsFormatter(),
        structlog.processors.StackInfoRenderer(),
        structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
    ]
    structlog.configure(
        processors=_PROCESSORS,
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # A module's logger is a lazy proxy that would otherwise build a bound logger on every call.
        cache_logger_on_first_use=True,
    )
    # What every stdlib record would otherwise collect and no line of ours prints: the caller's
    # frame, the thread's and the process's names (logging HOWTO, "Optimization").
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stdout)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=_SHARED_PROCESSORS,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(serializer=_json_line),
            ],
        )
    )
    root.addHandler(handler)
    root.setLevel(numeric)
    quiet = logging.DEBUG if level == "DEBUG" else logging.WARNING
    for name in ("runpod", "urllib3", "httpx", "aiohttp"):
        logging.getLogger(name).setLevel(quiet)
    set_runpod_sdk_log_level("DEBUG" if level == "DEBUG" else "WARN")


def set_runpod_sdk_log_level(level: str) -> None:
    """Set the SDK's own print-logger unless the operator chose its level explicitly.

    Through the SDK's public ``runpod.RunPodLogger``; a release without it (or without its
    ``level``) leaves the SDK's lines as they are rather than failing the worker.
    """
    if os.environ.get("RUNPOD_LOG_LEVEL") or os.environ.get("RUNPOD_DEBUG_LEVEL"):
        return
    try:
        from runpod import RunPodLogger
    except ImportError:
        return
    logger = RunPodLogger()
    if hasattr(logger, "level"):
        logger.level = level  # set_level() would announce itself with an INFO line
