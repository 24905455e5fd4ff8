"""API tokens: what verify accepts and every way it refuses, on a given clock."""

from __future__ import annotations

import pytest

from dcsched.daemon.tokens import TokenError, derive_key, issue, verify

KEY = derive_key(b"cluster-key-of-this-site-0000000")


def test_a_token_carries_the_uid_and_user_until_it_expires() -> None:
    t = issue(KEY, 1001, "alice", 1000.0, 60)
    c = verify(KEY, t, 1059.0)
    assert (c.uid, c.user, c.issued, c.expires) == (1001, "alice", 1000.0, 1060.0)
    with pytest.raises(TokenError, match="expired"):
        verify(KEY, t, 1060.0)


@pytest.mark.parametrize(
    ("token", "why"),
    [
        ("abc", "three"),
        (issue(derive_key(b"another-site-key-00000000000000"), 0, "root", 1000.0, 60), "signature"),
        (issue(KEY, 1001, "alice", 5000.0, 60), "future"),
        ("x" * 5000, "too long"),
    ],
)
def test_refused_tokens_say_why(token: str, why: str) -> None:
    with pytest.raises(TokenError, match=why):
        verify(KEY, token, 1000.0)


def test_a_changed_claim_breaks_the_signature() -> None:
    head, _body, sig = issue(KEY, 1001, "alice", 1000.0, 60).split(".")
    root = issue(KEY, 0, "root", 1000.0, 60).split(".")[1]
    with pytest.raises(TokenError, match="signature"):
        verify(KEY, f"{head}.{root}.{sig}", 1000.0)


def test_the_token_key_is_not_the_cluster_key() -> None:
    assert derive_key(b"k" * 32) != b"k" * 32 and len(derive_key(b"k" * 32)) == 32
