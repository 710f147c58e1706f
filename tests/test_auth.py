import os
import subprocess
import sys
from pathlib import Path

import pytest

from oblivio.gateway.api.auth import AuthError, Authenticator, Scope, scope_of_method
from oblivio.gateway.config import AuthConfig, ConfigError, load_config

ADMIN = "admin-token-0123456789abcdef"
CHAT = "chat-key-0123456789abcdef"


@pytest.fixture()
def authenticator(tmp_path: Path) -> Authenticator:
    tokens = tmp_path / "admin-tokens"
    tokens.write_text(f"# rotated 2026-11\n{ADMIN}\n\n")
    return Authenticator.from_config(AuthConfig(admin_tokens_file=tokens, chat_api_keys=(CHAT,)))


def test_admin_token_opens_admin_and_chat(authenticator: Authenticator) -> None:
    authenticator.check(Scope.ADMIN, f"Bearer {ADMIN}")
    authenticator.check(Scope.CHAT, f"bearer {ADMIN}")


def test_chat_key_is_denied_admin_with_permission_error(authenticator: Authenticator) -> None:
    authenticator.check(Scope.CHAT, f"Bearer {CHAT}")
    with pytest.raises(AuthError, match="not use the Admin API") as denied:
        authenticator.check(Scope.ADMIN, f"Bearer {CHAT}")
    assert not denied.value.unauthenticated


@pytest.mark.parametrize("header", [None, "", "Bearer", "Basic abc", f"Bearer {ADMIN}x", "Bearer wrong-token-000000000"])
def test_missing_malformed_or_wrong_credentials_are_unauthenticated(authenticator: Authenticator, header: str | None) -> None:
    with pytest.raises(AuthError) as denied:
        authenticator.check(Scope.ADMIN, header)
    assert denied.value.unauthenticated
    assert ADMIN not in str(denied.value)


def test_scopes_without_secrets_stay_open() -> None:
    open_auth = Authenticator.from_config(AuthConfig())
    open_auth.check(Scope.ADMIN, None)
    open_auth.check(Scope.CHAT, None)


def test_method_scopes() -> None:
    assert scope_of_method("/oblivio.v1.Admin/DeleteForgetSet") is Scope.ADMIN
    assert scope_of_method("/oblivio.v1.Chat/Complete") is Scope.CHAT
    assert scope_of_method("/grpc.health.v1.Health/Check") is None


def test_short_tokens_and_half_tls_config_are_rejected() -> None:
    with pytest.raises(ConfigError, match="'auth.admin_tokens'"):
        load_config(overrides={"auth.admin_tokens": ["short"]}, environ={})
    with pytest.raises(ConfigError, match="set together"):
        load_config(overrides={"auth.tls_cert_file": "/tmp/cert.pem"}, environ={})


def test_unreadable_token_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read token file"):
        Authenticator.from_config(AuthConfig(admin_tokens_file=tmp_path / "absent"))


def test_short_token_in_a_file_is_rejected_without_echoing_it(tmp_path: Path) -> None:
    tokens = tmp_path / "admin-tokens"
    tokens.write_text(f"# rotated 2026-11\n{ADMIN}\nx7Q\n")
    with pytest.raises(ConfigError, match=r"admin-tokens, line 3: tokens must be at least 16 characters") as failure:
        Authenticator.from_config(AuthConfig(admin_tokens_file=tokens))
    assert "x7Q" not in str(failure.value)
    assert ADMIN not in str(failure.value)


def test_serve_with_a_short_file_token_exits_with_one_clear_line(tmp_path: Path) -> None:
    """The token file is read before any model loads: exit 2, one line, no traceback, no token."""
    tokens = tmp_path / "admin-tokens"
    tokens.write_text("x7Q\n")
    env = {**os.environ, "OBLIVIO_HOME": str(tmp_path), "OBLIVIO_MODEL__PATH": str(tmp_path),
           "OBLIVIO_AUTH__ADMIN_TOKENS_FILE": str(tokens)}
    result = subprocess.run([sys.executable, "-m", "oblivio.gateway.cli", "serve"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"oblivio: token file {tokens}, line 1: tokens must be at least 16 characters"
    ]


def test_metrics_tokens_open_metrics_only() -> None:
    metrics_token = "metrics-token-0123456789abcdef"
    auth = Authenticator.from_config(AuthConfig(admin_tokens=(ADMIN,), chat_api_keys=(CHAT,), metrics_tokens=(metrics_token,)))
    auth.check(Scope.METRICS, f"Bearer {metrics_token}")
    auth.check(Scope.METRICS, f"Bearer {ADMIN}")
    for scope in (Scope.ADMIN, Scope.CHAT):
        with pytest.raises(AuthError, match="may not use") as denied:
            auth.check(scope, f"Bearer {metrics_token}")
        assert not denied.value.unauthenticated
    with pytest.raises(AuthError, match="may not use /metrics"):
        auth.check(Scope.METRICS, f"Bearer {CHAT}")
    # Metrics are closed as soon as admin tokens exist, even without metrics tokens.
    assert Authenticator.from_config(AuthConfig(admin_tokens=(ADMIN,))).required(Scope.METRICS)
    assert not Authenticator.from_config(AuthConfig(chat_api_keys=(CHAT,))).required(Scope.METRICS)
