"""The loaded models of a warm container, and which one answers a request.

A request names a model by id, or by a dataset's alias: `{"dataset": "races", "model":
"champion"}` is answered by what the dataset's serving object (`aliases/{dataset}/
serving.json`, gallop.serving.registry writes it whole) names, under its traffic policy.
An alias without a dataset (old clients) is the one dataset's whose serving object names
that alias; the container lists `aliases/` to know. A container trusts what it read (the
serving objects, the listing, the online snapshot pointers race cards are completed
from) for `ttl` seconds, then reads again; a model is loaded whole (session and manifest)
before requests can find it, so none is ever served half-loaded. S3 only: no database.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from gallop.echo import clip
from gallop.features.pointer import Pointer, read_pointer
from gallop.layout import ALIASES_PREFIX, serving_key
from gallop.serving.model import LoadedModel
from gallop.serving.registry import (
    ALIASES,
    CHALLENGER,
    CHAMPION,
    ModelNotFound,
    ModelUnreadable,
    model_prefix,
)
from gallop.spec import NAME_PATTERN
from gallop.storage import ObjectMissing, Store
from gallop.trusted import Trusted

MAX_LOADED = 4  # models kept warm per container (a champion, a challenger, spares)
SHADOW, SPLIT = "shadow", "split"
MODES = (CHAMPION, SHADOW, SPLIT)


class TargetError(ValueError):
    """A request whose dataset and model do not name one model (422): a bare alias that
    more than one dataset has, or a model id of another dataset."""


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


@dataclass(frozen=True)
class Traffic:
    """A dataset's traffic policy: champion (the champion answers), shadow (the champion
    answers; the challenger also scores `shadow_share` of races off the reply path) or
    split (the challenger answers `challenger_share` of races, and the model that did not
    answer a race scores `shadow_share` of them off the reply path)."""

    mode: str = CHAMPION
    challenger_share: float = 0.0
    shadow_share: float = 0.0


@dataclass(frozen=True)
class Serving:
    """A dataset's serving object, as the registry writes it."""

    dataset: str
    champion: str | None
    challenger: str | None
    traffic: Traffic = field(default_factory=Traffic)

    @classmethod
    def parse(cls, raw: bytes, key: str) -> Serving:
        """ModelUnreadable naming the key when it is not what the registry writes."""
        try:
            found = orjson.loads(raw)
            traffic = found.get("traffic") or {}
            serving = cls(
                found["dataset"],
                found.get(CHAMPION),
                found.get(CHALLENGER),
                Traffic(
                    traffic.get("mode", CHAMPION),
                    float(traffic.get("challenger_share", 0.0)),
                    float(traffic.get("shadow_share", 0.0)),
                ),
            )
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError, KeyError):
            serving = None
        if serving is None or not serving._well_formed():
            raise ModelUnreadable(
                f"{key} is not what promoting writes: promote the dataset's champion again"
            )
        return serving

    def _well_formed(self) -> bool:
        t = self.traffic
        return (
            isinstance(self.dataset, str)
            and all(m is None or isinstance(m, str) for m in (self.champion, self.challenger))
            and t.mode in MODES
            and 0.0 <= t.challenger_share <= 1.0
            and 0.0 <= t.shadow_share <= 1.0
        )

    def named(self, alias: str) -> str | None:
        return self.champion if alias == CHAMPION else self.challenger

    @property
    def policy(self) -> Traffic:
        """The policy served: one that needs a challenger, without one, is champion."""
        if self.traffic.mode == CHAMPION or self.challenger is None or self.champion is None:
            return Traffic()
        return self.traffic


@dataclass(frozen=True)
class Target:
    """What a request's dataset and model name: the model asked for (the champion for
    "champion"), the alias it was asked by (None for a model id), and the dataset's
    serving object when asked by alias."""

    model: LoadedModel
    alias: str | None = None
    serving: Serving | None = None

    @property
    def policy(self) -> Traffic:
        """The policy this request is under: only a request for the champion is split or
        shadowed (one naming the challenger or a model id gets that model alone)."""
        if self.alias != CHAMPION or self.serving is None:
            return Traffic()
        return self.serving.policy


class ModelCache:
    def __init__(
        self,
        artifacts: Callable[[], Store],
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._artifacts = artifacts
        self._serving: Trusted[str, Serving | None] = Trusted(ttl, clock)  # None: no object
        self._holders: Trusted[str, tuple[str, ...]] = Trusted(ttl, clock)  # alias -> datasets
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    def target(self, name: Any, dataset: Any = None) -> Target:
        """The model a request's `model` and `dataset` name (ModelNotFound, ModelUnreadable,
        TargetError)."""
        if not isinstance(name, str) or not name:
            raise ModelNotFound("'model' must be an alias (champion, challenger) or a model id")
        if dataset is not None and (
            not isinstance(dataset, str) or not re.match(NAME_PATTERN, dataset)
        ):
            raise TargetError(
                f"'dataset' must be a dataset's name (lower-case letters, digits and '-'), "
                f"not {clip(dataset)!r}"
            )
        if name not in ALIASES:
            model = self.model(name)
            owner = model.manifest.get("dataset")
            if dataset is not None and owner != dataset:
                raise TargetError(
                    f"model {name} is of dataset {owner!r}, not {dataset!r}: name its own "
                    "dataset, or none"
                )
            return Target(model)
        if dataset is None:
            dataset = self._only_holder(name)
        serving = self._serving_of(dataset)
        model_id = serving.named(name) if serving else None
        if model_id is None:
            raise ModelNotFound(f"dataset {dataset!r} has no {name} yet: promote one")
        return Target(self.model(model_id), name, serving)

    def resolve(self, name: Any, dataset: Any = None) -> LoadedModel:
        """The model that answers a request for `name` (of `dataset`), split aside."""
        return self.target(name, dataset).model

    def model(self, model_id: str) -> LoadedModel:
        """A model by id, loaded on first use."""
        model = self._models.get(model_id)
        return model if model is not None else self._load(model_id)

    def forget(self, dataset: str) -> None:
        """Read the dataset's serving object (and which datasets hold an alias) again on
        the next request: a promotion made in this process."""
        self._serving.forget(dataset)
        self._holders.clear()

    def _serving_of(self, dataset: str) -> Serving | None:
        return self._serving.get(dataset, lambda: self._read_serving(dataset))

    def _read_serving(self, dataset: str) -> Serving | None:
        key = serving_key(dataset)
        try:
            return Serving.parse(self._artifacts().get_bytes(key), key)
        except ObjectMissing:
            return None  # no dataset by that name, or none promoted yet: an answer too

    def _only_holder(self, alias: str) -> str:
        """The one dataset whose serving object names `alias` (old clients send no
        dataset); TargetError naming them when there are more, ModelNotFound for none."""
        holders = self._holders.get(alias, lambda: self._read_holders(alias))
        if not holders:
            raise ModelNotFound(f"no dataset has a {alias} yet: promote one")
        if len(holders) > 1:
            raise TargetError(f"name the dataset: {', '.join(holders)} have a {alias}")
        return holders[0]

    def _read_holders(self, alias: str) -> tuple[str, ...]:
        folders = self._artifacts().list_folders(ALIASES_PREFIX)
        datasets = sorted(f.removeprefix(ALIASES_PREFIX).rstrip("/") for f in folders)
        return tuple(d for d in datasets if (s := self._serving_of(d)) and s.named(alias))

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
