"""`[daemon] socket_group`: the API socket's group, so that only its members reach dcd."""

from __future__ import annotations

import grp
import os
import stat
from pathlib import Path

import pytest

from dcsched.daemon.service import Daemon
from dcsched.protocol.config import ConfigError, load_config
from tests.conftest import Broker
from tests.integration.daemon_harness import running_daemon, write_config


async def test_the_socket_gets_the_configured_group_and_mode(
    tmp_path: Path, mosquitto: Broker, prefix: str
) -> None:
    conf = write_config(tmp_path, mosquitto, prefix, socket_group="nogroup", socket_mode=0o660)
    async with running_daemon(conf) as d:
        st = os.stat(d.config.daemon.socket)
    assert st.st_gid == grp.getgrnam("nogroup").gr_gid
    assert stat.S_IMODE(st.st_mode) == 0o660


async def test_an_unknown_group_stops_the_daemon_with_the_fix(
    tmp_path: Path, mosquitto: Broker, prefix: str
) -> None:
    conf = write_config(tmp_path, mosquitto, prefix, socket_group="no-such-group-dcsched")
    daemon = await Daemon.open(load_config(str(conf)))
    with pytest.raises(ConfigError, match="no such group; create it"):
        await daemon.run()
