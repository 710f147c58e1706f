from pathlib import Path

import pytest

from oblivio.gateway.auth import AuthError, Authenticator, Scope, scope_of_method
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
