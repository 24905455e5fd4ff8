from __future__ import annotations

import uuid

import pytest


@pytest.fixture
def prefix() -> str:
    """A topic prefix of the test's own on the shared broker."""
    return f"test-{uuid.uuid4().hex[:8]}"
