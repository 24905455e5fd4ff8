"""Messages between dctop's workers, widgets and app."""

from __future__ import annotations

from textual.message import Message

from dcsched.tui.data import JobDetail, NodeDetail, Snapshot


class SnapshotReady(Message):
    def __init__(self, snapshot: Snapshot) -> None:
        super().__init__()
        self.snapshot = snapshot


class PollFailed(Message):
    """The daemon did not answer (or answered an error) this tick."""

    def __init__(self, error: str, unreachable: bool) -> None:
        super().__init__()
        self.error, self.unreachable = error, unreachable


class OpenJob(Message):
    def __init__(self, job_id: str) -> None:
        super().__init__()
        self.job_id = job_id


class OpenNode(Message):
    def __init__(self, host: str) -> None:
        super().__init__()
        self.host = host


class JobAction(Message):
    """A user asked to cancel / hold / release a job (the app confirms first)."""

    def __init__(self, job_id: str, action: str) -> None:
        super().__init__()
        self.job_id, self.action = job_id, action


class NodeAction(Message):
    """A user asked to drain / resume a node (the app confirms first)."""

    def __init__(self, host: str, action: str) -> None:
        super().__init__()
        self.host, self.action = host, action


class ActionDone(Message):
    def __init__(self, ok: bool, text: str, code: str = "") -> None:
        super().__init__()
        self.ok, self.text, self.code = ok, text, code


class JobDetailReady(Message):
    def __init__(self, detail: JobDetail) -> None:
        super().__init__()
        self.detail = detail


class NodeDetailReady(Message):
    def __init__(self, detail: NodeDetail) -> None:
        super().__init__()
        self.detail = detail


class DetailFailed(Message):
    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error
