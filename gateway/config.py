"""One typed configuration for the whole server, merged from file, environment and flags.

Precedence (lowest to highest): built-in defaults, a TOML file, ``OBLIVIO_*`` environment
variables (``__`` separates nested fields, e.g. ``OBLIVIO_SERVER__GRPC_PORT=50052``), then
explicit overrides from the command line. Validation happens once, at start, so a typo fails
loudly with the offending field's dotted name instead of surfacing mid-request.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_origin
from urllib.parse import parse_qs, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from oblivio.adapters.limits import (
    DEFAULT_MAX_EXAMPLE_CHARS,
    DEFAULT_MAX_EXAMPLES,
    DEFAULT_MAX_TOTAL_CHARS,
    DEFAULT_MAX_TOTAL_TOKENS,
    MAX_TEXT_CHARS,
)
from oblivio.adapters.training_settings import TrainingSettings

DEFAULT_MODEL_DIRNAME = "SmolLM2-135M-Instruct"
ENV_PREFIX = "OBLIVIO_"
# Set by the vLLM backend for the engine processes it starts (``backends.vllm_cpu_lora``); it
# carries a switch between processes, not configuration, so config loading skips it.
VLLM_CPU_LORA_ENV = "OBLIVIO_VLLM_CPU_LORA"
_NOT_CONFIG_ENV = frozenset({"OBLIVIO_CONFIG", VLLM_CPU_LORA_ENV})
# Shortest accepted admin token / chat API key, inline or from a file: anything shorter can be
# guessed online, and a short "token" is usually a placeholder someone forgot to replace.
MIN_SECRET_CHARS = 16
# Fields whose values are secrets: error messages never print them (nor anything that holds them).
# ``url`` too: the registry refuses a password in its URL, but the refusal must not print it.
SECRET_FIELDS = frozenset({"admin_tokens", "chat_api_keys", "metrics_tokens", "projection_seed", "password", "url"})
REDACTED = "<redacted>"
# How pydantic names an unknown field: in a model section, and in a dataclass one (``training``).
UNKNOWN_FIELD_ERRORS = frozenset({"extra_forbidden", "unexpected_keyword_argument"})


class ConfigError(ValueError):
    """Raised when configuration cannot be loaded; the message names the offending field."""


def oblivio_home(environ: Mapping[str, str] | None = None) -> Path:
    """Root of everything oblivio writes: ``$OBLIVIO_HOME`` or ``~/.cache/oblivio``."""
    env = os.environ if environ is None else environ
    return Path(env.get("OBLIVIO_HOME") or Path.home() / ".cache" / "oblivio").expanduser()


def default_model_path(environ: Mapping[str, str] | None = None) -> Path:
    """Where ``oblivio model fetch`` puts the built-in default model."""
    return oblivio_home(environ) / "models" / DEFAULT_MODEL_DIRNAME


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    path: Path | None = Field(
        default=None,
        description="Local Hugging Face model folder; empty means the fetched default model.",
    )
    served_name: str = Field(default="oblivio-default", min_length=1)
    max_model_len: int = Field(default=2048, ge=64)


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    grpc_port: int = Field(default=50051, ge=0, le=65535)
    http_port: int = Field(default=8000, ge=0, le=65535)
    max_concurrent_requests: int = Field(
        default=64, ge=1,
        description="concurrent chat calls per front door: gRPC Chat (more get RESOURCE_EXHAUSTED) and HTTP "
                    "chat completions (more get 503); health, Admin and metrics never count",
    )
    max_request_bytes: int = Field(
        default=4 * 1024 * 1024, ge=1024, description="largest HTTP request body (gRPC has its own 4 MiB bound)"
    )
    shutdown_grace_s: float = Field(default=30.0, ge=0)


class EngineConfig(_Section):
    backend: Literal["vllm", "reference"] = "vllm"
    max_loras: int = Field(default=2, ge=1)
    max_cpu_loras: int = Field(default=16, ge=1)
    max_lora_rank: int = Field(default=32, ge=1)
    memory_share: float = Field(
        default=0.1,
        gt=0,
        le=0.95,
        description="vLLM gpu_memory_utilization; on CPU it is the share of host memory reserved.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description="serving precision; auto = the precision adapters are trained in (float32), never vLLM's "
                    "own pick, which downcasts fp32 to bfloat16 (oblivio.adapters.precision)",
    )
    max_num_seqs: int = Field(default=32, ge=1)

    @model_validator(mode="after")
    def _cpu_cache_holds_batch(self) -> "EngineConfig":
        if self.max_cpu_loras < self.max_loras:
            raise ValueError("max_cpu_loras must be >= max_loras")
        return self


class DetectorConfig(_Section):
    layers: tuple[int, ...] = Field(default=(4, 6, 8, 10, 12), min_length=1)
    max_prompt_tokens: int = Field(default=512, ge=8)
    threads: int = Field(default=1, ge=1, description="torch intra-op threads (process-wide)")
    device: str = Field(
        default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$",
        description="where chat scoring's forward runs: auto = a CUDA GPU when there is one, else the CPU",
    )
    fit_threads: int = Field(
        default=1, ge=1,
        description="torch threads of the child process that fits a registered set's detector (chat scoring "
                    "never waits for it, but it shares the host's cores)",
    )
    projection_seed: int = Field(
        default=0,
        ge=0,
        description=(
            "Seed of the random projection applied to stored detector features. Set a secret value "
            "per deployment (e.g. OBLIVIO_DETECTOR__PROJECTION_SEED from a secret): an attacker who "
            "knows it recovers far more of the forgotten tokens (see detector/README.md). Changing "
            "it makes earlier fitted sets incompatible."
        ),
    )

    @field_validator("layers")
    @classmethod
    def _layers_sorted_unique(cls, layers: tuple[int, ...]) -> tuple[int, ...]:
        if any(layer < 1 for layer in layers):
            raise ValueError("layer indices must be >= 1 (0 is the embedding output)")
        return tuple(sorted(set(layers)))


class GateConfig(_Section):
    default_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    scale_grid: tuple[float, ...] = Field(default=(0.25, 0.5, 0.75, 1.0), min_length=1)
    on_detector_error: Literal["fail_closed", "fail_open"] = "fail_closed"

    @field_validator("scale_grid")
    @classmethod
    def _grid_positive_sorted(cls, grid: tuple[float, ...]) -> tuple[float, ...]:
        if any(s <= 0 or s > 4 for s in grid):
            raise ValueError("scales must lie in (0, 4]")
        return tuple(sorted(set(grid)))


class RegistrationConfig(_Section):
    """Bounds on one forget-set registration; a set over any of them is refused with
    INVALID_ARGUMENT naming the bound and the example. The detector fit's memory grows with a
    set's characters (roughly 3 GB per 100,000), so these bound it; TOFU forget10 (400 QA pairs,
    103k characters, longest pair 619) fits well within the defaults."""

    max_examples: int = Field(default=DEFAULT_MAX_EXAMPLES, ge=2, description="examples per set")
    max_example_chars: int = Field(
        default=DEFAULT_MAX_EXAMPLE_CHARS, ge=1, le=MAX_TEXT_CHARS,
        description="characters of one example (question, answer and text together)",
    )
    max_total_chars: int = Field(default=DEFAULT_MAX_TOTAL_CHARS, ge=1, description="characters of a whole set")
    max_total_tokens: int = Field(
        default=DEFAULT_MAX_TOTAL_TOKENS, ge=1,
        description="tokens of the texts the detector is fitted on (questions, question + answer, texts); "
                    "TOFU forget10 is 28.9k",
    )


class AuthConfig(_Section):
    """Credentials: the Admin API always needs one once any admin token is configured; chat
    needs an API key only when keys are configured; HTTP ``/metrics`` needs an admin or metrics
    token once either is configured (a metrics token opens nothing else, so a Prometheus scraper
    does not hold an admin credential). Files hold one secret per line so they can be mounted
    from a Kubernetes Secret and rotated without touching the config."""

    admin_tokens: tuple[str, ...] = ()
    admin_tokens_file: Path | None = None
    chat_api_keys: tuple[str, ...] = ()
    chat_api_keys_file: Path | None = None
    metrics_tokens: tuple[str, ...] = ()
    metrics_tokens_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = Field(
        default=None, description="CA bundle for client certificates; setting it turns on mTLS for gRPC."
    )

    @field_validator("admin_tokens", "chat_api_keys", "metrics_tokens")
    @classmethod
    def _tokens_long_enough(cls, tokens: tuple[str, ...]) -> tuple[str, ...]:
        if any(len(token) < MIN_SECRET_CHARS for token in tokens):
            raise ValueError(f"tokens must be at least {MIN_SECRET_CHARS} characters")
        return tokens

    @model_validator(mode="after")
    def _tls_pairs(self) -> "AuthConfig":
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file must be set together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("mTLS (tls_client_ca_file) needs tls_cert_file and tls_key_file")
        return self


class RecoveryConfig(_Section):
    """Explicit operator overrides for broken stored state. Both default to failing closed: a
    trusted server never serves forgotten data, and never deletes stored artifacts, because its
    own state is broken."""

    serve_unenforced_sets: bool = Field(
        default=False,
        description=(
            "Serve chat while a registered forget set cannot be enforced (its detector failed to load); "
            "prompts about it then get the base model. Default: chat is refused (UNAVAILABLE / 503) and "
            "readiness is NOT_SERVING until the set is restored or deleted."
        ),
    )
    discard_unregistered_artifacts: bool = Field(
        default=False,
        description=(
            "Start even though the registry (registry.db, or the registry.url database) is missing or empty "
            "while the artifact store holds forget sets, and delete those sets' artifacts. Default: refuse to "
            "start (restore the registry instead)."
        ),
    )


class RegistryConfig(_Section):
    """Where the forget-set registry lives. Empty ``url``: the embedded SQLite file
    (``registry.db`` in the artifact directory), for replicas on one machine. A
    ``postgresql://user@host:5432/database`` URL: a PostgreSQL database, which replicas on
    several nodes share. The password never goes in the URL (URLs end up in logs and process
    listings): ``password`` (e.g. ``OBLIVIO_REGISTRY__PASSWORD``), ``password_file`` (a mounted
    Secret), or libpq's own ``PGPASSWORD`` / ``~/.pgpass``."""

    url: str = Field(
        default="",
        description="empty: SQLite in the artifact directory; postgresql://user@host:port/database[?sslmode=...]",
    )
    password: str | None = None
    password_file: Path | None = Field(default=None, description="first line is the database password")
    connect_timeout_s: float = Field(default=10.0, gt=0)

    @field_validator("url")
    @classmethod
    def _postgres_url_without_password(cls, url: str) -> str:
        if not url:
            return url
        parts = urlsplit(url)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError("must be empty (SQLite) or a postgresql:// URL")
        if parts.password is not None or "password" in parse_qs(parts.query):
            raise ValueError("must not contain the password; use registry.password_file or OBLIVIO_REGISTRY__PASSWORD")
        return url

    @model_validator(mode="after")
    def _one_password_source(self) -> "RegistryConfig":
        if self.password is not None and self.password_file is not None:
            raise ValueError("set registry.password or registry.password_file, not both")
        if (self.password is not None or self.password_file is not None) and not self.url:
            raise ValueError("a registry password needs a postgresql:// registry.url")
        return self


