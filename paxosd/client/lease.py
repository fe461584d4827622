"""Leases from the client's side: etcd's ``Lease`` API and a self-refreshing lease object.

A lease is granted with a TTL in seconds; keys put with ``lease=lease.id`` are deleted when the
lease is revoked or expires (all at one revision, so a watcher sees their DELETEs together).
The cluster's leader counts the TTL on its monotonic clock from the last keep-alive it
received; nothing here sends a deadline.

``Lease`` as a context manager keeps itself alive from a background thread every TTL/3 (as
etcd's client does) and revokes the lease on exit::

    with client.lease(10) as lease:
        client.put("services/api/n1", b"10.0.0.1:8080", lease=lease.id)
        ...  # the key lives while this block runs (and the process does)

The keep-alive thread talks through its own ``Client`` (a client is not shared between
threads), on the same endpoints and key.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from paxosd.client.errors import ClientError, LeaseNotFoundError

if TYPE_CHECKING:
    from paxosd.client.client import Client


class Lease:
    """A granted lease: ``id``, ``ttl`` (granted, seconds), ``remaining_ttl`` and ``keys``
    asked of the leader, ``refresh()`` (one keep-alive), ``revoke()``.

    As a context manager it keeps itself alive every ``ttl``/3 seconds from a daemon thread
    and revokes on exit. ``lost`` is set (with ``reason``, and ``on_lost(reason)`` called
    from the keep-alive thread) once the lease is known gone or may be: the leader says it
    is gone, or no keep-alive was acknowledged for a whole TTL (the leader may have expired
    it meanwhile). The thread then stops: from then on nothing may be claimed on the lease.

    Example::

        with client.lease(10) as lease:
            client.put("workers/w1", b"busy", lease=lease.id)
            do_work()
    """

    def __init__(
        self,
        client: Client,
        lease_id: int,
        ttl: int,
        *,
        on_lost: Callable[[str], None] | None = None,
        alive_since: float | None = None,
    ) -> None:
        """``alive_since``: a ``time.monotonic()`` from which the lease surely lives a TTL
        (when its grant was asked); now when not given."""
        self._client = client
        self.id = lease_id
        self.ttl = ttl
        self.lost = threading.Event()
        self.reason = ""
        self.last_error: ClientError | None = None
        self.keepalives = 0  # answered by the background thread
        self._on_lost = on_lost
        self._acked = time.monotonic() if alive_since is None else alive_since
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> int:
        """One keep-alive now; returns the TTL the lease has again (seconds). Raises
        ``LeaseNotFoundError`` if it is gone."""
        return self._client.lease_keep_alive_once(self.id)

    def revoke(self) -> None:
        """Revoke the lease now: its keys are deleted. Revoking a lease that is gone is not
        an error here (the keys are gone either way)."""
        self.stop_keepalive()
        with contextlib.suppress(LeaseNotFoundError):
            self._client.lease_revoke(self.id)

    @property
    def remaining_ttl(self) -> int:
        """Seconds the leader still gives the lease (-1 when it is gone, as etcd says)."""
        try:
            return self._client.lease_time_to_live(self.id).ttl
        except LeaseNotFoundError:
            return -1

    @property
    def keys(self) -> list[str]:
        """The keys attached to the lease now."""
        return list(self._client.lease_time_to_live(self.id, keys=True).keys)

    # ------------------------------------------------------------------ keeping alive

    def start_keepalive(self) -> None:
        """Keep the lease alive from a daemon thread every TTL/3 until ``stop_keepalive``."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"paxosd-lease-{self.id:x}", daemon=True
        )
        self._thread.start()

    def stop_keepalive(self) -> None:
        thread, self._thread = self._thread, None
        self._stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self._client.timeout_ms / 1000 + 1)

    def _run(self) -> None:
        # Its own client (a client is not shared between threads), with a third of the TTL
        # per call, so that neither a slow call nor one lost attempt uses up the TTL.
        call_ms = max(200, self.ttl * 1000 // 3)
        keeper = self._client.clone(timeout_ms=call_ms)
        period = max(0.05, self.ttl / 3)
        wait = period
        try:
            while not self._stop.wait(wait):
                sent = time.monotonic()
                # The leader may expire the lease a TTL after the last acknowledged send: no
                # call runs past that, so ``lost`` is never set later than then.
                left_ms = int((self._acked + self.ttl - sent) * 1000)
                if left_ms <= 0:
                    self._lose(f"no keep-alive of lease {self.id:x} acknowledged for {self.ttl} s")
                    return
                keeper.timeout_ms = min(call_ms, left_ms)
                try:
                    ttl = keeper.lease_keep_alive_once(self.id)
                except LeaseNotFoundError as e:
                    self.last_error = e
                    self._lose(f"lease {self.id:x} expired or was revoked")
                    return
                except ClientError as e:
                    self.last_error = e
                    if time.monotonic() - self._acked >= self.ttl:
                        self._lose(
                            f"no keep-alive of lease {self.id:x} acknowledged for {self.ttl} s"
                        )
                        return
                    # Unavailable for now: try again soon, the TTL runs (and ends the wait).
                    wait = max(0.0, min(period / 4, self._acked + self.ttl - time.monotonic()))
                    continue
                if ttl <= 0:  # etcd answers a keep-alive of a lease it lost with TTL 0
                    self._lose(f"lease {self.id:x} expired")
                    return
                self.keepalives += 1
                self.last_error = None
                self._acked = sent  # the lease lives at least a TTL from when this was sent
                wait = period
        finally:
            keeper.close()

    def _lose(self, reason: str) -> None:
        if self.lost.is_set() or self._stop.is_set():
            return
        self.reason = reason
        self.lost.set()
        if self._on_lost is not None:
            self._on_lost(reason)

    def __enter__(self) -> Lease:
        self.start_keepalive()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_keepalive()
        self.revoke()


__all__ = ["Lease"]
