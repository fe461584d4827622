"""Connection setup: the authkey challenge, then an authenticated key exchange, then AEAD.

Steps, all under one deadline (``timeout_ms``), on the thread that owns the connection:

1. ``multiprocessing.connection``'s own authkey challenge, both ways (``deliver_challenge`` /
   ``answer_challenge``, exactly what ``Listener(authkey=)`` / ``Client(authkey=)`` run). We run
   it ourselves because ``Listener.accept()`` runs it on the accepting thread with no timeout,
   so one silent connector would stop the listener.
2. Each side sends a fresh X25519 public key; the initiator's ``Hello`` also names the protocol
   label (peer port or client port) and the identity it claims. Keys come from
   ``HKDF-SHA256(salt=authkey, ikm=X25519 secret, info=label | transcript hash)``, where the
   transcript binds the version, label, both roles, both claimed ids and both public keys.
   Without the authkey nobody can derive the keys, so a man in the middle fails step 3; the
   ephemerals give each session fresh keys (forward secrecy against a later key leak).
3. Key confirmation both ways: the responder's reply carries an HMAC over the transcript, and
   the initiator answers with its own, so neither side sends data under keys the other did
   not derive. A label mismatch (a client key used on the peer port, or the reverse when both
   ports share one key) fails here or earlier.
4. ``SecureSession``: ChaCha20-Poly1305, one key per direction, 96-bit nonces from a counter
   that is never sent. A replayed, reordered, dropped-then-continued, truncated or tampered
   frame fails authentication, and the session refuses everything after the first failure.

Every wait is bounded: ``poll()`` with the remaining time before each ``recv_bytes``, a small
``maxlength`` on each handshake message, and a timer that shuts the socket down at the
deadline so that even a peer trickling one byte at a time cannot hold the thread longer.
"""

from __future__ import annotations

import hashlib
import hmac
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import AuthenticationError
from multiprocessing.connection import Connection, answer_challenge, deliver_challenge
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from paxosd.net.framing import BadFrame

PROTOCOL_VERSION = 1
# The two ports speak the same handshake under different labels, so keys derived for one can
# never be used on the other, even if an operator gives both ports the same secret.
PEER_LABEL = "paxosd/peer/v1"
CLIENT_LABEL = "paxosd/client/v1"

HANDSHAKE_TIMEOUT_MS_DEFAULT = 5000
# Every handshake message (and the stdlib's challenge, which uses 256) fits in this.
HANDSHAKE_BYTES_MAX = 512
# Identities are unsigned 63-bit so they fit msgpack ints and SQLite integers alike.
IDENTITY_MAX = 2**63 - 1
AEAD_TAG_BYTES = 16
# One direction of one session may seal at most this many frames: the nonce is a 64-bit
# counter (in a 96-bit nonce) and must never repeat under one key.
SESSION_FRAMES_MAX = 2**64 - 1
_KEY_BYTES = 32


class HandshakeError(Exception):
    """The connection could not be set up; ``str(e)`` is the reason, safe to log."""


class FrameAuthError(BadFrame):
    """A sealed frame failed authentication: tampered, replayed, reordered or truncated."""


if TYPE_CHECKING:
    _ConnectionBase = Connection[Any, Any]
else:
    _ConnectionBase = Connection


