"""The loaded models of a warm container, and which one answers a request.

A container trusts its alias lookups (`aliases/{alias}.json` in the artifacts bucket),
and the online snapshot pointers race cards are completed from, for `ttl` seconds, then
reads again; a model is loaded whole (session and manifest)
before requests can find it, so none is ever served half-loaded. S3 only: no database.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

import orjson

from gallop.features.pointer import Pointer, read_pointer
from gallop.layout import alias_key
from gallop.serving.model import LoadedModel
from gallop.serving.registry import ALIASES, ModelNotFound, ModelUnreadable, model_prefix
from gallop.storage import ObjectMissing, Store

MAX_LOADED = 4  # models kept warm per container (a champion, a challenger, spares)
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Trusted(Generic[K, V]):
    """What S3 said of a key, trusted for `ttl` seconds, then read again. A read that
    raises is not kept: the next request reads again."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl, self._clock = ttl, clock
        self._read: dict[K, tuple[V, float]] = {}  # key -> (value, read at)
        self._lock = threading.Lock()

    def get(self, key: K, read: Callable[[], V]) -> V:
        found = self._read.get(key)
        if found is None or self._clock() - found[1] > self._ttl:
            found = (read(), self._clock())
            with self._lock:
                self._read[key] = found
        return found[0]

    def forget(self, key: K) -> None:
        self._read.pop(key, None)


class PointerCache:
    """Online snapshot pointers (gallop.features.pointer) as a warm container knows them:
    each read at most once per `ttl` seconds (a missing one too: no pointer yet is an
    answer)."""

    def __init__(
        self,
        store: Callable[[], Store],
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._pointers: Trusted[tuple[str, str], Pointer | None] = Trusted(ttl, clock)

    def get(self, dataset: str, spec_hash: str) -> Pointer | None:
        """What the pointer names; None when none is published yet."""
        return self._pointers.get(
            (dataset, spec_hash), lambda: read_pointer(self._store(), dataset, spec_hash)
        )


class ModelCache:
    def __init__(
        self,
        artifacts: Callable[[], Store],
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._artifacts = artifacts
        self._aliases: Trusted[str, str] = Trusted(ttl, clock)  # alias -> model id
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    def resolve(self, name: Any) -> LoadedModel:
        if not isinstance(name, str) or not name:
            raise ModelNotFound("'model' must be an alias (champion, challenger) or a model id")
        model_id = self._alias(name) if name in ALIASES else name
        model = self._models.get(model_id)
        return model if model is not None else self._load(model_id)

    def forget(self, alias: str) -> None:
        """Read the alias again on the next request (a promotion made in this process)."""
        self._aliases.forget(alias)

    def _alias(self, alias: str) -> str:
        return self._aliases.get(alias, lambda: self._read_alias(alias))

    def _read_alias(self, alias: str) -> str:
        try:
            named = orjson.loads(self._artifacts().get_bytes(alias_key(alias)))
            model_id = named["model_id"]
        except ObjectMissing:
            raise ModelNotFound(f"no model is {alias} yet: promote one") from None
        except (orjson.JSONDecodeError, TypeError, KeyError):
            model_id = None
        if not isinstance(model_id, str):
            raise ModelUnreadable(
                f"{alias_key(alias)} names no model (it is not what promoting writes): "
                f"promote a model to {alias} again"
            )
        return model_id

    def _load(self, model_id: str) -> LoadedModel:
        prefix, store = model_prefix(model_id), self._artifacts()
        try:
            loaded = LoadedModel.from_files(model_id, lambda name: store.get_bytes(prefix + name))
        except ObjectMissing:
            raise ModelNotFound(f"no model {model_id!r}") from None
        with self._lock:  # the finished model goes in whole, in one assignment
            if len(self._models) >= MAX_LOADED:
                self._models.pop(next(iter(self._models)))
            self._models[model_id] = loaded
        return loaded
