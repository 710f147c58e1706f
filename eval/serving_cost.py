"""What unlearning costs at serving time, measured inside the continual run (issue 7, item 4).

Two numbers matter to an operator: how much slower a chat request is through the gateway than
straight to vLLM, and how the detector's cost grows with the number of forget sets. The first
comes from :mod:`oblivio.eval.bench_gateway` (its own vLLM engine, so it runs after the
evaluated server stopped); the second times the detector over the very sets this run
registered, read back from the server's artifact directory.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from oblivio.eval.bench_detector import scoring_latency


def gateway_overhead(model: Path, out_path: Path, log_path: Path) -> str:
    """Markdown table of gateway vs direct vLLM latency (written by bench_gateway, 1 and 8 streams)."""
    command = [sys.executable, "-m", "oblivio.eval.bench_gateway", "--model", str(model), "--out", str(out_path),
               "--concurrency", "1", "8"]
    print(f"serving cost: {' '.join(command[1:])}", flush=True)
    with log_path.open("w") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        return f"gateway benchmark failed (exit {done.returncode}); see `{log_path.name}`"
    return out_path.read_text()


def detector_latency(model: Path, artifacts_dir: Path, set_names: list[str], repeats: int) -> str:
    """Markdown table: scoring one prompt against 1..20 sets the size of this run's sets."""
    from oblivio.adapters.store import STORE_SUBDIR, ArtifactStore
    from oblivio.detector import ForgetSetScorer
    from oblivio.gateway.config import load_config
    from oblivio.gateway.serving.runtime import build_feature_extractor

    store = ArtifactStore(artifacts_dir / STORE_SUBDIR, create=False)
    extractor = build_feature_extractor(load_config(overrides={"model.path": str(model)}))
    templates = {}
    for name in set_names[:1]:  # all requests have the same size; one template is enough
        folder = store.current(name, "detector")
        if folder is not None:
            templates[name] = ForgetSetScorer.load(folder)
    rows = scoring_latency(extractor, templates, repeats)
    lines = ["| sets registered (copies of) | scoring one prompt, median ms | min ms |", "|---|---|---|"]
    for key, count, median, least in rows:
        label = "features only" if count == 0 else f"{count} ({key})"
        lines.append(f"| {label} | {median * 1000:.1f} | {least * 1000:.1f} |")
    return "\n".join(lines)
