"""Fixtures every test gets."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from structlog._config import BoundLoggerLazyProxy


def _fresh_structlog() -> None:
    """structlog's defaults, and no module logger still bound to an older configuration."""
    structlog.reset_defaults()
    for name, module in list(sys.modules.items()):
        if not name.startswith(("paxosd", "paxosctl")):
            continue
        for value in list(vars(module).values()):
            if isinstance(value, BoundLoggerLazyProxy):
                value.__dict__.pop("bind", None)  # a cached proxy keeps its bind here


@pytest.fixture(autouse=True)
def _loggers_not_cached(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The daemon configures structlog with ``cache_logger_on_first_use``: right for a process
    that configures once, wrong for a test run, where a module logger first used under one
    configuration would keep it and hide its events from a later test's ``capture_logs``
    (or filter them at another level). Each test starts from structlog's defaults with no
    cached module logger, and configurations it makes never cache and end with it."""
    configure = structlog.configure

    def uncached(**settings: Any) -> None:
        configure(**{**settings, "cache_logger_on_first_use": False})

    _fresh_structlog()
    monkeypatch.setattr(structlog, "configure", uncached)
    yield
    _fresh_structlog()
