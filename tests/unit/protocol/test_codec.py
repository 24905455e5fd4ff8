from __future__ import annotations

import logging

import msgspec
import pytest

from dcsched.protocol.codec import (
    MAX_PAYLOAD,
    CommandVerifier,
    DecodeError,
    ReplayState,
    SignatureError,
    encode,
    event_codec,
    sign,
    telemetry_codec,
)
from dcsched.protocol.messages import Cancel, GpuSample, JobExited, Launch, Telemetry
from dcsched.protocol.topics import Topics

KEY = b"k" * 32


def _launch() -> Launch:
    return Launch(
        cmd_id="c1",
        job_id="7",
        node_rank=0,
        nnodes=2,
        nproc_per_node=2,
        master_addr="10.0.0.1",
        master_port=29500,
        gpus=[0, 1],
        command=["t.py"],
    )


def test_telemetry_round_trip_keeps_na_fields() -> None:
    msg = Telemetry(
        host="h1", ts=1.5, seq=3, gpus=[GpuSample(index=0, uuid="GPU-1", util=None, temp_c=40.0)]
    )
    back = telemetry_codec().decode(encode(msg))
    assert back == msg
    assert back.gpus[0].util is None


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json", "invalid"),
        (b'{"type":"job_exited","host":"h"}', "invalid"),  # required fields missing
        (b'{"type":"nope"}', "invalid"),
        (b'{"type":"ack","v":2,"host":"h","cmd_id":"c","job_id":"1"}', "version"),
        (b"x" * (MAX_PAYLOAD + 1), "too_large"),
    ],
)
def test_bad_payloads_are_dropped_and_counted(
    payload: bytes, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    codec = event_codec()
    with pytest.raises(DecodeError):
        codec.decode(payload)
    with caplog.at_level(logging.WARNING):
        assert codec.decode_or_drop(payload, "t") is None
    assert codec.dropped[reason] == 1
    assert "dropped event message" in caplog.text


def test_event_union_decodes_by_tag() -> None:
    ev = JobExited(host="h", job_id="1", node_rank=1, ts=2.0, exit_code=3)
    assert event_codec().decode(encode(ev)) == ev


def test_signed_command_verifies_and_rejects_tampering_and_replay() -> None:
    v = CommandVerifier(KEY, "h1")
    payload = sign(_launch(), KEY, host="h1")
    assert v.verify(payload) == _launch()
    with pytest.raises(SignatureError, match="replayed"):
        v.verify(payload)
    with pytest.raises(SignatureError, match="signature"):
        CommandVerifier(KEY, "h1").verify(sign(_launch(), b"x" * 32, host="h1"))
    with pytest.raises(SignatureError, match="signature"):
        CommandVerifier(KEY, "h1").verify(sign(_launch(), None, host="h1"))
    tampered = payload.replace(b'"ts":', b'"ts":1')
    with pytest.raises((SignatureError, DecodeError)):
        CommandVerifier(KEY, "h1").verify(tampered)


def test_a_command_is_bound_to_its_host() -> None:
    payload = sign(_launch(), KEY, host="h1")
    with pytest.raises(SignatureError, match="for host 'h1'") as err:
        CommandVerifier(KEY, "h2").verify(payload)
    assert err.value.reason == "wrong_host"
    # Re-addressing the envelope breaks its MAC.
    forged = payload.replace(b'"host":"h1"', b'"host":"h2"')
    assert forged != payload
    with pytest.raises(SignatureError) as err:
        CommandVerifier(KEY, "h2").verify(forged)
    assert err.value.reason == "bad_signature"


def test_commands_from_an_older_daemon_epoch_are_refused() -> None:
    v = CommandVerifier(KEY, "h1")
    old = sign(Cancel(cmd_id="a", job_id="1"), KEY, host="h1", epoch=5)
    new = sign(Cancel(cmd_id="b", job_id="1"), KEY, host="h1", epoch=6)
    v.verify(new)
    with pytest.raises(SignatureError, match="epoch 5") as err:
        v.verify(old)
    assert err.value.reason == "stale_epoch"
    assert v.replay.epoch == 6
    # The epoch field is under the MAC: a captured command cannot be promoted.
    promoted = old.replace(b'"epoch":5', b'"epoch":7')
    with pytest.raises(SignatureError, match="signature"):
        v.verify(promoted)


def test_the_replay_guard_survives_a_restart_through_its_state() -> None:
    v = CommandVerifier(KEY, "h1")
    payload = sign(_launch(), KEY, host="h1", epoch=3, now=1000.0)
    v.verify(payload, now=1001.0)
    saved = msgspec.json.encode(v.replay)  # what the agent's state file holds
    restarted = CommandVerifier(KEY, "h1", replay=msgspec.json.decode(saved, type=ReplayState))
    with pytest.raises(SignatureError, match="replayed"):
        restarted.verify(payload, now=1002.0)
    with pytest.raises(SignatureError) as err:
        restarted.verify(sign(_launch(), KEY, host="h1", epoch=2, now=1002.0), now=1002.0)
    assert err.value.reason == "stale_epoch"


def test_nonces_are_bounded_and_a_pushed_out_nonce_is_still_refused() -> None:
    v = CommandVerifier(KEY, "h1", remember=3)
    payloads = [
        sign(Cancel(cmd_id=str(i), job_id="1"), KEY, host="h1", now=100.0 + i) for i in range(5)
    ]
    for p in payloads:
        v.verify(p, now=110.0)
    assert len(v.replay.nonces) == 3
    with pytest.raises(SignatureError, match="replayed"):
        v.verify(payloads[0], now=110.0)  # forgotten, but at or below the floor
    # Nonces that aged out are forgotten: the age limit refuses their commands.
    v.verify(sign(Cancel(cmd_id="late", job_id="1"), KEY, host="h1", now=1000.0), now=1000.0)
    assert len(v.replay.nonces) == 1


def test_a_rotation_accepts_the_previous_key_too() -> None:
    old, new = b"o" * 32, b"n" * 32
    v = CommandVerifier([new, old], "h1")
    assert v.verify(sign(_launch(), old, host="h1")) == _launch()
    assert v.verify(sign(_launch(), new, host="h1")) == _launch()
    with pytest.raises(SignatureError, match="signature"):
        CommandVerifier([new], "h1").verify(sign(_launch(), old, host="h1"))


def test_old_commands_are_refused() -> None:
    payload = sign(Cancel(cmd_id="c", job_id="1"), KEY, host="h1", now=1000.0)
    with pytest.raises(SignatureError, match="old"):
        CommandVerifier(KEY, "h1").verify(payload, now=5000.0)


def test_without_a_key_a_well_formed_command_for_this_host_is_accepted() -> None:
    assert CommandVerifier(None, "h1").verify(sign(_launch(), None, host="h1")) == _launch()
    with pytest.raises(SignatureError, match="for host"):
        CommandVerifier(None, "h2").verify(sign(_launch(), None, host="h1"))


def test_topics_build_and_parse() -> None:
    t = Topics("pfx/v1")
    assert t.host("gpu01", "cmd") == "pfx/v1/hosts/gpu01/cmd"
    assert t.parse("pfx/v1/hosts/gpu01/telemetry") == ("gpu01", "telemetry")
    assert t.parse("pfx/v1/hosts/gpu01/other") is None
    assert t.parse("other/hosts/gpu01/cmd") is None
    with pytest.raises(ValueError, match="cannot be used"):
        t.host("a/b", "cmd")
