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
from collections import Counter
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
            self.drop(exc.reason, topic, str(exc))
            return None

    def drop(self, reason: str, topic: str, detail: str = "") -> None:
        """Counts a message refused (here or by its receiver) and logs, rate-limited."""
        self.dropped[reason] += 1
        now = time.monotonic()
        if now - self._last_log > 5.0:  # a flood of bad payloads must not flood the log
            self._last_log = now
            log.warning(
                "dropped %s message on %r (%s); dropped so far: %s",
                self.name,
                topic,
                detail or reason,
                dict(self.dropped),
            )


def telemetry_codec() -> Codec[Telemetry]:
    return Codec(Telemetry, "telemetry")


def status_codec() -> Codec[HostStatus]:
    return Codec(HostStatus, "status")


def event_codec() -> Codec[Event]:
    return Codec(Event, "event")


# --- signed commands ---------------------------------------------------------------------


class SignatureError(ProtocolError):
    """A command refused by the verifier; `reason` is the drop counter's key."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def _mac(key: bytes, env: SignedCommand) -> str:
    # v2 binds the command to its target host and the daemon's epoch: a captured command
    # cannot be replayed to another host, nor by (or after) an older daemon.
    head = f"dcsched-cmd-v2|{env.ts!r}|{env.nonce}|{env.host}|{env.epoch}|".encode()
    return hmac.new(key, head + env.body, hashlib.sha256).hexdigest()


def sign(
    cmd: Command, key: bytes | None, *, host: str, epoch: int = 0, now: float | None = None
) -> bytes:
    """The signed envelope of `cmd` for `host`, from a daemon in `epoch`."""
    env = SignedCommand(
        ts=time.time() if now is None else now,
        nonce=secrets.token_hex(12),
        host=host,
        epoch=epoch,
        body=encode(cmd),
    )
    if key:
        env.mac = _mac(key, env)
    return encode(env)


class ReplayState(msgspec.Struct, kw_only=True):
    """What an agent must remember across restarts to refuse replays: the newest daemon
    epoch it accepted, and the nonces of the commands it accepted within the age limit.
    `floor_ts`: commands signed at or before it are refused (raised when a flood of
    commands pushes nonces out before they age out)."""

    epoch: int = 0
    floor_ts: float = 0.0
    nonces: dict[str, float] = {}  # nonce -> the command's ts, oldest first


class CommandVerifier:
    """Checks a command's HMAC, target host, daemon epoch, age and nonce.

    `keys`: the cluster key first, then keys still accepted during a rotation. Without a
    key every well-formed command for this host is accepted: that is `--insecure`, for a
    single-user test only. `replay` is the agent's persisted ReplayState (shared, so that
    saving the agent's state file saves it).
    """

    def __init__(
        self,
        keys: bytes | list[bytes] | None,
        host: str,
        *,
        max_skew_s: float = 300.0,
        remember: int = 2_000,  # persisted in the agent's state file: keep it small
        replay: ReplayState | None = None,
    ) -> None:
        self.keys = [keys] if isinstance(keys, bytes) else list(keys or [])
        self.host = host
        self.max_skew_s = max_skew_s
        self.replay = replay if replay is not None else ReplayState()
        self._remember = remember
        self._envelope = Codec[SignedCommand](SignedCommand, "command envelope")
        self._inner = Codec[Command](Command, "command")

    def verify(self, payload: bytes, now: float | None = None) -> Command:
        env = self._envelope.decode(payload)
        # As bytes: compare_digest raises TypeError on a str with non-ASCII characters.
        mac = env.mac.encode()
        signed = (hmac.compare_digest(mac, _mac(k, env).encode()) for k in self.keys)
        if self.keys and not any(signed):
            raise SignatureError("bad_signature", "bad or missing signature")
        if env.host != self.host:
            raise SignatureError(
                "wrong_host", f"command for host {env.host!r}, this is {self.host!r}"
            )
        if self.keys:
            self._check_fresh(env, time.time() if now is None else now)
        return self._inner.decode(env.body)

    def _check_fresh(self, env: SignedCommand, now: float) -> None:
        r = self.replay
        if env.epoch < r.epoch:
            raise SignatureError(
                "stale_epoch",
                f"command from daemon epoch {env.epoch}, older than epoch {r.epoch} already "
                "accepted (a stale or replayed daemon's command; see docs/security.md)",
            )
        if abs(now - env.ts) > self.max_skew_s:
            raise SignatureError(
                "too_old", f"command is {now - env.ts:.0f} s old; clocks out of sync?"
            )
        if env.nonce in r.nonces or env.ts <= r.floor_ts:
            raise SignatureError("replayed", "replayed nonce")
        r.epoch = env.epoch
        r.nonces[env.nonce] = env.ts
        # Nonces older than the age limit are refused by age anyway: forget them.
        horizon = now - self.max_skew_s
        while r.nonces:
            nonce, ts = next(iter(r.nonces.items()))
            if ts >= horizon and len(r.nonces) <= self._remember:
                break
            del r.nonces[nonce]
            if ts >= horizon:  # pushed out while still fresh: refuse everything up to it
                r.floor_ts = max(r.floor_ts, ts)


def load_key(path: str | None) -> bytes | None:
    """The cluster key: a file readable only by root and the daemon."""
    if not path:
        return None
    with open(path, "rb") as f:
        key = f.read().strip()
    if len(key) < 16:
        raise ProtocolError(f"cluster key {path} is shorter than 16 bytes")
    return key
