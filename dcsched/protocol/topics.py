"""MQTT topic layout: `{prefix}/hosts/{host}/{kind}`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

DEFAULT_PREFIX = "dcsched/v1"
TopicKind = Literal["telemetry", "status", "cmd", "events"]
KINDS: tuple[TopicKind, ...] = ("telemetry", "status", "cmd", "events")


@dataclass(frozen=True, slots=True)
class Topics:
    prefix: str = DEFAULT_PREFIX

    def host(self, host: str, kind: TopicKind) -> str:
        if not host or any(c in host for c in "/+#"):
            raise ValueError(f"host name {host!r} cannot be used in an MQTT topic")
        return f"{self.prefix}/hosts/{host}/{kind}"

    def all_hosts(self, kind: TopicKind) -> str:
        """Wildcard filter for one kind of message from every host."""
        return f"{self.prefix}/hosts/+/{kind}"

    def parse(self, topic: str) -> tuple[str, TopicKind] | None:
        """(host, kind) of a topic under this prefix, or None for anything else."""
        head = f"{self.prefix}/hosts/"
        if not topic.startswith(head):
            return None
        parts = topic[len(head) :].split("/")
        if len(parts) != 2 or not parts[0]:
            return None
        for kind in KINDS:
            if parts[1] == kind:
                return parts[0], kind
        return None
