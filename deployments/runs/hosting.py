"""Who runs the platform's processes, so that a diagnosis's next action names what the reader can do.

On a desktop (`ariel up` on the reader's machine) the control plane answering a
question means `ariel up` is running: telling that person to "run `ariel up`" is
wrong; which of its children stopped, and where its log is, is what helps. In
the SaaS, hybrid and on-prem models the reader cannot restart anything: the
operator can.

Example:
    >>> Hosting("desktop", "/home/me/.ariel/logs").child_down("worker").split(";")[0]
    '`ariel up` is running, but its worker is not answering: it restarts a child that dies, so look again in a minute'
    >>> Hosting("saas").child_down("worker")
    "the platform's worker is not answering: tell your Ariel operator (its log says why)"
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Model = Literal["desktop", "dev", "saas", "hybrid", "onprem"]
Child = Literal["worker", "prefect-server"]

_NAMES: dict[Child, str] = {"worker": "worker", "prefect-server": "Prefect server"}


@dataclass(frozen=True)
class Hosting:
    """The deployment model of the control plane answering, and where `ariel up` keeps its children's logs."""

    model: Model = "desktop"
    log_dir: str = "ARIEL_HOME/logs"

    @property
    def on_this_machine(self) -> bool:
        """Whether `ariel up` on the reader's own machine runs the platform (desktop and dev)."""
        return self.model in ("desktop", "dev")

    def child_down(self, child: Child) -> str:
        """What to do when one of the platform's processes (`ariel up`'s children) stopped answering."""
        name = _NAMES[child]
        if self.on_this_machine:
            return (f"`ariel up` is running, but its {name} is not answering: it restarts a child that dies, so look "
                    f"again in a minute; if it stays down, read why in {self.log_dir}/{child}.log, then stop "
                    "`ariel up` (Ctrl-C) and start it again")
        return f"the platform's {name} is not answering: tell your Ariel operator (its log says why)"

    def restart(self) -> str:
        """Restarting the control plane: the reader's own `ariel up`, or the operator's deployment."""
        return "restart `ariel up`" if self.on_this_machine else "ask your Ariel operator to restart the control plane"
