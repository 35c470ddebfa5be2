"""What a cluster's status check found, asked without starting anything (``cluster.refresh_status()``,
``rh status``): whether its machines are up, whether its server runs, and what to do about it."""

from __future__ import annotations

from typing import Any

import attrs

#: Server fields shown by ``rh status``, in order.
SHOWN_SERVER_FIELDS = ("pid", "port", "version", "python", "executor", "parallelism", "calls", "state_dir")


@attrs.frozen(kw_only=True)
class ClusterStatus:
    """One status check of a cluster.

    :param name: the cluster's saved name, or its own name when it was never saved.
    :param kind: ``"local"``, or the provisioner of a remote cluster (``"byo"``, ``"sky"``, ...).
    :param machines: ``"up"``, ``"stopped"``, ``"down"`` or ``"unknown"``.
    :param server: what the running server reports about itself; None when no server runs.
    :param explanation: what the state means and what to do next, in sentences.
    """

    name: str
    kind: str
    machines: str
    server: dict[str, Any] | None
    explanation: str

    @property
    def running(self) -> bool:
        return self.server is not None

    def to_json(self) -> dict[str, Any]:
        return {**attrs.asdict(self), "running": self.running}

    def lines(self) -> list[str]:
        """The human view: one ``label value`` line per fact, then the explanation."""
        lines = [f"{'cluster':12} {self.name} ({self.kind})", f"{'machines':12} {self.machines}",
                 f"{'server':12} {'running' if self.running else 'not running'}"]
        for key in SHOWN_SERVER_FIELDS:
            if self.server and self.server.get(key) is not None:
                lines.append(f"{'  ' + key:12} {self.server[key]}")
        return lines + ["", self.explanation]
