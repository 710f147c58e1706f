"""The TOFU-like generator: deterministic, well-formed splits, held-out paraphrases really held out."""

from __future__ import annotations

import pytest

from oblivio.eval.entity_data import FACTS, build_dataset


def test_same_seed_same_data_other_seed_other_people() -> None:
    a, b, c = build_dataset(seed=3, n_people=40), build_dataset(seed=3, n_people=40), build_dataset(seed=4, n_people=40)
    assert a == b
    assert [p.name for p in a.people] != [p.name for p in c.people]


def test_every_fact_has_fit_and_paraphrase_questions_with_wrong_answers() -> None:
    data = build_dataset(seed=0, n_people=20)
    assert len({p.name for p in data.people}) == 20
    person = data.people[5]
    items = data.items([person.pid])
    assert {q.fact for q in items} == {f.key for f in FACTS}
    fit_questions = {q.question for q in items if not q.paraphrase}
    for q in items:
        assert person.name in q.question and person.name in q.answer
        assert len(q.perturbed_answers) == 3 and q.answer not in q.perturbed_answers
        if q.paraphrase:
            assert q.question not in fit_questions
    # paraphrase templates are disjoint from fit templates for every fact
    for spec in FACTS:
        assert not set(spec.fit_templates) & set(spec.paraphrase_templates)


def test_forget_splits_are_nested_and_sized() -> None:
    data = build_dataset(seed=0, n_people=200)
    f1, f5, f10 = data.forget_split(1), data.forget_split(5), data.forget_split(10)
    assert (len(f1), len(f5), len(f10)) == (2, 10, 20)
    assert set(f1) <= set(f5) <= set(f10)
    assert set(data.retain_ids(f5)).isdisjoint(f5) and len(data.retain_ids(f5)) == 190


def test_sequential_requests_are_disjoint() -> None:
    data = build_dataset(seed=0, n_people=200)
    requests = data.sequential_requests(3, 1)
    flat = [pid for r in requests for pid in r]
    assert len(requests) == 3 and len(flat) == len(set(flat)) == 6
    with pytest.raises(ValueError, match="retain"):
        data.sequential_requests(30, 5)


def test_general_prompts_and_bad_arguments() -> None:
    data = build_dataset(seed=0, n_people=10)
    assert len(data.general) >= 50 and any(g.answer for g in data.general)
    with pytest.raises(ValueError):
        build_dataset(n_people=2)
    with pytest.raises(ValueError):
        data.forget_split(0)
