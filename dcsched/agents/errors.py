"""The agent's one error root: everything the agent raises on purpose derives from AgentError."""

from __future__ import annotations

# Ack.code values (see dcsched.protocol.messages.Ack): what the daemon does with a refusal.
INVALID = "invalid"  # the launch could never run here: the job fails at once
PORT_IN_USE = "port_in_use"  # retried with another master port
UNHEALTHY = "unhealthy"  # the health check failed: the job is requeued, the node drained


class AgentError(Exception):
    """Root of dc-agent's errors."""


class BackendError(AgentError):
    """A GPU backend cannot start (no driver, no GPUs, nvidia-ml-py missing)."""


class LaunchError(AgentError):
    """A job's node part cannot be started here; the message is shown to the submitter.

    `code` is the Ack's: INVALID, PORT_IN_USE, or "" for a failure that may not recur."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class StateError(AgentError):
    """The agent's state file cannot be read or written."""
