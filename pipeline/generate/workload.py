"""What a workload is: an ``app`` identity plus how its replicas are laid out in slots."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SimWorkload:
    """One workload identity (the ``app`` label) and its replica slots."""

    idx: int
    namespace: str
    app: str
    tier: str  # web api worker db cache queue | infra | job | vm | service | external
    kind: str  # pod, vm, service, external
    group: str  # the business application (or infra component) it belongs to
    port: int = 0  # main service port (0 = none)
    engine: str = ""  # postgres, mysql, kafka, rabbitmq, oracle...
    listed: bool = True  # appears in inventory.jsonl
    dual_stack: bool = False
    cidr: str | None = None  # inventory range for VMs and external peers
    slot_base: int = 0  # first slot (replica position) of this workload
    n_slots: int = 0  # base replicas plus scale-out headroom
    base_replicas: int = 0

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.app}"


__all__ = ["SimWorkload"]
