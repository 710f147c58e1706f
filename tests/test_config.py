from pathlib import Path

import pytest

from oblivio.gateway.config import ConfigError, load_config


def test_defaults_derive_paths_from_home(tmp_path: Path) -> None:
    config = load_config(environ={"OBLIVIO_HOME": str(tmp_path)})
    assert config.model_path == tmp_path / "models" / "SmolLM2-135M-Instruct"
    assert config.artifacts_path == tmp_path / "artifacts"
    assert config.server.grpc_port == 50051


def test_file_env_and_overrides_merge_in_precedence_order(tmp_path: Path) -> None:
    file = tmp_path / "oblivio.toml"
    file.write_text('[server]\ngrpc_port = 6000\nhttp_port = 6001\n[engine]\nmax_loras = 3\n')
    env = {"OBLIVIO_HOME": str(tmp_path), "OBLIVIO_SERVER__HTTP_PORT": "7001", "OBLIVIO_GATE__SCALE_GRID": "1.0,0.5"}
    config = load_config(file, {"engine.max_loras": 4}, environ=env)
    assert config.server.grpc_port == 6000
    assert config.server.http_port == 7001
    assert config.engine.max_loras == 4
    assert config.gate.scale_grid == (0.5, 1.0)


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"OBLIVIO_SERVER__GRPC_PORT": "70000"}, "server.grpc_port"),
        ({"OBLIVIO_ENGINE__MEMORY_SHARE": "-1"}, "engine.memory_share"),
        ({"OBLIVIO_GATE__DEFAULT_THRESHOLD": "1.5"}, "gate.default_threshold"),
        ({"OBLIVIO_ENGINE__BACKEND": "tensorrt"}, "engine.backend"),
        ({"OBLIVIO_SERVER__GRPC_PROT": "1"}, "server.grpc_prot"),
    ],
)
def test_invalid_values_name_the_field(env: dict[str, str], field: str) -> None:
    with pytest.raises(ConfigError, match=f"'{field}'"):
        load_config(environ=env)


def test_cross_field_rule_is_reported() -> None:
    with pytest.raises(ConfigError, match="max_cpu_loras must be >= max_loras"):
        load_config(overrides={"engine.max_loras": 8, "engine.max_cpu_loras": 2}, environ={})


def test_missing_or_broken_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml", environ={})
    broken = tmp_path / "broken.toml"
    broken.write_text("[server\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken, environ={})


ADMIN_TOKEN = "admin-token-0123456789abcdef"


def test_one_admin_token_from_the_environment_is_accepted() -> None:
    """A tuple field set from one environment value (no comma) is a one-item list, not an error."""
    config = load_config(environ={"OBLIVIO_AUTH__ADMIN_TOKENS": ADMIN_TOKEN})
    assert config.auth.admin_tokens == (ADMIN_TOKEN,)
    assert load_config(environ={"OBLIVIO_GATE__SCALE_GRID": "0.5"}).gate.scale_grid == (0.5,)


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"OBLIVIO_AUTH__ADMIN_TOKENS": f"{ADMIN_TOKEN},short-secret-x"}, "auth.admin_tokens"),
        ({"OBLIVIO_AUTH__CHAT_API_KEYS": "short-secret-x"}, "auth.chat_api_keys"),
        ({"OBLIVIO_DETECTOR__PROJECTION_SEED": "short-secret-x"}, "detector.projection_seed"),
        # A misspelt secret field still carries the secret.
        ({"OBLIVIO_AUTH__ADMIN_TOKEN": "short-secret-x"}, "auth.admin_token"),
        # A section-level rule reports the whole section, which holds the tokens.
        ({"OBLIVIO_AUTH__ADMIN_TOKENS": f"{ADMIN_TOKEN}short-secret-x", "OBLIVIO_AUTH__TLS_CERT_FILE": "/c.pem"}, "auth"),
    ],
    ids=["short-admin-token", "short-chat-key", "bad-seed", "misspelt-field", "section-rule"],
)
def test_config_errors_never_print_secrets(env: dict[str, str], field: str) -> None:
    with pytest.raises(ConfigError, match=f"'{field}'") as failure:
        load_config(environ=env)
    assert "short-secret-x" not in str(failure.value)
