"""Who sees what of a job (like Slurm's PrivateData): everyone sees the queue, only the job's
owner and admins see what could hold a secret.

A job's command line, environment, working directory and interpreter are its owner's: tokens
and passwords end up in `env` and in arguments. Everyone else sees the job's header (name,
user, account, QOS, state, reason, resources, times, nodes) and its history, which is what
the queue needs to be understood, and cannot read its log.
"""

from __future__ import annotations

from typing import Any

# The spec's keys anyone may see; every other key is the owner's.
PUBLIC_SPEC = frozenset(
    {
        "name",
        "account",
        "qos",
        "nice",
        "hold",
        "preemptible",
        "dependency",
        "resources",
        "array",
        "requeue",
        "max_restarts",
        "signal",
    }
)


def public_view(view: dict[str, Any]) -> dict[str, Any]:
    """A job's view as someone other than its owner or an admin may see it; `hidden` lists
    the spec's keys left out."""
    spec = view.get("spec")
    if not isinstance(spec, dict):
        return view
    out = dict(view)
    out["spec"] = {k: v for k, v in spec.items() if k in PUBLIC_SPEC}
    out["hidden"] = sorted(k for k in spec if k not in PUBLIC_SPEC)
    return out
