"""The heavy steps of a registration job: fit the detector, train the adapter, publish it.

Why apart from the state machine (``jobs``): each step is what happens IN a state (files in
the job's folder, a child process, a store publication); ``jobs`` only decides which step
comes next. Fits run one at a time (each holds a model and the set's features), trainings too
(FIFO), each behind its lock.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import zlib
from dataclasses import replace
from pathlib import Path

from oblivio.adapters.detector_fit import extractor_settings
from oblivio.adapters.precision import PRECISION_FIELD, TRAINING_DTYPE
from oblivio.adapters.registration.live_sets import LiveSets, read_scorer
from oblivio.adapters.registration.ports import RegistrationRuntime
from oblivio.adapters.registration.processes import StepProcesses
from oblivio.adapters.registration.progress import FIT_SPAN, TRAINING_SPAN, JobProgress
from oblivio.adapters.registration.settings import RegistrationSettings
from oblivio.adapters.registration.trainer_client import run_trainer
from oblivio.adapters.registration.trainer_messages import TrainingSpec
from oblivio.adapters.registry import ForgetSetRecord, Registry, State
from oblivio.adapters.store import ArtifactStore, atomic_write_bytes

FIT_MODULE = "oblivio.adapters.detector_fit"
EXAMPLES_FILE = "examples.jsonl"
TRAINING_OUT = "out"  # the trainer's output folder in the job's folder


class JobSteps:
    """The steps of one process's jobs, over its store, registry and live sets."""

    def __init__(
        self, settings: RegistrationSettings, runtime: RegistrationRuntime, *, registry: Registry,
        store: ArtifactStore, jobs_dir: Path, live: LiveSets, progress: JobProgress, processes: StepProcesses,
    ) -> None:
        self.settings = settings
        self.runtime = runtime
        self.registry = registry
        self.store = store
        self.jobs_dir = jobs_dir
        self.live = live
        self.progress = progress
        self.processes = processes
        self.train_lock = asyncio.Lock()
        self.fit_lock = asyncio.Lock()

    def trained(self, job_id: str) -> bool:
        """Whether the job's training output is complete (a crash may have come before publishing)."""
        return (self.jobs_dir / job_id / TRAINING_OUT / "training_report.json").is_file()

    async def fit_detector(self, name: str, record: ForgetSetRecord) -> None:
        """Fit in a child process (see ``oblivio.adapters.detector_fit``), publish its folder,
        load it into the bank: from then on the gate refuses matched prompts."""
        self.progress.advance(name, State.FITTING_DETECTOR, "fitting the OOD detector")
        bank = self.runtime.detector
        if bank is None:
            self.progress.advance(name, State.ENFORCING,
                                  "no detector in this gateway: nothing is enforced until the adapter is live")
            return
        job_dir = self.jobs_dir / record.job_id
        out_dir = job_dir / "detector"
        spec_path = job_dir / "detector_spec.json"
        async with self.fit_lock:
            shutil.rmtree(out_dir, ignore_errors=True)
            spec = {
                "model_path": str(self.settings.model_path),
                "extractor": extractor_settings(bank.extractor),
                "threads": self.settings.fit_threads,
                "examples_path": str(job_dir / EXAMPLES_FILE),
                "name": name,
                "subjects": list(record.subjects),
                "out_dir": str(out_dir),
            }
            atomic_write_bytes(spec_path, json.dumps(spec).encode())
            await self.processes.run(
                name, record.job_id, FIT_MODULE, spec_path, threads=self.settings.fit_threads,
                state=State.FITTING_DETECTOR, span=FIT_SPAN, what="detector fit",
                describe=lambda message: (float(message["fraction"]), str(message["message"])),
            )
        published = await asyncio.to_thread(self.store.publish, name, "detector", out_dir)
        shutil.rmtree(out_dir, ignore_errors=True)
        spec_path.unlink(missing_ok=True)
        scorer = await read_scorer(published.path)
        self.registry.update_set(name, detector_version=published.version)
        self.live.add_detector(name, scorer, published.version)
        self.runtime.policy_store.register_set(name)
        self.progress.advance(name, State.ENFORCING, "detector live: matched prompts are refused until the adapter is live")

    def _priors(self, name: str) -> dict[str, Path]:
        """Every other set's published adapter: the new one is kept orthogonal to all of them."""
        priors = {}
        for other in self.registry.list():
            if other.name == name or other.state is State.DELETING:
                continue
            path = self.store.current(other.name, "adapter")
            if path is not None:
                priors[other.name] = path
        return priors

    async def train(self, name: str, job_id: str, record: ForgetSetRecord) -> None:
        """Train the set's adapter (queued behind other sets' trainings), resuming from its checkpoint."""
        job_dir = self.jobs_dir / job_id
        if record.state is not State.TRAINING:
            self.progress.advance(name, State.TRAINING, "waiting for the trainer", fraction=TRAINING_SPAN[0])
        async with self.train_lock:
            out_dir = job_dir / TRAINING_OUT
            shutil.rmtree(out_dir, ignore_errors=True)
            spec = TrainingSpec(
                model_path=self.settings.model_path,
                examples_path=job_dir / EXAMPLES_FILE,
                out_dir=out_dir,
                settings=replace(self.settings.training, method=record.method, seed=zlib.crc32(name.encode()) % 10_000),
                priors=self._priors(name),
                checkpoint_path=job_dir / "checkpoint.pt",
                subjects=tuple(record.subjects),
            )
            report = await run_trainer(self.processes, name, job_id, spec, job_dir / "spec.json")
        self.registry.set_job_report(job_id, report)
        self.registry.update_set(name, overlaps=report.get("overlap", {}))

    async def publish(self, name: str, job_id: str, record: ForgetSetRecord) -> None:
        """Publish the trained adapter to the store and drop the job's leftovers (the raw text
        too, unless the operator kept it)."""
        job_dir = self.jobs_dir / job_id
        report = self.registry.job(job_id).report
        strength = report.get("strength")  # npo/ihl: the calibrated strength baked into the weights
        self.progress.advance(name, State.PUBLISHING, "publishing the adapter" + (
            f" at strength {strength['factor']:g} ({strength['reason']})" if strength else ""))
        published = await asyncio.to_thread(
            self.store.publish, name, "adapter", job_dir / TRAINING_OUT,
            {"set": name, "job_id": job_id, "method": record.method, "overlap": report.get("overlap", {}),
             "strength": strength, PRECISION_FIELD: report.get(PRECISION_FIELD, TRAINING_DTYPE)},
        )
        await asyncio.to_thread(self.store.prune, name, "adapter", 2)
        self.registry.update_set(name, adapter_version=published.version)
        keep = self.registry.get(name).keep_data
        for leftover in (TRAINING_OUT, "checkpoint.pt", "spec.json") + (() if keep else (EXAMPLES_FILE,)):
            path = job_dir / leftover
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        if not keep:
            self.registry.update_set(name, data_retained=False)
        self.progress.advance(name, State.LOADING, f"loading adapter version {published.version} into the backend")

    async def load(self, name: str) -> None:
        """Hot-load the set's published adapter: the set is LIVE."""
        adapter_dir = self.store.current(name, "adapter")
        if adapter_dir is None:
            raise RuntimeError("no published adapter to load")
        await self.live.load_adapter(name, adapter_dir)
        self.progress.advance(name, State.LIVE, "adapter live: the gate now applies it to matched prompts")