class OblivioConfig(_Section):
    home: Path = Field(default_factory=oblivio_home)
    artifacts_dir: Path | None = Field(
        default=None, description="Adapters, detector state and registry; default $home/artifacts."
    )
    model: ModelConfig = Field(default_factory=ModelConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    detector: DetectorConfig = Field(default_factory=DetectorConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    training: TrainingSettings = Field(default_factory=TrainingSettings)  # validated by its __post_init__
    registration: RegistrationConfig = Field(default_factory=RegistrationConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    recovery: RecoveryConfig = Field(default_factory=RecoveryConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)

    @property
    def model_path(self) -> Path:
        return self.model.path or self.home / "models" / DEFAULT_MODEL_DIRNAME

    @property
    def artifacts_path(self) -> Path:
        return self.artifacts_dir or self.home / "artifacts"


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config field '{dotted}': '{part}' is not a section")
        node = child
    node[leaf] = value


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX) or key in _NOT_CONFIG_ENV:
            continue
        dotted = key[len(ENV_PREFIX):].lower().replace("__", ".")
        _set_dotted(tree, dotted, _parse_env_value(value, as_list=_is_tuple_field(dotted)))
    return tree


def _is_tuple_field(dotted: str) -> bool:
    """Whether ``dotted`` names a tuple field of :class:`OblivioConfig` (unknown names: no)."""
    model: type[BaseModel] = OblivioConfig
    *parents, leaf = dotted.split(".")
    for part in parents:
        field = model.model_fields.get(part)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return False
        model = field.annotation
    field = model.model_fields.get(leaf)
    return field is not None and get_origin(field.annotation) is tuple


def _parse_env_value(raw: str, *, as_list: bool) -> Any:
    """Comma-separated values become lists so tuple fields can be set from the environment; a
    tuple field's single value is a one-item list (one admin token is a valid setting)."""
    if as_list or "," in raw:
        return [part.strip() for part in raw.split(",")]
    return raw


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _redact(value: Any) -> Any:
    """``value`` with every secret field inside it (at any depth) replaced by ``REDACTED``."""
    if isinstance(value, Mapping):
        return {key: REDACTED if key in SECRET_FIELDS else _redact(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact(item) for item in value]
    return value


def _shown_input(item: Mapping[str, Any]) -> str:
    """What an error message may show of the offending input.

    Secret fields show nothing, and neither do unknown fields: a misspelt secret name
    (``OBLIVIO_AUTH__ADMIN_TOKEN``) still carries the secret. Section-level errors show the
    section with its secrets redacted.
    """
    if item["type"] in UNKNOWN_FIELD_ERRORS:
        return ""
    if any(part in SECRET_FIELDS for part in item["loc"]):
        return f" (got {REDACTED})"
    return f" (got {_redact(item.get('input'))!r})"


def _format_validation_error(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "<root>"
        lines.append(f"config field '{field}': {item['msg']}{_shown_input(item)}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_config(
    file: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> OblivioConfig:
    """Build the validated config; ``overrides`` maps dotted field names to values."""
    env = os.environ if environ is None else environ
    file = file or (Path(env["OBLIVIO_CONFIG"]) if env.get("OBLIVIO_CONFIG") else None)
    tree: dict[str, Any] = {}
    if file is not None:
        try:
            tree = tomllib.loads(Path(file).read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {file}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {file} is not valid TOML: {exc}") from exc
    tree = _merge(tree, _env_overrides(env))
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(tree, dotted, value)
    tree.setdefault("home", str(oblivio_home(env)))
    try:
        return OblivioConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc)) from None
