"""The loaded models of a warm container, and which one answers a request.

A container trusts its alias lookups (`aliases/{alias}.json` in the artifacts bucket)
for `ttl` seconds, then reads again; a model is loaded whole (session and manifest)
before requests can find it, so none is ever served half-loaded. S3 only: no database.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import orjson

from gallop.serving.model import LoadedModel
from gallop.serving.registry import ALIASES, ModelNotFound, alias_key, model_prefix
from gallop.storage import ObjectMissing, Store

MAX_LOADED = 4  # models kept warm per container (a champion, a challenger, spares)


class ModelCache:
    def __init__(
        self,
        artifacts: Callable[[], Store],
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._artifacts, self._ttl, self._clock = artifacts, ttl, clock
        self._aliases: dict[str, tuple[str, float]] = {}  # alias -> (model id, read at)
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
        self._aliases.pop(alias, None)

    def _alias(self, alias: str) -> str:
        found = self._aliases.get(alias)
        if found is None or self._clock() - found[1] > self._ttl:
            try:
                named = orjson.loads(self._artifacts().get_bytes(alias_key(alias)))
            except ObjectMissing:
                raise ModelNotFound(f"no model is {alias} yet: promote one") from None
            found = (str(named["model_id"]), self._clock())
            self._aliases[alias] = found
        return found[0]

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