class SecureConnection(_ConnectionBase):
    """A ``multiprocessing.connection.Connection`` that cannot pickle and can be aborted.

    ``send()``/``recv()`` raise: they pickle, and unpickling peer bytes runs peer code.
    ``abort()`` shuts the socket down from any thread, which is the only way to wake a thread
    blocked in ``recv_bytes`` (closing the fd does not). The lock orders abort against close
    so that a late abort can never hit a reused file descriptor.
    """

    def __init__(self, handle: int) -> None:
        self._lock = threading.Lock()
        self._aborted = False
        self._armed: object | None = None
        self._deadline: float | None = None
        super().__init__(handle)

    @classmethod
    def from_socket(cls, sock: socket.socket) -> SecureConnection:
        """Take over a connected TCP socket (as multiprocessing's SocketClient does)."""
        sock.setblocking(True)
        return cls(sock.detach())

    def send(self, obj: object) -> NoReturn:
        raise TypeError("send() pickles; use send_bytes()")

    def recv(self) -> NoReturn:
        raise TypeError("recv() unpickles peer bytes; use recv_bytes(maxlength=...)")

    def recv_bytes(self, maxlength: int | None = None) -> bytes:
        deadline = self._deadline
        if deadline is not None:
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0 or not self.poll(remaining_s):
                raise _DeadlineExceeded()
        return super().recv_bytes(maxlength)

    @property
    def aborted(self) -> bool:
        return self._aborted

    def abort(self) -> None:
        """Shut the socket down so every blocked read or write on it returns now."""
        with self._lock:
            self._abort_locked()

    def close(self) -> None:
        with self._lock:
            super().close()

    def _abort_locked(self) -> None:
        if self.closed or self._aborted:
            return
        self._aborted = True
        try:
            sock = socket.socket(fileno=self.fileno())
        except OSError:
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already reset by the peer: readers see EOF or an error either way
        finally:
            sock.detach()

    def _abort_if_armed(self, token: object) -> None:
        with self._lock:
            if self._armed is token:
                self._abort_locked()

    def _arm(self, timeout_s: float) -> threading.Timer:
        token = object()
        with self._lock:
            self._armed = token
            self._deadline = time.monotonic() + timeout_s
        timer = threading.Timer(timeout_s, self._abort_if_armed, args=(token,))
        timer.daemon = True
        timer.name = "paxosd-handshake-deadline"
        timer.start()
        return timer

    def _disarm(self, timer: threading.Timer) -> bool:
        """Stop the deadline; True if it had already fired (the socket is shut down)."""
        timer.cancel()
        with self._lock:
            self._armed = None
            self._deadline = None
            return self._aborted


class _DeadlineExceeded(Exception):
    pass


# ---------------------------------------------------------------------------------- session


class SecureSession:
    """ChaCha20-Poly1305 with one key and one implicit nonce counter per direction.

    Not thread-safe per direction: one thread seals, one thread opens. The nonce is the
    frame's sequence number, so the receiver only accepts the exact next frame; after any
    failure every later frame is refused too, because the stream is no longer trustworthy.
    """

    def __init__(self, send_key: bytes, recv_key: bytes) -> None:
        assert len(send_key) == _KEY_BYTES and len(recv_key) == _KEY_BYTES
        assert send_key != recv_key, "directions must not share a key (reflection)"
        self._send = ChaCha20Poly1305(send_key)
        self._recv = ChaCha20Poly1305(recv_key)
        self._send_seq = 0
        self._recv_seq = 0
        self._recv_failed = False

    @staticmethod
    def _nonce(seq: int) -> bytes:
        return seq.to_bytes(12, "big")

    def seal(self, plaintext: bytes) -> bytes:
        seq = self._send_seq
        if seq >= SESSION_FRAMES_MAX:
            raise RuntimeError("session nonce space exhausted; reconnect for new keys")
        self._send_seq = seq + 1
        return self._send.encrypt(self._nonce(seq), plaintext, None)

    def open(self, record: bytes | memoryview) -> bytes:
        """The plaintext of the next frame. Raises FrameAuthError, and nothing else.

        ``record`` may be a view into the reader's buffer: nothing of it is kept."""
        if self._recv_failed:
            raise FrameAuthError("session already failed")
        if len(record) < AEAD_TAG_BYTES:
            self._recv_failed = True
            raise FrameAuthError(f"frame of {len(record)} bytes is shorter than its tag")
        try:
            plaintext = self._recv.decrypt(self._nonce(self._recv_seq), record, None)
        except InvalidTag:
            self._recv_failed = True
            raise FrameAuthError(
                f"frame {self._recv_seq} failed authentication "
                "(tampered, replayed, reordered or truncated)"
            ) from None
        self._recv_seq += 1
        return plaintext


# -------------------------------------------------------------------------------- handshake


class Hello(msgspec.Struct, frozen=True, tag=True, array_like=True):
    version: int
    label: str
    node: int
    public_key: bytes


