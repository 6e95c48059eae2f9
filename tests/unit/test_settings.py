"""Settings: environment in, explicit configuration required where it matters."""

from __future__ import annotations

import pytest

from gallop.settings import InvalidSettings, MissingSettings, Settings


def test_iam_authentication_gives_every_connection_a_fresh_token(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN the deployed configuration: a proxy host, a user, IAM auth, no password anywhere
    from sqlalchemy import event, make_url, text

    from gallop.metadata.db import dispose_engine, engine_for

    target = make_url(postgres_url)
    for name, value in {
        "GALLOP_DATABASE_HOST": target.host,
        "GALLOP_DATABASE_USER": "postgres",
        "GALLOP_DATABASE_NAME": target.database,
        "GALLOP_DATABASE_IAM_AUTH": "true",
        "GALLOP_DATABASE_SSLMODE": "disable",
        "AWS_REGION": "eu-west-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    settings = Settings()
    assert settings.has_database and make_url(settings.sqlalchemy_url).password is None
    engine = engine_for(settings.sqlalchemy_url)
    passwords: list[str] = []
    event.listen(engine, "do_connect", lambda d, r, a, params: passwords.append(params["password"]))
    try:
        # WHEN two connections are opened THEN each got its own signed RDS token, and the
        # database answers (this server trusts local connections, so any password works).
        with engine.connect() as first, engine.connect() as second:
            assert first.execute(text("SELECT 1")).scalar() == 1
            assert second.execute(text("SELECT 1")).scalar() == 1
        assert len(passwords) == 2
        for token in passwords:
            assert token.startswith(f"{target.host}:5432/?Action=connect&DBUser=postgres")
            assert "X-Amz-Signature=" in token and "X-Amz-Expires=900" in token
    finally:
        dispose_engine(settings.sqlalchemy_url)


def test_an_explicit_url_wins_and_plain_postgres_urls_are_accepted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgres://u@db:5432/x")
    monkeypatch.setenv("GALLOP_DATABASE_IAM_AUTH", "true")
    monkeypatch.setenv("GALLOP_DATABASE_HOST", "proxy.internal")
    monkeypatch.setenv("GALLOP_DATABASE_USER", "gallop")
    assert Settings().sqlalchemy_url == "postgresql+psycopg://u@db:5432/x"


def test_require_names_every_missing_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "GALLOP_DATABASE_HOST", "GALLOP_API_KEYS"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(MissingSettings) as caught:
        Settings().require_for("api")
    assert str(caught.value) == (
        "gallop is not configured: set DATABASE_URL (or GALLOP_DATABASE_HOST, "
        "GALLOP_DATABASE_USER and GALLOP_DATABASE_IAM_AUTH=true), "
        "GALLOP_API_KEYS (or GALLOP_API_KEY_SOURCE=gateway)"
    )


def test_the_monitor_needs_the_topic_and_renewal_machine_only_when_deployed() -> None:
    local = Settings(database_url="sqlite:///x.db", data_bucket="d", artifacts_bucket="a")
    assert local.require_for("monitor") is local  # logs, and keeps approvals in the database
    deployed = local.model_copy(
        update={
            "training_launcher": "stepfunctions",
            "training_state_machine_arn": "arn:aws:states:us-east-1:1:stateMachine:t",
        }
    )
    with pytest.raises(MissingSettings) as caught:
        deployed.require_for("monitor")
    assert "GALLOP_ALARM_TOPIC_ARN" in str(caught.value)
    assert "GALLOP_RENEWAL_STATE_MACHINE_ARN" in str(caught.value)


def test_api_keys_have_names_and_roles_and_a_bare_key_every_role() -> None:
    keys = Settings(api_keys="ci:writer:s-ci, boss:reader+approver:s:b ,old-secret").api_key_entries
    assert [(k.name, sorted(k.roles), k.secret) for k in keys] == [
        ("ci", ["reader", "writer"], "s-ci"),  # every key may read
        ("boss", ["approver", "reader"], "s:b"),  # the secret is what follows the roles
        ("key-3", ["approver", "reader", "writer"], "old-secret"),  # as before roles
    ]
    assert "s-ci" not in repr(keys)


@pytest.mark.parametrize(
    ("api_keys", "message"),
    [
        ("ci:admin:s-1", "key 'ci' has unknown role 'admin' (roles: reader, writer, approver)"),
        ("ci:reader+:s-1", "key 'ci' has unknown role ''"),
        ("ci::s-1", "key 'ci' names no role (roles: reader, writer, approver)"),
        (":writer:s-1", "entry 1 needs a name"),
        ("s-0,has space:writer:s-1", "entry 2 needs a name"),
        ("ci:writer:s-1,ci:reader:s-2", "two keys are named 'ci'"),
        ("key-2:reader:s-1,s-2", "two keys are named 'key-2'"),
        ("ci:writer:s-1,ro:reader:s-1", "keys 'ci' and 'ro' have the same secret"),
        ("ci:writer:", "key 'ci' has no secret"),
        ("ci:s-1", "entry 1 is neither a bare key nor name:role+role:secret"),
    ],
)
def test_a_bad_api_keys_entry_fails_at_start_naming_it_not_its_secret(
    api_keys: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GALLOP_API_KEYS", api_keys)
    with pytest.raises(InvalidSettings) as caught:
        Settings()
    assert str(caught.value).startswith(f"GALLOP_API_KEYS: {message}")
    assert "s-1" not in str(caught.value)


def test_a_new_local_api_key_is_taken_as_a_value_on_a_command_line() -> None:
    import argparse

    from gallop.local.stack import new_api_key

    # token_urlsafe alone starts one key in 64 with "-", which argparse reads as an option
    keys = {new_api_key() for _ in range(2000)}
    assert len(keys) == 2000 and not any(key.startswith("-") for key in keys)
    parser = argparse.ArgumentParser()
    parser.add_argument("--api-key")
    assert all(parser.parse_args(["--api-key", key]).api_key == key for key in list(keys)[:200])
