from __future__ import annotations

import logging

import pytest

from dcsched.protocol.codec import (
    MAX_PAYLOAD,
    CommandVerifier,
    DecodeError,
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
    v = CommandVerifier(KEY)
    payload = sign(_launch(), KEY)
    assert v.verify(payload) == _launch()
    with pytest.raises(SignatureError, match="replayed"):
        v.verify(payload)
    with pytest.raises(SignatureError, match="signature"):
        CommandVerifier(KEY).verify(sign(_launch(), b"x" * 32))
    with pytest.raises(SignatureError, match="signature"):
        CommandVerifier(KEY).verify(sign(_launch(), None))
    tampered = payload.replace(b'"ts":', b'"ts":1')
    with pytest.raises((SignatureError, DecodeError)):
        CommandVerifier(KEY).verify(tampered)


def test_old_commands_are_refused() -> None:
    payload = sign(Cancel(cmd_id="c", job_id="1"), KEY, now=1000.0)
    with pytest.raises(SignatureError, match="old"):
        CommandVerifier(KEY).verify(payload, now=5000.0)


def test_without_a_key_any_well_formed_command_is_accepted() -> None:
    assert CommandVerifier(None).verify(sign(_launch(), None)) == _launch()


def test_topics_build_and_parse() -> None:
    t = Topics("pfx/v1")
    assert t.host("gpu01", "cmd") == "pfx/v1/hosts/gpu01/cmd"
    assert t.parse("pfx/v1/hosts/gpu01/telemetry") == ("gpu01", "telemetry")
    assert t.parse("pfx/v1/hosts/gpu01/other") is None
    assert t.parse("other/hosts/gpu01/cmd") is None
    with pytest.raises(ValueError, match="cannot be used"):
        t.host("a/b", "cmd")
