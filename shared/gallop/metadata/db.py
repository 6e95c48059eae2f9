"""Engines, sessions and migrations for the metadata store (SQLite or Postgres)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import URL, Engine, create_engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker

from gallop.settings import IAM_AUTH_QUERY, get_settings

MIGRATIONS = Path(__file__).parent / "migrations"


_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def engine_for(url: str) -> Engine:
    """One engine (and connection pool) per database URL, shared by the process."""
    with _engines_lock:
        if url not in _engines:
            _engines[url] = _create_engine(url)
        return _engines[url]


def dispose_engine(url: str) -> None:
    """Close the pooled connections of a URL (before its SQLite file is removed)."""
    with _engines_lock:
        engine = _engines.pop(url, None)
    if engine is not None:
        engine.dispose()


def _create_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    parsed = make_url(url)
    region = parsed.query.get(IAM_AUTH_QUERY)
    if region:
        parsed = parsed.difference_update_query([IAM_AUTH_QUERY])
    # Fail in seconds, not at the function's timeout, when the database cannot be reached.
    engine = create_engine(parsed, pool_pre_ping=True, connect_args={"connect_timeout": 10})
    if region:
        event.listen(engine, "do_connect", _iam_token(parsed, str(region)))
    return engine


def _iam_token(url: URL, region: str) -> Callable[..., None]:
    """A new connection's password: an IAM auth token for RDS Proxy, valid 15 minutes."""
    import boto3

    rds = boto3.client("rds", region_name=region)

    def add_token(dialect: object, record: object, cargs: object, cparams: dict) -> None:
        cparams["password"] = rds.generate_db_auth_token(
            DBHostname=url.host, Port=url.port or 5432, DBUsername=url.username, Region=region
        )

    return add_token


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    # WAL lets the API read while the ingest poller writes; foreign keys are off by default.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def default_engine() -> Engine:
    return engine_for(get_settings().sqlalchemy_url)


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest migration (idempotent)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


@contextmanager
def session_scope(engine: Engine | None = None) -> Iterator[Session]:
    """One unit of work: committed when the block ends, rolled back if it raises."""
    factory = sessionmaker(bind=engine or default_engine(), expire_on_commit=False)
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
