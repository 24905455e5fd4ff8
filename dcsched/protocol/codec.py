"""Encoding, decoding and signing of bus payloads.

A payload that does not decode is dropped, counted and logged (rate-limited), never raised
into a receive loop: one bad publisher must not stop the daemon or an agent.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections import Counter, OrderedDict
from typing import Any, Generic, TypeVar

import msgspec

from dcsched.protocol.messages import (
    PROTOCOL_VERSION,
    Command,
    Event,
    HostStatus,
    SignedCommand,
    Telemetry,
)

MAX_PAYLOAD = 256 * 1024
log = logging.getLogger("dcsched.protocol")

T = TypeVar("T")


class ProtocolError(Exception):
    """Root of the protocol's errors."""


class DecodeError(ProtocolError):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


_encoder = msgspec.json.Encoder()


def encode(msg: msgspec.Struct) -> bytes:
    return _encoder.encode(msg)


class Codec(Generic[T]):
    """Decodes one message type (or tagged union) with a size limit and drop counters."""

    def __init__(self, kind: Any, name: str, max_payload: int = MAX_PAYLOAD) -> None:
        self._decoder: msgspec.json.Decoder[T] = msgspec.json.Decoder(kind)
        self.name = name
        self.max_payload = max_payload
        self.dropped: Counter[str] = Counter()
        self._last_log = 0.0

    def decode(self, payload: bytes) -> T:
        if len(payload) > self.max_payload:
            raise DecodeError("too_large", f"{len(payload)} bytes > {self.max_payload}")
        try:
            msg = self._decoder.decode(payload)
        except msgspec.DecodeError as exc:
            raise DecodeError("invalid", str(exc)) from None
        except RecursionError:
            raise DecodeError("invalid", "nested too deeply") from None
        version = getattr(msg, "v", PROTOCOL_VERSION)
        if version != PROTOCOL_VERSION:
            raise DecodeError("version", f"v={version}, this side speaks v={PROTOCOL_VERSION}")
        return msg

    def decode_or_drop(self, payload: bytes, topic: str = "") -> T | None:
        try:
            return self.decode(payload)
        except DecodeError as exc:
            self.dropped[exc.reason] += 1
            now = time.monotonic()
            if now - self._last_log > 5.0:  # a flood of bad payloads must not flood the log
                self._last_log = now
                log.warning(
                    "dropped %s message on %r (%s); dropped so far: %s",
                    self.name,
                    topic,
                    exc,
                    dict(self.dropped),
                )
            return None


def telemetry_codec() -> Codec[Telemetry]:
    return Codec(Telemetry, "telemetry")


def status_codec() -> Codec[HostStatus]:
    return Codec(HostStatus, "status")


def event_codec() -> Codec[Event]:
    return Codec(Event, "event")


# --- signed commands ---------------------------------------------------------------------


class SignatureError(ProtocolError):
    pass


def _mac(key: bytes, ts: float, nonce: str, body: bytes) -> str:
    return hmac.new(key, f"{ts!r}|{nonce}|".encode() + body, hashlib.sha256).hexdigest()


def sign(cmd: Command, key: bytes | None, now: float | None = None) -> bytes:
    ts = time.time() if now is None else now
    nonce = secrets.token_hex(12)
    body = encode(cmd)
    mac = _mac(key, ts, nonce, body) if key else ""
    return encode(SignedCommand(ts=ts, nonce=nonce, body=body, mac=mac))


class CommandVerifier:
    """Checks HMAC, age and nonce reuse of incoming commands.

    Without a key every well-formed command is accepted: that is for a single-user demo only,
    and the agent logs it at start.
    """

    def __init__(self, key: bytes | None, max_skew_s: float = 300.0, remember: int = 10_000):
        self.key = key
        self.max_skew_s = max_skew_s
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._remember = remember
        self._envelope = Codec[SignedCommand](SignedCommand, "command envelope")
        self._inner = Codec[Command](Command, "command")

    def verify(self, payload: bytes, now: float | None = None) -> Command:
        env = self._envelope.decode(payload)
        if self.key is not None:
            # As bytes: compare_digest raises TypeError on a str with non-ASCII characters.
            if not env.mac or not hmac.compare_digest(
                env.mac.encode(), _mac(self.key, env.ts, env.nonce, env.body).encode()
            ):
                raise SignatureError("bad or missing signature")
            t = time.time() if now is None else now
            if abs(t - env.ts) > self.max_skew_s:
                raise SignatureError(f"command is {t - env.ts:.0f} s old; clocks out of sync?")
            if env.nonce in self._seen:
                raise SignatureError("replayed nonce")
            self._seen[env.nonce] = None
            while len(self._seen) > self._remember:
                self._seen.popitem(last=False)
        return self._inner.decode(env.body)


def load_key(path: str | None) -> bytes | None:
    """The cluster key: a file readable only by root and the daemon."""
    if not path:
        return None
    with open(path, "rb") as f:
        key = f.read().strip()
    if len(key) < 16:
        raise ProtocolError(f"cluster key {path} is shorter than 16 bytes")
    return key
