"""PolicyStore: validated versioned updates, atomic swaps under concurrent readers, persistence."""

from __future__ import annotations

import json
import threading
from dataclasses import asdict
from pathlib import Path

import pytest

from oblivio.adapters.forget_set import UnknownForgetSetError
from oblivio.gateway.config import GateConfig
from oblivio.gateway.gate.decision import GatePolicy, decide
from oblivio.gateway.gate.policy_store import (
    POLICY_FILENAME,
    PolicyStore,
    PolicyStoreError,
    PolicyValidationError,
    UnknownPolicyVersionError,
)


@pytest.fixture()
def store(tmp_path: Path) -> PolicyStore:
    s = PolicyStore(tmp_path / "artifacts", GateConfig(default_threshold=0.4))
    s.register_set("bio")
    s.register_set("chem")
    return s


def test_starts_from_config_and_persists_under_artifacts(store: PolicyStore, tmp_path: Path) -> None:
    policy = store.current()
    assert policy.version == 1
    assert policy.default.threshold == 0.4 and policy.scale_grid == (0.25, 0.5, 0.75, 1.0)
    assert store.path == tmp_path / "artifacts" / POLICY_FILENAME
    document = json.loads(store.path.read_text())
    assert document["sets"] == ["bio", "chem"] and document["versions"][0]["version"] == 1


def test_update_creates_new_immutable_versions(store: PolicyStore) -> None:
    v1 = store.current()
    v2 = store.update(None, {"threshold": 0.6, "softness": "20"})  # CLI strings are coerced
    v3 = store.update("bio", {"threshold": 0.3, "mode": "refusal"})
    assert (v2.version, v3.version) == (2, 3)
    assert v1.default.threshold == 0.4  # old object untouched
    assert v2.default.threshold == 0.6 and v2.default.softness == 20.0
    assert v3.for_set("bio").threshold == 0.3 and v3.for_set("bio").mode == "refusal"
    assert v3.for_set("bio").softness == 20.0  # a new override starts from the current default
    assert v3.for_set("chem") == v3.default
    assert [p.version for p in store.history()] == [1, 2, 3]
    assert store.current() is v3


@pytest.mark.parametrize(
    ("set_name", "changes", "error", "message"),
    [
        (None, {"threshold": -0.2}, PolicyValidationError, r"default.threshold must be a number in \[0, 1\]"),
        ("bio", {"softness": 0}, PolicyValidationError, "forget set 'bio'.softness must be > 0"),
        (None, {"threshold": "high"}, PolicyValidationError, "threshold must be a number"),
        (None, {"colour": 1}, PolicyValidationError, "unknown policy field"),
        ("bio", {"on_detector_error": "fail_open"}, PolicyValidationError, "is global"),
        (None, {"on_detector_error": "shrug"}, PolicyValidationError, "on_detector_error must be one of"),
        (None, {"max_scale": 3.0}, PolicyValidationError, "exceeds the largest scale"),
        (None, {"min_scale": 0.9, "max_scale": 0.5}, PolicyValidationError, "must be <= max_scale"),
        (None, {"mode": "adapter_then_refusal", "refusal_threshold": 0.2}, PolicyValidationError, ">= threshold"),
        (None, {}, PolicyValidationError, "no changes"),
        ("physics", {"threshold": 0.5}, UnknownForgetSetError, "forget set 'physics' is not registered"),
    ],
)
def test_invalid_updates_are_rejected_and_change_nothing(
    store: PolicyStore, set_name, changes, error, message
) -> None:
    before = store.current()
    on_disk = store.path.read_text()
    with pytest.raises(error, match=message):
        store.update(set_name, changes)
    assert store.current() is before
    assert store.path.read_text() == on_disk


def test_rollback_creates_a_new_version_equal_to_the_old_one(store: PolicyStore) -> None:
    store.update(None, {"threshold": 0.7})
    store.update("bio", {"max_scale": 0.5})
    rolled = store.rollback(1)
    assert rolled.version == 4
    assert rolled.default == store.get_version(1).default and dict(rolled.per_set) == {}
    with pytest.raises(UnknownPolicyVersionError, match="does not exist"):
        store.rollback(99)


def test_persistence_and_reload(store: PolicyStore, tmp_path: Path) -> None:
    store.update(None, {"on_detector_error": "fail_open", "threshold": 0.55})
    store.update("chem", {"mode": "adapter_then_refusal", "refusal_threshold": 0.9})
    reloaded = PolicyStore(tmp_path / "artifacts", GateConfig())
    assert reloaded.current() == store.current()
    assert reloaded.known_sets() == ["bio", "chem"]
    assert [asdict(p.default) for p in reloaded.history()] == [asdict(p.default) for p in store.history()]
    reloaded.rollback(2)
    assert PolicyStore(tmp_path / "artifacts", GateConfig()).current().version == 4
    # No temp files left behind; the lock file replicas share is meant to stay.
    leftovers = [p.name for p in store.path.parent.iterdir() if p.name not in (POLICY_FILENAME, f"{POLICY_FILENAME}.lock")]
    assert leftovers == []