class HelloReply(msgspec.Struct, frozen=True, tag=True, array_like=True):
    version: int
    node: int
    public_key: bytes
    confirm: bytes


class Finished(msgspec.Struct, frozen=True, tag=True, array_like=True):
    confirm: bytes


_encoder = msgspec.msgpack.Encoder()
_hello_decoder = msgspec.msgpack.Decoder(Hello)
_reply_decoder = msgspec.msgpack.Decoder(HelloReply)
_finished_decoder = msgspec.msgpack.Decoder(Finished)

M = TypeVar("M")


@dataclass(frozen=True, slots=True)
class Established:
    """A finished handshake: ``peer`` is the other side's identity, bound by the transcript."""

    peer: int
    session: SecureSession


@dataclass(frozen=True, slots=True)
class _Keys:
    initiator_to_responder: bytes
    responder_to_initiator: bytes
    initiator_confirm: bytes
    responder_confirm: bytes


def _transcript_hash(
    label: str, initiator: int, initiator_pub: bytes, responder: int, responder_pub: bytes
) -> bytes:
    transcript = _encoder.encode(
        (
            "paxosd-handshake",
            PROTOCOL_VERSION,
            label,
            "initiator",
            initiator,
            initiator_pub,
            "responder",
            responder,
            responder_pub,
        )
    )
    return hashlib.sha256(transcript).digest()


def _derive(authkey: bytes, label: str, shared: bytes, transcript: bytes) -> _Keys:
    okm = HKDF(
        algorithm=hashes.SHA256(),
        length=4 * _KEY_BYTES,
        salt=authkey,
        info=b"paxosd session keys|" + label.encode() + b"|" + transcript,
    ).derive(shared)
    k = [okm[i : i + _KEY_BYTES] for i in range(0, len(okm), _KEY_BYTES)]
    return _Keys(k[0], k[1], k[2], k[3])


def _confirm(key: bytes, role: bytes, transcript: bytes) -> bytes:
    return hmac.new(key, role + b"|" + transcript, hashlib.sha256).digest()


def _exchange(private: X25519PrivateKey, peer_public: bytes) -> bytes:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError:
        # Wrong length, or a low-order point giving an all-zero secret.
        raise HandshakeError("peer sent an unusable X25519 public key") from None


def _recv_message(conn: SecureConnection, decoder: msgspec.msgpack.Decoder[M]) -> M:
    data = conn.recv_bytes(HANDSHAKE_BYTES_MAX)
    try:
        return decoder.decode(data)
    except (msgspec.DecodeError, ValueError) as e:  # ValueError: invalid UTF-8 in a str
        raise HandshakeError(f"malformed handshake message: {e}") from None


def _check_identity(node: int) -> None:
    if not 0 <= node <= IDENTITY_MAX:
        raise HandshakeError(f"identity {node} is out of range")


def _authkey_stage(conn: SecureConnection, authkey: bytes, *, initiator: bool) -> None:
    try:
        if initiator:  # the order multiprocessing.connection.Client uses
            answer_challenge(conn, authkey)
            deliver_challenge(conn, authkey)
        else:  # the order Listener.accept uses
            deliver_challenge(conn, authkey)
            answer_challenge(conn, authkey)
    except AuthenticationError as e:
        raise HandshakeError(f"authkey challenge failed: {e}") from None
    except AssertionError:
        # answer_challenge checks the challenge's prefix with an assert: peer input.
        raise HandshakeError("malformed authkey challenge") from None


def _with_deadline(
    conn: SecureConnection, timeout_ms: int, run: Callable[[], Established]
) -> Established:
    assert timeout_ms > 0, timeout_ms
    timer = conn._arm(timeout_ms / 1000)
    fired = False
    try:
        result = run()
    except (_DeadlineExceeded, EOFError, OSError) as e:
        fired = conn._disarm(timer)
        if fired or isinstance(e, _DeadlineExceeded):
            raise HandshakeError(f"handshake deadline of {timeout_ms} ms exceeded") from None
        if isinstance(e, EOFError):
            raise HandshakeError("peer closed the connection during the handshake") from None
        raise HandshakeError(f"handshake I/O failed: {e}") from None
    except HandshakeError:
        conn._disarm(timer)
        raise
    fired = conn._disarm(timer)
    if fired:
        raise HandshakeError(f"handshake deadline of {timeout_ms} ms exceeded")
    return result


