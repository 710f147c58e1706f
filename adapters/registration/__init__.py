"""Live registration of forget sets: background jobs from "forget this" to a live adapter.

Per set: VALIDATING -> FITTING_DETECTOR -> ENFORCING -> TRAINING -> PUBLISHING -> LOADING -> LIVE
(or FAILED; DELETING on delete). The package is small steps behind one seam:

* ``ports`` -- what registration needs from the process it runs in (backend, gate, detector
  bank, metrics, enforcement), as Protocols the gateway's runtime satisfies;
* ``settings`` -- what the gateway passes in (paths, training, bounds, replica timing), so
  nothing here reads the gateway's configuration;
* ``validation`` -- the cheap checks a registration passes before it is accepted;
* ``jobs`` -- the job state machine: one task per set, its lease, its steps in order;
* ``steps`` -- the detector fit, the training and the adapter's publication;
* ``processes``, ``trainer_messages``, ``trainer_client`` -- the child processes the heavy
  steps run in, and the messages the trainer and its client share;
* ``live_sets`` -- what this process has loaded (hot-loading, restore, quarantine);
* ``replicas`` -- picking up what other replicas published or deleted;
* ``events`` and ``progress`` -- state changes as events, and as registry progress;
* ``stored_state`` -- the registry and artifact store checked against each other at start;
* ``pipeline`` -- :class:`~oblivio.adapters.registration.pipeline.RegistrationPipeline`, the
  public face that puts them together.

Design choices:

* **Enforce at once.** Validation and detector fitting (seconds) run as soon as a set arrives,
  outside the training queue. Once the detector is in the bank and the set known to the policy
  store, the gate refuses matched prompts (the adapter is not live yet), so "forget" takes
  effect before any training starts.
* **Heavy steps off the serving process.** The detector fit
  (``python -m oblivio.adapters.detector_fit``) and each training
  (``python -m oblivio.adapters.training``) are child processes at a lower CPU priority
  (``oblivio.adapters.child_process``): serving keeps its cores, its GIL, its memory and its
  detector lock (chat scoring never waits for a fit), and deleting a set or shutting down
  mid-step is a kill. Fits run one at a time, trainings too (FIFO).
* **Bounded input.** A set over the registration limits (examples, characters per example and
  in all: the fit's memory) is refused at registration (``oblivio.adapters.limits``).
* **Durable and resumable.** Every step is a registry transition; examples, checkpoints and the
  training output live in the job's folder. On ``start()`` LIVE sets are restored (detector
  into the bank, adapter into the backend) and unfinished jobs continue from their last step
  (training from its last checkpoint). Artifacts are published through the atomic
  ``ArtifactStore``, so a crash never leaves a half-written version visible.
* **Replicas.** Gateways scale horizontally over ONE shared artifact directory and ONE registry
  (the SQLite file in that directory, or a PostgreSQL database for replicas on several nodes).
  The replica that accepted a registration runs its job; every other replica polls the registry
  every ``sync_interval`` seconds and loads what was published elsewhere: a new detector
  version enters its bank (so its gate refuses matched prompts at once), a new adapter version
  is loaded into its backend once the set is LIVE, and a set deleted elsewhere is dropped.
  Propagation delay is therefore at most one interval.
* **One owner per job.** A job runs only on the replica holding its lease in the registry
  (taken with the registry row at registration, renewed every ``lease_s / 3`` seconds while the
  job runs, released when it ends or the replica shuts down). A replica that restarts, or any
  replica's registry poll, takes over an unfinished job only once its lease is free or expired
  (its owner died), so two replicas never train the same set; an owner that provably died on
  this host (its PID is gone, see ``oblivio.adapters.lease``) is taken over without waiting.
  An owner that loses its lease (it stalled past ``lease_s`` and another replica took the job,
  or the set was deleted elsewhere) stops its copy of the job.
* **Observable.** Every state change and training step is an event; ``watch()`` is an async
  subscription that starts with the current snapshot (used by WatchRegistration).

The package's ``__init__`` imports nothing: the trainer child imports ``trainer_messages``
without loading the pipeline.
"""
