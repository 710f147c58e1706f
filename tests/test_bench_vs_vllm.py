"""The pure logic of ``python -m oblivio.eval.bench_vs_vllm`` (no servers): pooling blocks into
stats, ratios against vLLM, the goals, the gate-decision check, the /metrics histogram maths and
the report. The benchmark itself starts two engines; it is run by hand (``--quick`` as a
pipeline check), not here.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest

from oblivio.eval.bench_vs_vllm import (
    SET_NAME,
    Goals,
    Reply,
    compare,
    decision_problems,
    explain_problems,
    histogram_delta,
    histogram_quantile,
    merge_histograms,
    overall_pass,
    parse_args,
    parse_decision_header,
    render_markdown,
    round_order,
    round_ratios,
    summarise,
    take_event,
    write_report,
)


def reply(latency: float, ttft: float = 0.1, tokens: int = 32, decision: str | None = None, error: str = "") -> Reply:
    return Reply(latency_s=latency, ttft_s=ttft, tokens=tokens, decision=decision, error=error)


def stats(server: str, kind: str, level: int, latency: float, ttft: float, wall: float):  # type: ignore[no-untyped-def]
    return summarise(server, kind, level, [([reply(latency, ttft)] * 4, wall)])


def test_summarise_pools_blocks_and_counts_only_generated_tokens() -> None:
    blocks = [([reply(1.0, 0.1, 32), reply(3.0, 0.3, 16)], 2.0), ([reply(2.0, 0.2, 32), reply(9.0, error="HTTP 503")], 2.0)]
    s = summarise("oblivio", "base", 8, blocks)
    assert (s.requests, s.errors) == (4, 1)
    assert s.p50_s == 2.0 and s.ttft_p50_s == 0.2  # the failed request is not timed
    assert s.tokens_per_s == pytest.approx(80 / 4.0)  # usage tokens over the summed walls
    assert s.mean_tokens == pytest.approx(80 / 3)


def test_base_traffic_goals_latency_throughput_and_ttft_at_one_stream() -> None:
    ok = compare(stats("oblivio", "base", 1, 1.05, 0.140, 10.5), stats("vllm", "base", 1, 1.0, 0.100, 10.0))
    assert ok.latency_ratio == pytest.approx(1.05) and ok.throughput_ratio == pytest.approx(10 / 10.5)
    assert ok.ttft_added_ms == pytest.approx(40.0)
    assert [c.goal for c in ok.checks] == ["p50 latency ratio", "throughput ratio", "TTFT added (ms, p50)"]
    assert all(c.passed for c in ok.checks)
    slow = compare(stats("oblivio", "base", 1, 1.2, 0.2, 12.0), stats("vllm", "base", 1, 1.0, 0.1, 10.0))
    assert [c.passed for c in slow.checks] == [False, False, False]


def test_forget_traffic_has_the_tighter_latency_goal_and_no_throughput_goal() -> None:
    c = compare(stats("oblivio", "forget", 8, 1.07, 0.5, 10.0), stats("vllm", "forget", 8, 1.0, 0.5, 10.0))
    assert [(k.goal, k.limit, k.passed) for k in c.checks] == [("p50 latency ratio", 1.05, False)]
    custom = compare(stats("oblivio", "forget", 8, 1.07, 0.5, 10.0), stats("vllm", "forget", 8, 1.0, 0.5, 10.0),
                     Goals(forget_latency_ratio_max=1.10, ttft_level=8))
    assert [k.passed for k in custom.checks] == [True, True]  # TTFT goal at the configured level


def test_an_unmeasured_value_fails_its_goal() -> None:
    empty = summarise("oblivio", "base", 1, [([reply(1.0, error="boom")], 1.0)])
    c = compare(empty, stats("vllm", "base", 1, 1.0, 0.1, 10.0))
    assert math.isnan(c.latency_ratio) and not any(k.passed for k in c.checks)
    assert not overall_pass([c], [], 0)


def test_decision_problems_name_every_wrong_decision() -> None:
    assert decision_problems("base", Counter({"base": 10})) == []
    assert decision_problems("forget", Counter({"adapter": 9})) == []
    lines = decision_problems("forget", Counter({"adapter": 7, "base": 2, None: 1}))
    assert lines == ["forget traffic: 1 of 10 oblivio responses served without a decision, not adapter",
                     "forget traffic: 2 of 10 oblivio responses served base, not adapter"]
    assert decision_problems("base", Counter({"refusal": 1, "base": 3})) == [
        "base traffic: 1 of 4 oblivio responses served refusal, not base"]


def test_overall_pass_needs_goals_decisions_and_no_errors() -> None:
    good = compare(stats("oblivio", "base", 8, 1.0, 0.1, 10.0), stats("vllm", "base", 8, 1.0, 0.1, 10.0))
    assert overall_pass([good], [], 0)
    assert not overall_pass([good], ["base traffic: ..."], 0)
    assert not overall_pass([good], [], 1)


def test_decision_header_and_explain_checks() -> None:
    assert parse_decision_header("adapter; policy_version=3") == "adapter"
    assert parse_decision_header("base") == "base"
    assert parse_decision_header(None) is None and parse_decision_header("") is None
    prompts = {"base": ["b1", "b2"], "forget": ["f1", "f2"]}
    applied = {"base": [[], [(SET_NAME, 1.0)]], "forget": [[(SET_NAME, 1.0)], [(SET_NAME, 0.5)]]}
    problems = explain_problems(applied, prompts)
    assert len(problems) == 2 and "'b2'" in problems[0] and "'f2'" in problems[1]


def test_gate_histogram_delta_merge_and_quantile() -> None:
    inf = float("inf")
    before = {"sum": 1.0, "count": 10.0, "buckets": {0.01: 5.0, 0.1: 10.0, inf: 10.0}}
    after = {"sum": 1.5, "count": 20.0, "buckets": {0.01: 5.0, 0.1: 20.0, inf: 20.0}}
    delta = histogram_delta(before, after)
    assert delta == {"sum": 0.5, "count": 10.0, "buckets": {0.01: 0.0, 0.1: 10.0, inf: 10.0}}
    assert histogram_quantile(0.5, delta) == pytest.approx(0.055)  # linear inside (0.01, 0.1]
    merged = merge_histograms([delta, None, delta])
    assert merged is not None and merged["count"] == 20.0 and merged["buckets"][0.1] == 20.0
    assert histogram_delta(None, after) is None and merge_histograms([None]) is None
    assert math.isnan(histogram_quantile(0.5, None))
    assert histogram_quantile(0.99, {"sum": 9.0, "count": 2.0, "buckets": {1.0: 1.0, inf: 2.0}}) == 1.0


def test_stream_events_give_ttft_text_decision_and_usage_tokens() -> None:
    r, pieces = Reply(latency_s=0.0, ttft_s=float("nan"), tokens=0), []
    role = '{"choices": [{"delta": {"role": "assistant", "content": ""}}], "oblivio": {"decision": "adapter"}}'
    assert not take_event("data: " + role, r, pieces, 0.0)
    assert math.isnan(r.ttft_s) and r.decision == "adapter"  # an empty delta is not the first token
    assert not take_event('data: {"choices": [{"delta": {"content": "Hi"}}]}', r, pieces, 0.0)
    assert r.ttft_s > 0
    assert take_event('data: {"choices": [], "usage": {"completion_tokens": 32}}', r, pieces, 0.0)
    assert not take_event("data: [DONE]", r, pieces, 0.0) and not take_event(": keep-alive", r, pieces, 0.0)
    assert (r.tokens, "".join(pieces), r.error) == (32, "Hi", "")
    take_event('data: {"error": {"message": "boom"}}', r, pieces, 0.0)
    assert "boom" in r.error


def test_rounds_alternate_which_server_goes_first_and_each_round_has_its_ratio() -> None:
    assert round_order(0) == ("vllm", "oblivio") and round_order(1) == ("oblivio", "vllm")
    oblivio = [([reply(1.1)], 1.0), ([reply(0.9)], 1.0)]
    vllm = [([reply(1.0)], 1.0), ([reply(1.0)], 1.0)]
    assert round_ratios(oblivio, vllm) == pytest.approx([1.1, 0.9])


def test_quick_defaults_and_explicit_options() -> None:
    quick = parse_args(["--quick"])
    assert (quick.levels, quick.rounds, quick.out) == ([1, 8], 1, None)
    full = parse_args(["--levels", "1", "32", "--rounds", "5"])
    assert (full.levels, full.rounds, full.min_requests) == ([1, 32], 5, 16)
    assert full.command == "python -m oblivio.eval.bench_vs_vllm --levels 1 32 --rounds 5"
    with pytest.raises(SystemExit):
        parse_args(["--levels", "0"])


def synthetic_result() -> dict:  # type: ignore[type-arg]
    from dataclasses import asdict

    comps, rows = [], []
    for kind in ("base", "forget"):
        for level in (1, 8):
            o, v = stats("oblivio", kind, level, 1.02, 0.13, 10.0), stats("vllm", kind, level, 1.0, 0.1, 10.0)
            comps.append(asdict(compare(o, v)))
            rows += [asdict(o), asdict(v)]
    return {
        "setup": {"model": "/m/SmolLM2", "max_tokens": 32, "max_model_len": 2048, "max_num_seqs": 8, "max_loras": 2,
                  "max_lora_rank": 8, "kv_cache_gib": 1, "memory_share": 0.1, "on_cpu": True, "training_steps": 2,
                  "adapter_rank": 8, "vllm_with_oblivio_lora_ops": False, "rounds": 1, "min_requests": 4,
                  "vllm_command": "python -m vllm.entrypoints.openai.api_server ..."},
        "analysis": {"stats": rows, "comparisons": comps, "decision_counts": {"base": {"base": 4}, "forget": {"base": 1}},
                     "round_latency_ratios": {"base 1": [1.01, 1.03]},
                     "decision_problems": decision_problems("forget", Counter({"base": 1})), "errors": 0,
                     "error_examples": [], "gate_metric": {"base 1": {"mean_ms": 20.0, "p50_ms_estimate": 18.0, "requests": 4}},
                     "passed": False},
        "registration": {"registration_s": {"enforcing": 20.0, "live": 30.0}, "policy_version": 2, "explain_problems": []},
        "warm_up": {"same_answers": {"base": "8/8", "forget": "20/20"}, "errors": []},
        "goals": asdict(Goals()), "machine": "test box", "load_average": {"start": (1.0, 1.0, 1.0), "end": (2.0, 2.0, 2.0)},
        "vllm_version": "0.32.0", "command": "python -m oblivio.eval.bench_vs_vllm --quick", "quick": True,
    }


def test_report_states_verdicts_problems_and_reproduction(tmp_path) -> None:
    result = synthetic_result()
    markdown = render_markdown(result)
    assert "Overall: **FAIL**" in markdown and "--quick pipeline check, not a result" in markdown
    assert "TTFT added (ms, p50) 30 vs 50: PASS" in markdown and "| 1.01, 1.03 |" in markdown
    assert "PROBLEM: forget traffic: 1 of 1 oblivio responses served base, not adapter" in markdown
    assert "`python -m oblivio.eval.bench_vs_vllm --quick`" in markdown and "vLLM 0.32.0" in markdown
    write_report(result, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"report.md", "results.json", "ratios.png"}
    assert (tmp_path / "ratios.png").read_bytes()[:4] == b"\x89PNG"
