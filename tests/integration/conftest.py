from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration import daemon_harness
from tests.integration.test_install import build_wheel


@pytest.fixture
def prefix() -> str:
    """A topic prefix of the test's own on the shared broker."""
    return f"test-{uuid.uuid4().hex[:8]}"


@pytest.fixture(params=["sqlite", "postgresql"])
def daemon_store(request: pytest.FixtureRequest) -> Iterator[str]:
    """Runs a test once per store backend: the daemons its write_config describes keep their
    state in SQLite, then in a PostgreSQL database of the test's own."""
    if request.param == "sqlite":
        yield ""
        return
    url = str(request.getfixturevalue("postgres_url"))
    daemon_harness.STORE = url
    try:
        yield url
    finally:
        daemon_harness.STORE = ""
    import psycopg

    with psycopg.connect(url) as db:  # the daemon did keep its state there
        assert db.execute("SELECT count(*) FROM schema_version").fetchone() != (0,)


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built once for the tests that install it."""
    return build_wheel(tmp_path_factory.mktemp("wheel"))
