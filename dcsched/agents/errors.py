"""The agent's one error root: everything the agent raises on purpose derives from AgentError."""

from __future__ import annotations


class AgentError(Exception):
    """Root of dc-agent's errors."""


class BackendError(AgentError):
    """A GPU backend cannot start (no driver, no GPUs, nvidia-ml-py missing)."""


class LaunchError(AgentError):
    """A job's node part cannot be started here; the message is shown to the submitter."""


class StateError(AgentError):
    """The agent's state file cannot be read or written."""
