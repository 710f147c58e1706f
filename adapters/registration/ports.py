"""What registration needs from the process it runs in, as typed Protocols.

Why Protocols: registration acts on the gateway's live objects (it hot-loads adapters into the
backend, detectors into the bank, names into the gate) but must not depend on how the gateway
builds them. The gateway's ``Runtime`` satisfies :class:`RegistrationRuntime` as it is; a
benchmark or test that runs a pipeline without a gateway passes :class:`Collaborators`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from oblivio.gateway.serving.enforcement import EnforcementGuard

if TYPE_CHECKING:  # torch-heavy; only their types are needed here
    from oblivio.detector import FeatureExtractor, ForgetSetScorer


class AdapterHost(Protocol):
    """The serving backend, as far as hot-loading adapters goes."""

    def list_adapters(self) -> list[str]: ...

    async def add_adapter(self, name: str, path: Path) -> None: ...

    async def remove_adapter(self, name: str) -> None: ...


class GateSets(Protocol):
    """The gate's policy store, as far as knowing which sets exist goes."""

    def register_set(self, name: str) -> None: ...

    def sync_sets(self, names: Iterable[str]) -> None: ...

    def forget(self, set_name: str) -> object:
        """Drop the set's policy; KeyError if it has none."""
        ...

    def refresh(self) -> bool:
        """Pick up policy changes another replica made."""
        ...


class ScorerBank(Protocol):
    """The detector bank chat scoring reads: registration adds and removes its sets."""

    @property
    def extractor(self) -> FeatureExtractor:
        """The bank's feature space, which a set's detector fit must reproduce."""
        ...

    def names(self) -> list[str]: ...

    def add(self, name: str, scorer: ForgetSetScorer) -> None: ...

    def remove(self, name: str) -> None: ...


class QuarantineMetrics(Protocol):
    """The gateway metrics registration keeps up to date."""

    def forget_set_quarantined(self, name: str, enforced_by: str) -> None: ...

    def forget_set_unquarantined(self, name: str) -> None: ...

    def forget_set_removed(self, name: str) -> None: ...


class RegistrationRuntime(Protocol):
    """The live objects of the process a pipeline serves (``detector`` None: no detector, so
    nothing is enforced before an adapter is live; ``metrics`` None: none kept)."""

    @property
    def backend(self) -> AdapterHost: ...

    @property
    def policy_store(self) -> GateSets: ...

    @property
    def detector(self) -> ScorerBank | None: ...

    @property
    def metrics(self) -> QuarantineMetrics | None: ...

    @property
    def enforcement(self) -> EnforcementGuard: ...


@dataclass(frozen=True)
class Collaborators:
    """A :class:`RegistrationRuntime` for a pipeline that runs without a gateway (benchmarks, tests)."""

    backend: AdapterHost
    policy_store: GateSets
    detector: ScorerBank | None = None
    metrics: QuarantineMetrics | None = None
    enforcement: EnforcementGuard = field(default_factory=EnforcementGuard)