def test_changed_grid_in_config_is_adopted_with_capped_scales(store: PolicyStore, tmp_path: Path) -> None:
    store.update("bio", {"max_scale": 1.0, "min_scale": 0.75})
    reloaded = PolicyStore(tmp_path / "artifacts", GateConfig(scale_grid=(0.2, 0.5)))
    policy = reloaded.current()
    assert policy.scale_grid == (0.2, 0.5)
    assert policy.for_set("bio").max_scale == 0.5 and policy.for_set("bio").min_scale == 0.5
    assert policy.version == store.current().version + 1


def test_corrupt_file_refuses_to_start(tmp_path: Path) -> None:
    path = tmp_path / "gate_policy.json"
    path.write_text("{not json")
    with pytest.raises(PolicyStoreError, match="cannot read gate policy file"):
        PolicyStore(path, GateConfig())


def test_forget_drops_override_and_unregisters(store: PolicyStore) -> None:
    store.update("bio", {"threshold": 0.2})
    after = store.forget("bio")
    assert "bio" not in after.per_set and store.known_sets() == ["chem"]
    with pytest.raises(UnknownForgetSetError):
        store.update("bio", {"threshold": 0.3})
    # Rolling back to a version that had the override does not resurrect it for a forgotten set.
    assert "bio" not in store.rollback(2).per_set
    store.register_set("bio")
    store.update("bio", {"threshold": 0.25})
    assert store.reset_set("bio").for_set("bio") == store.current().default


def test_concurrent_readers_only_see_committed_versions(store: PolicyStore) -> None:
    """Writers swap whole policies; readers hammering current() must never see a mix.

    Each update sets threshold = softness / 100 = version-dependent pair, so a torn read would
    show a pair that no committed version ever had.
    """
    committed: dict[int, GatePolicy] = {1: store.current()}
    stop = threading.Event()
    observed: list[GatePolicy] = []
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            while not stop.is_set():
                policy = store.current()
                decide({"bio": 0.9, "chem": 0.1}, policy, {"bio", "chem"})
                observed.append(policy)
        except BaseException as exc:  # pragma: no cover - surfaced below
            errors.append(exc)

    readers = [threading.Thread(target=reader) for _ in range(3)]
    for thread in readers:
        thread.start()
    try:
        for i in range(1, 31):
            value = round(0.2 + (i % 7) * 0.1, 2)
            target = None if i % 2 else "bio"
            policy = store.update(target, {"threshold": value, "softness": value * 100})
            committed[policy.version] = policy
    finally:
        stop.set()
        for thread in readers:
            thread.join()
    assert not errors
    assert len(observed) > 30
    versions_seen = set()
    for policy in observed:
        assert committed[policy.version] is policy  # exactly a committed object, never a copy/mix
        for set_policy in [policy.default, *policy.per_set.values()]:
            assert set_policy.softness == pytest.approx(set_policy.threshold * 100) or (
                policy.version == 1 and set_policy.softness == 10.0
            )
        versions_seen.add(policy.version)
    assert len(versions_seen) > 1
    assert store.current().version == 31


def test_propose_is_validated_but_never_committed(store: PolicyStore) -> None:
    live = store.current()
    proposed = store.propose([(None, {"threshold": 0.9}), ("bio", {"mode": "refusal"})])
    assert proposed.version == 0 and proposed.default.threshold == 0.9
    assert proposed.for_set("bio").mode == "refusal"
    assert store.current() is live and len(store.history()) == 1
    with pytest.raises(PolicyValidationError, match="threshold"):
        store.propose([(None, {"threshold": -1})])
    with pytest.raises(UnknownForgetSetError):
        store.propose([("nope", {"threshold": 0.1})])


def test_replicas_sharing_the_file_see_and_build_on_each_others_versions(tmp_path: Path) -> None:
    first = PolicyStore(tmp_path / "shared", GateConfig())
    first.register_set("bio")
    second = PolicyStore(tmp_path / "shared", GateConfig())
    assert second.known_sets() == ["bio"] and not second.refresh(), "nothing new since it loaded"

    tightened = first.update("bio", {"threshold": 0.8})
    assert second.current().version < tightened.version
    assert second.refresh() and second.current() == tightened

    # A write on a replica that has not refreshed yet still builds on the newest version.
    loosened = first.update(None, {"threshold": 0.3})
    on_second = second.update("bio", {"softness": 4.0})
    assert on_second.version == loosened.version + 1
    assert on_second.default.threshold == 0.3 and on_second.per_set["bio"].threshold == 0.8
    assert first.refresh() and first.current() == on_second


def test_concurrent_writers_in_two_replicas_lose_no_version(tmp_path: Path) -> None:
    replicas = [PolicyStore(tmp_path / "shared", GateConfig()) for _ in range(2)]

    def writer(store: PolicyStore, offset: int) -> None:
        for step in range(10):
            store.update(None, {"threshold": round(0.05 * (offset + step), 2)})

    threads = [threading.Thread(target=writer, args=(store, i * 10)) for i, store in enumerate(replicas)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    replicas[0].refresh()
    replicas[1].refresh()
    versions = [p.version for p in replicas[0].history()]
    assert versions == list(range(1, 22)), "20 updates from two replicas = 20 new versions"
    assert replicas[0].current() == replicas[1].current()