def initiate(
    conn: SecureConnection,
    *,
    authkey: bytes,
    label: str,
    node: int,
    expect_peer: int | None,
    timeout_ms: int = HANDSHAKE_TIMEOUT_MS_DEFAULT,
) -> Established:
    """Run the connecting side. ``expect_peer``: the identity the other side must prove."""
    _check_identity(node)

    def run() -> Established:
        _authkey_stage(conn, authkey, initiator=True)
        private = X25519PrivateKey.generate()
        public = private.public_key().public_bytes_raw()
        conn.send_bytes(_encoder.encode(Hello(PROTOCOL_VERSION, label, node, public)))
        reply = _recv_message(conn, _reply_decoder)
        if reply.version != PROTOCOL_VERSION:
            raise HandshakeError(f"peer speaks protocol version {reply.version}")
        if expect_peer is not None and reply.node != expect_peer:
            raise HandshakeError(f"expected node {expect_peer}, the peer says it is {reply.node}")
        _check_identity(reply.node)
        shared = _exchange(private, reply.public_key)
        transcript = _transcript_hash(label, node, public, reply.node, reply.public_key)
        keys = _derive(authkey, label, shared, transcript)
        expected = _confirm(keys.responder_confirm, b"responder", transcript)
        if not hmac.compare_digest(reply.confirm, expected):
            raise HandshakeError("responder key confirmation failed (wrong key or label)")
        confirm = _confirm(keys.initiator_confirm, b"initiator", transcript)
        conn.send_bytes(_encoder.encode(Finished(confirm)))
        session = SecureSession(keys.initiator_to_responder, keys.responder_to_initiator)
        return Established(reply.node, session)

    return _with_deadline(conn, timeout_ms, run)


def respond(
    conn: SecureConnection,
    *,
    authkey: bytes,
    label: str,
    node: int,
    accept_peer: Callable[[int], bool],
    timeout_ms: int = HANDSHAKE_TIMEOUT_MS_DEFAULT,
) -> Established:
    """Run the accepting side. ``accept_peer`` decides whether the claimed identity may join."""
    _check_identity(node)

    def run() -> Established:
        _authkey_stage(conn, authkey, initiator=False)
        hello = _recv_message(conn, _hello_decoder)
        if hello.version != PROTOCOL_VERSION:
            raise HandshakeError(f"peer speaks protocol version {hello.version}")
        if hello.label != label:
            raise HandshakeError(f"protocol label {hello.label!r} where {label!r} was expected")
        _check_identity(hello.node)
        if not accept_peer(hello.node):
            raise HandshakeError(f"identity {hello.node} is not accepted on this port")
        private = X25519PrivateKey.generate()
        public = private.public_key().public_bytes_raw()
        shared = _exchange(private, hello.public_key)
        transcript = _transcript_hash(label, hello.node, hello.public_key, node, public)
        keys = _derive(authkey, label, shared, transcript)
        confirm = _confirm(keys.responder_confirm, b"responder", transcript)
        conn.send_bytes(_encoder.encode(HelloReply(PROTOCOL_VERSION, node, public, confirm)))
        finished = _recv_message(conn, _finished_decoder)
        expected = _confirm(keys.initiator_confirm, b"initiator", transcript)
        if not hmac.compare_digest(finished.confirm, expected):
            raise HandshakeError("initiator key confirmation failed (wrong key or label)")
        session = SecureSession(keys.responder_to_initiator, keys.initiator_to_responder)
        return Established(hello.node, session)

    return _with_deadline(conn, timeout_ms, run)


__all__ = [
    "CLIENT_LABEL",
    "HANDSHAKE_TIMEOUT_MS_DEFAULT",
    "PEER_LABEL",
    "Established",
    "FrameAuthError",
    "HandshakeError",
    "SecureConnection",
    "SecureSession",
    "initiate",
    "respond",
]
