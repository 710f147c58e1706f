"""Detector: fit/score/save/load round trip, the bank, bad input, versions, stored-state privacy.

All on the real default model (session-scoped extractor) with one-person forget sets.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fixtures_detector import person_texts
from oblivio.detector import DetectorBank, ForgetSetScorer, IncompatibleScorerError, fit_forget_set

pytestmark = pytest.mark.slow


def test_bank_scores_the_right_set_higher_on_held_out_paraphrases(
    detector_extractor: Any, tiny_entities: Any, two_fitted_sets: dict[str, Any]
) -> None:
    bank = DetectorBank(detector_extractor)
    for name, scorer in two_fitted_sets.items():
        bank.add(name, scorer)
    assert sorted(bank.names()) == ["p0", "p1"]
    probes0 = person_texts(tiny_entities, 0, paraphrase=True)
    probes1 = person_texts(tiny_entities, 1, paraphrase=True)
    scores = bank.score(probes0 + probes1)
    assert all(set(s) == {"p0", "p1"} and all(0.0 <= v <= 1.0 for v in s.values()) for s in scores)
    right = [s["p0"] > s["p1"] for s in scores[: len(probes0)]] + [s["p1"] > s["p0"] for s in scores[len(probes0) :]]
    assert np.mean(right) >= 0.9, scores
    # far prompts stay low for both sets
    far = bank.score(["How do I bake sourdough bread?", "What is the capital of Japan?"])
    assert all(v < 0.5 for s in far for v in s.values()), far


def test_bank_equals_single_scorer_and_remove(detector_extractor: Any, two_fitted_sets: dict[str, Any]) -> None:
    prompts = ["Where was this author born?", "Tell me a joke about cats."]
    bank = DetectorBank(detector_extractor)
    assert bank.score(prompts) == [{}, {}]
    for name, scorer in two_fitted_sets.items():
        bank.add(name, scorer)
    together = bank.score(prompts)
    alone = two_fitted_sets["p1"].score(detector_extractor, prompts)
    np.testing.assert_allclose([s["p1"] for s in together], alone, rtol=1e-5, atol=1e-7)
    bank.remove("p0")
    assert bank.names() == ["p1"]
    with pytest.raises(KeyError, match="p0"):
        bank.remove("p0")


def test_save_load_round_trip_gives_identical_scores(
    detector_extractor: Any, tiny_entities: Any, two_fitted_sets: dict[str, Any], tmp_path: Path
) -> None:
    scorer = two_fitted_sets["p0"]
    prompts = person_texts(tiny_entities, 0, paraphrase=True) + ["What is 2 + 2?"]
    before = scorer.score(detector_extractor, prompts)
    scorer.save(tmp_path / "p0")
    loaded = ForgetSetScorer.load(tmp_path / "p0")
    after = loaded.score(detector_extractor, prompts)
    np.testing.assert_array_equal(before, after)
    assert loaded.name == "p0" and loaded.fingerprint == scorer.fingerprint
    # scoring mutates nothing: repeated calls agree
    np.testing.assert_array_equal(after, loaded.score(detector_extractor, prompts))


def test_load_refuses_other_format_version_and_other_feature_space(
    detector_extractor: Any, two_fitted_sets: dict[str, Any], tmp_path: Path
) -> None:
    directory = tmp_path / "p1"
    two_fitted_sets["p1"].save(directory)
    meta = json.loads((directory / "meta.json").read_text())
    meta["fingerprint"]["model_identity"] = "another-model"
    (directory / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(IncompatibleScorerError, match="different detector"):
        DetectorBank(detector_extractor).add("p1", ForgetSetScorer.load(directory))
    meta["format_version"] = 999
    (directory / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(IncompatibleScorerError, match="format version 999"):
        ForgetSetScorer.load(directory)
    with pytest.raises(FileNotFoundError):
        ForgetSetScorer.load(tmp_path / "missing")


def test_bad_input_gives_clear_errors(detector_extractor: Any) -> None:
    with pytest.raises(ValueError, match="at least 2 texts"):
        fit_forget_set(detector_extractor, [], name="empty")
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str"):
        fit_forget_set(detector_extractor, ["a text", 42], name="bad")  # type: ignore[list-item]
    with pytest.raises(TypeError, match="not a single str"):
        fit_forget_set(detector_extractor, "just one string", name="bad")
    with pytest.raises(ValueError, match="empty or whitespace"):
        fit_forget_set(detector_extractor, ["ok text", "   "], name="bad")
    with pytest.raises(ValueError, match="name"):
        fit_forget_set(detector_extractor, ["a", "b"], name="has space")
    too_long = "word " * (detector_extractor.context_length + 10)
    with pytest.raises(ValueError, match="context window"):
        detector_extractor.extract([too_long])
    with pytest.raises(TypeError):
        DetectorBank(detector_extractor).score([None])  # type: ignore[list-item]


def test_prompt_longer_than_window_is_scored_in_windows_not_truncated(detector_extractor: Any) -> None:
    filler = "The weather was mild and the streets were quiet that day. " * 60
    n_tokens = len(detector_extractor.tokenizer(filler).input_ids)
    assert n_tokens > detector_extractor.max_prompt_tokens
    features = detector_extractor.extract([filler, "short prompt"])
    assert features.offsets[1] == n_tokens  # every token featurised, across two windows


def test_a_prompt_that_begins_another_gets_the_states_it_gets_alone(detector_extractor: Any) -> None:
    """The extractor runs a question once inside its answered form (causal states of a prefix
    do not depend on what follows); the result must equal running the question on its own."""
    question = "Where was the novelist Elara Quenwick born?"
    answered = question + " She was born in Porto in 1961."
    together = detector_extractor.extract([question, answered, question])
    alone = detector_extractor.extract([question])
    n = int(alone.offsets[1])
    assert list(np.diff(together.offsets)) == [n, len(detector_extractor.tokenizer(answered).input_ids), n]
    for layer, rows in alone.tokens.items():
        np.testing.assert_allclose(together.tokens[layer][:n], rows, atol=1e-4)
        np.testing.assert_allclose(together.tokens[layer][-n:], rows, atol=1e-4)
        np.testing.assert_allclose(together.tokens[layer][n : 2 * n], rows, atol=1e-4)


def test_stored_state_holds_no_text_token_ids_or_order(
    detector_extractor: Any, tiny_entities: Any, two_fitted_sets: dict[str, Any], tmp_path: Path
) -> None:
    directory = tmp_path / "p0"
    two_fitted_sets["p0"].save(directory)
    person = tiny_entities.people[0]
    blob = (directory / "meta.json").read_bytes() + (directory / "state.npz").read_bytes()
    for secret in (person.name, person.birth_city, person.works[0], person.name.split()[-1]):
        assert secret.encode() not in blob
    with np.load(directory / "state.npz") as z:
        for key in z.files:
            assert z[key].dtype in (np.int8, np.float32, np.float64), (key, z[key].dtype)
        # token banks: int8, projected to fewer dims than the model width, rows not in text order
        bank = z["forget_8"]
        assert bank.dtype == np.int8 and bank.shape[1] == detector_extractor.dim < detector_extractor.hidden_size
    texts = person_texts(tiny_entities, 0, paraphrase=False)
    in_order = detector_extractor.extract(texts).tokens[8]
    stored = ForgetSetScorer.load(directory).banks.forget[8]
    # near-duplicate tokens collapse (repeated templates), rare ones stay; order is not kept
    assert 0 < stored.shape[0] <= in_order.shape[0]
    assert not np.allclose(stored, in_order[: len(stored)], atol=0.02)
    nearest = (stored @ in_order.T).max(axis=1)
    assert nearest.min() > 0.97  # each stored row is a (quantised) token of the texts, nothing else


def test_concurrent_add_remove_while_scoring(detector_extractor: Any, two_fitted_sets: dict[str, Any]) -> None:
    bank = DetectorBank(detector_extractor)
    bank.add("p0", two_fitted_sets["p0"])
    errors: list[BaseException] = []
    results: list[list[dict[str, float]]] = []

    def scorer() -> None:
        try:
            for _ in range(4):
                results.append(bank.score(["Who won the award?", "Where was she born?"]))
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    thread = threading.Thread(target=scorer)
    thread.start()
    for _ in range(6):
        bank.add("p1", two_fitted_sets["p1"])
        bank.remove("p1")
    thread.join()
    assert not errors, errors
    assert all("p0" in s for r in results for s in r)


def test_detector_device_auto_is_the_cpu_without_a_gpu_and_bad_names_are_refused() -> None:
    import torch

    from oblivio.detector.features import resolve_device

    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(ValueError, match="detector device must be"):
        resolve_device("tpu")


def test_stored_scorers_name_the_projection_without_its_secret_seed(
    detector_extractor: Any, two_fitted_sets: dict[str, Any], tmp_path: Path
) -> None:
    """The seed keeps stored banks from being inverted, so meta.json holds a digest of it; a set
    stored with the seed itself (before this) still loads and scores in the same space."""
    directory = tmp_path / "p0"
    two_fitted_sets["p0"].save(directory)
    meta = json.loads((directory / "meta.json").read_text())
    assert "projection_seed" not in meta["fingerprint"]
    meta["fingerprint"].pop("projection")
    meta["fingerprint"]["projection_seed"] = detector_extractor.projection_seed
    (directory / "meta.json").write_text(json.dumps(meta))
    old = ForgetSetScorer.load(directory)
    old.check_compatible(detector_extractor)
    assert old.fingerprint == detector_extractor.fingerprint()
