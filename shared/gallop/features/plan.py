"""Turn a spec's derived section into an ordered, checked plan of computations."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from gallop.features.spec import (
    Career,
    Derived,
    Interaction,
    Relative,
    Rolling,
    SinceLast,
    key_list,
)

FIELD_SIZE = "field_size"


class SpecColumns(Protocol):
    """What a plan reads of a dataset spec (gallop.spec.DatasetSpec is one). A protocol,
    not the class: the spec checks its derived section with a plan when it is built, so
    this module cannot import it back."""

    @property
    def task(self) -> str: ...
    @property
    def target(self) -> str: ...
    @property
    def group(self) -> str | None: ...
    @property
    def time(self) -> str | None: ...
    @property
    def entity(self) -> str | None: ...
    @property
    def features(self) -> list[str] | None: ...
    @property
    def categorical(self) -> list[str]: ...
    @property
    def odds(self) -> str | None: ...
    @property
    def post_race(self) -> list[str]: ...
    @property
    def derived(self) -> Derived | None: ...
    @property
    def spec_hash(self) -> str: ...


class FeatureSpecError(ValueError):
    """A derived entry that cannot be computed; the message names the entry."""


@dataclass(frozen=True)
class Node:
    name: str  # e.g. "rolling[0]"
    entry: Rolling | Career | SinceLast | Relative | Interaction | None  # None: field_size
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    @property
    def history(self) -> bool:
        return isinstance(self.entry, Rolling | Career | SinceLast)


@dataclass
class HistoryKey:
    """What one entity key (horse, jockey, jockey x trainer) must remember."""

    by: tuple[str, ...]
    rolled: list[str] = field(default_factory=list)
    window: int = 0
    career: bool = False

    @property
    def name(self) -> str:
        return "|".join(self.by)


@dataclass
class Plan:
    nodes: list[Node]  # in an order where every input is computed before it is used
    features: list[str]  # what models get, in order
    post_race: set[str]  # columns a row may not see of its own race
    history_keys: dict[str, HistoryKey]
    numeric_inputs: list[str]  # data columns the plan reads as numbers
    text_keys: list[str]  # data columns the plan reads as text keys
    spec_hash: str
    categorical: list[str] = field(default_factory=list)  # features coded from text


def check_spec(spec: SpecColumns) -> None:
    """Checks that need only the spec (registration time); raises FeatureSpecError."""
    if spec.derived is not None:
        build_plan(spec, data_numeric=None)


def build_plan(spec: SpecColumns, data_numeric: list[str] | None) -> Plan:
    """data_numeric: the numeric columns of the data (None when checking the spec alone,
    which then knows only the columns the spec names)."""
    derived = spec.derived or Derived()
    text = {c for c in (spec.group, spec.entity, *spec.categorical) if c}
    post_race = {spec.target, *spec.post_race}
    base = list(spec.features) if spec.features is not None else list(data_numeric or [])
    base = [c for c in base if c not in post_race]
    numeric = set(base) | post_race | ({spec.odds} if spec.odds else set())
    if data_numeric is not None:
        numeric |= set(data_numeric)
    can_check_unknown = spec.features is not None or data_numeric is not None

    nodes = [_node(name, entry) for name, entry in derived.entries()]
    if derived.field_size:
        if not spec.group:
            raise FeatureSpecError("field_size needs the spec's 'group' (the race id)")
        nodes.append(Node("field_size", None, (), (FIELD_SIZE,)))

    produced: dict[str, str] = {}
    for node in nodes:
        for out in node.outputs:
            if out in produced or out in numeric | text | {spec.time}:
                raise FeatureSpecError(
                    f"{node.name}: output {out!r} clashes with "
                    + (f"{produced[out]}" if out in produced else "a column of the data")
                )
            produced[out] = node.name

    for node in nodes:
        _check_node(node, spec, text, numeric, set(produced), can_check_unknown)

    ordered = _topological(nodes, produced)
    tainted = set(post_race)
    for node in ordered:
        if not node.history and any(i in tainted for i in node.inputs):
            tainted |= set(node.outputs)
    outputs_in_order = [o for node in nodes for o in node.outputs]
    features = base + [o for o in outputs_in_order if o not in tainted] + list(spec.categorical)
    history_text = {k for n in nodes if n.history for k in key_list(n.entry.by)}  # type: ignore[union-attr]

    return Plan(
        nodes=ordered,
        features=features,
        post_race=tainted,
        history_keys=_history_keys(ordered),
        numeric_inputs=sorted((numeric - set(produced)) & _all_inputs(nodes) | set(base)),
        text_keys=sorted(history_text | set(spec.categorical)),
        spec_hash=spec.spec_hash,
        categorical=list(spec.categorical),
    )


def _node(name: str, entry: Rolling | Career | SinceLast | Relative | Interaction) -> Node:
    if isinstance(entry, Rolling):
        inputs: tuple[str, ...] = (entry.column,)
    elif isinstance(entry, Relative):
        inputs = (entry.column,)
    elif isinstance(entry, Interaction):
        inputs = (entry.left, entry.right)
    else:
        inputs = ()
    return Node(name, entry, inputs, tuple(entry.outputs()))


def _check_node(
    node: Node,
    spec: SpecColumns,
    text: set[str],
    numeric: set[str],
    produced: set[str],
    can_check_unknown: bool,
) -> None:
    entry = node.entry
    if node.history:
        if not spec.time:
            raise FeatureSpecError(
                f"{node.name}: entity history needs the spec's 'time' (race start)"
            )
        for key in key_list(entry.by):  # type: ignore[union-attr]
            if key not in text - {spec.group}:
                raise FeatureSpecError(
                    f"{node.name}: 'by' column {key!r} must be the entity or a categorical column"
                )
    if isinstance(entry, Career) and spec.task == "regression" and set(entry.stats) - {"runs"}:
        raise FeatureSpecError(f"{node.name}: wins and rates need a ranking or binary task")
    if isinstance(entry, Relative) and not spec.group:
        raise FeatureSpecError(f"{node.name}: relative features need the spec's 'group'")
    for column in node.inputs:
        if column in text or column == spec.time:
            raise FeatureSpecError(
                f"{node.name}: column {column!r} is text; derived statistics need a numeric column"
            )
        if can_check_unknown and column not in numeric | produced:
            raise FeatureSpecError(f"{node.name}: unknown column {column!r}")


def _topological(nodes: list[Node], produced: dict[str, str]) -> list[Node]:
    by_name = {n.name: n for n in nodes}
    needs = {n.name: {produced[i] for i in n.inputs if i in produced} for n in nodes}
    ordered: list[Node] = []
    done: set[str] = set()
    while len(ordered) < len(nodes):
        ready = [n for n in nodes if n.name not in done and needs[n.name] <= done]
        if not ready:
            stuck = [n for n in nodes if n.name not in done]
            cycle = _find_cycle(stuck, needs)
            raise FeatureSpecError(
                "derived entries form a cycle: " + " -> ".join(cycle + [cycle[0]])
            )
        for node in ready:
            ordered.append(by_name[node.name])
            done.add(node.name)
    return ordered


def _find_cycle(stuck: list[Node], needs: dict[str, set[str]]) -> list[str]:
    names = {n.name for n in stuck}
    path: list[str] = [stuck[0].name]
    while True:
        following = sorted(needs[path[-1]] & names)[0]
        if following in path:
            return path[path.index(following) :]
        path.append(following)


def _history_keys(nodes: list[Node]) -> dict[str, HistoryKey]:
    keys: dict[str, HistoryKey] = {}
    for node in nodes:
        if not node.history:
            continue
        entry = node.entry
        by = tuple(key_list(entry.by))  # type: ignore[union-attr]
        key = keys.setdefault("|".join(by), HistoryKey(by))
        if isinstance(entry, Rolling):
            if entry.column not in key.rolled:
                key.rolled.append(entry.column)
            key.window = max(key.window, max(entry.windows))
        elif isinstance(entry, Career):
            key.career = True
        else:  # SinceLast remembers the last row's time
            key.window = max(key.window, 1)
    return keys


def _all_inputs(nodes: list[Node]) -> set[str]:
    return {i for n in nodes for i in n.inputs}
