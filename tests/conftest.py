"""Fixtures every test gets."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import structlog


@pytest.fixture(autouse=True)
def _loggers_not_cached(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The daemon configures structlog with ``cache_logger_on_first_use``: right for a process
    that configures once, wrong for a test run, where a module logger first used under one
    test's configuration would keep it and hide its events from a later test's
    ``capture_logs``. Within tests, configurations never cache and end with the test."""
    configure = structlog.configure

    def uncached(**settings: Any) -> None:
        configure(**{**settings, "cache_logger_on_first_use": False})

    monkeypatch.setattr(structlog, "configure", uncached)
    yield
    structlog.reset_defaults()
