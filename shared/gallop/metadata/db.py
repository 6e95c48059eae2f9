"""Engines, sessions and migrations for the metadata store (SQLite or Postgres)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import URL, Connection, Engine, create_engine, event, make_url
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


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the API read while the ingest poller writes; foreign keys are off by default.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def default_engine() -> Engine:
    return engine_for(get_settings().sqlalchemy_url)


def migrate(engine: Engine, revision: str = "head", *, down: bool = False) -> None:
    """Bring the schema to a revision, the newest by default (idempotent): all of it or,
    if any step fails, none of it."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        try:
            if sqlite:
                _sqlite_migration_begins(connection)
            config.attributes["connection"] = connection
            (command.downgrade if down else command.upgrade)(config, revision)
            if sqlite:
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise RuntimeError(f"migrating left rows pointing nowhere: {broken[:5]}")
            connection.commit()
        except BaseException:
            connection.rollback()
            raise
        finally:
            if sqlite:
                _sqlite_migration_ends(connection)


def _sqlite_migration_begins(connection: Connection) -> None:
    """SQLite alters a table by copying it and dropping the old one, which it refuses while
    other rows point at it (a run's model): foreign keys are off while migrations run, and
    checked whole after. And the driver opens no transaction before DDL by itself, so a
    failed step would leave the steps before it: BEGIN is sent here, around them all."""
    connection.exec_driver_sql("PRAGMA foreign_keys=OFF")  # outside a transaction, or ignored
    connection.commit()
    driver = connection.connection.driver_connection
    driver.isolation_level = None  # type: ignore[union-attr]  # no BEGIN or COMMIT of its own
    connection.exec_driver_sql("BEGIN")


def _sqlite_migration_ends(connection: Connection) -> None:
    driver = connection.connection.driver_connection
    driver.isolation_level = ""  # type: ignore[union-attr]  # the driver's default again
    connection.exec_driver_sql("PRAGMA foreign_keys=ON")
    connection.commit()


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
