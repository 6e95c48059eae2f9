"""The LightGBM family: every boosted or forest kind of the catalogue.

A fitted LightGBM base is a bag of one or more boosters whose margins are averaged: the
k fold models of a bagged fit (each early-stopped on its own held-out fold), or a single
refit. The bag is exported as ONE tree ensemble whose leaf values carry the 1/k, and it
is explained the same way: TreeSHAP is linear in the trees. Both read a LightGBM-style
dump (`Booster.dump_model()`), the bag's trees merged into one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightgbm as lgb
import numpy as np

from gallop.manifests import FeatureManifest
from gallop.models.catalogue import Kind
from gallop.models.offset import Offset
from gallop.models.stack import fit_conditional_logit, group_starts, softmax_within_groups
from gallop.models.treebag import merged_dump

if TYPE_CHECKING:
    import onnx

    from gallop.models.onnx_export import Indicators

FAMILY = "lightgbm"
OFFSET_FILE = "offset.json"
RANKING_OBJECTIVES = ("lambdarank", "rank_xendcg")
# The same inputs give the same model bytes: one thread, row-wise histograms, fixed seeds.
REPRODUCIBLE = {"deterministic": True, "force_row_wise": True, "num_threads": 1, "verbose": -1}


def conditional_logit_objective(score: np.ndarray, data: lgb.Dataset) -> tuple[Any, Any]:
    """Gradient and Hessian of the groups' softmax cross-entropy against each row's
    share of its group's win: what race log loss measures, boosted directly."""
    probability = softmax_within_groups(score, np.asarray(data.get_group()))
    return probability - np.asarray(data.get_label()), np.maximum(
        probability * (1.0 - probability), 1e-6
    )


def group_log_loss(score: np.ndarray, data: lgb.Dataset) -> tuple[str, float, bool]:
    """The mean negative log-likelihood of the winners (groups without one left out)."""
    sizes, share = np.asarray(data.get_group()), np.asarray(data.get_label())
    starts = group_starts(sizes)
    decided = np.add.reduceat(share, starts) > 0
    logged = share * np.log(np.maximum(softmax_within_groups(score, sizes), 1e-300))
    return "group_log_loss", float(-np.add.reduceat(logged, starts)[decided].mean()), False


def params_for(kind: Kind, task: str, settings: dict[str, Any]) -> dict[str, Any]:
    """LightGBM parameters: the run's settings, then the kind's own (its identity), then
    what a run set explicitly for leaves and leaf sizes."""
    params: dict[str, Any] = {
        "learning_rate": settings["learning_rate"],
        "num_leaves": 31,
        "min_data_in_leaf": 20,
        "seed": settings["seed"],
        **REPRODUCIBLE,
    }
    params.update(kind.params)
    if params["objective"] == "by_task":
        params["objective"] = "regression" if task == "regression" else "binary"
    for name in ("num_leaves", "min_data_in_leaf"):
        if settings.get(name) is not None:
            params[name] = settings[name]
    params.update(settings.get("lightgbm") or {})  # a search's trial, or a run's extras
    if params["objective"] in RANKING_OBJECTIVES:
        params.setdefault("eval_at", [10])
        params.setdefault("metric", "ndcg")
    if params["objective"] == "conditional_logit":
        params["metric"] = "None"  # group_log_loss, given as feval
    return params


Part = tuple[np.ndarray, np.ndarray, "np.ndarray | None"]  # features, labels, group sizes


def is_grouped(params: dict[str, Any]) -> bool:
    return params["objective"] in (*RANKING_OBJECTIVES, "conditional_logit")


class Binned:
    """A phase's rows binned into one LightGBM Dataset, once: each fold's training and
    validation rows are subsets of it, with their labels, groups and offsets (binning
    each fold's rows anew took as long as boosting them, 0.29 s for 40,000 x 59)."""

    def __init__(
        self, params: dict[str, Any], part: Part, categorical: list[int], offset: Offset | None
    ) -> None:
        # binned as the fits will train (leaf sizes decide which features can split)
        binning = {k: v for k, v in params.items() if k not in ("objective", "metric", "eval_at")}
        x, y, sizes = part
        self.full = lgb.Dataset(
            x,
            y,
            group=sizes if is_grouped(params) else None,
            init_score=offset.values(x) if offset else None,
            categorical_feature=categorical or "auto",
            free_raw_data=False,
            params=binning,
        )

    def rows(self, mask: np.ndarray) -> lgb.Dataset:
        return self.full.subset(np.flatnonzero(mask).tolist())  # in order: groups stay whole


def fit_booster(
    params: dict[str, Any],
    data: lgb.Dataset,
    valid: lgb.Dataset | None,
    rounds: int,
    patience: int,
) -> lgb.Booster:
    """A booster trained on `data` (rows of a Binned phase), early-stopped on `valid` when
    given, cut back to its best iteration (so that its dump, its graph and its
    explanations hold exactly the trees it predicts with)."""
    params = dict(params)
    feval = None
    if params["objective"] == "conditional_logit":
        params["objective"], feval = conditional_logit_objective, group_log_loss
    if valid is None or params.get("boosting") == "rf":  # a forest does not overfit by rounds
        return lgb.train(params, data, rounds)
    booster = lgb.train(
        params,
        data,
        rounds,
        valid_sets=[valid],
        feval=feval,
        callbacks=[lgb.early_stopping(patience, first_metric_only=True, verbose=False)],
    )
    best = booster.best_iteration or booster.current_iteration()
    return lgb.Booster(model_str=booster.model_to_string(num_iteration=best))


def offset_for(
    kind: Kind,
    manifest: FeatureManifest,
    features: np.ndarray,
    share: np.ndarray,
    sizes: np.ndarray | None,
) -> Offset | None:
    """A kind boosted from the market starts from the odds' log implied probability, when
    the data has odds and that feature, weighted as a conditional logit of the winners
    (`share` of each race's win, races of `sizes` rows) on it alone; any other kind
    starts from zero."""
    name = f"{manifest.get('odds')}_log_implied"
    if not kind.from_market or not manifest.get("odds") or name not in manifest["features"]:
        return None
    feature = manifest["features"].index(name)
    unscaled = Offset.learn(features, feature)
    if sizes is None:
        return unscaled
    market = unscaled.values(features)[:, None]
    (scale,) = fit_conditional_logit(market, share, sizes, l2=0.0).weights
    return Offset.learn(features, feature, scale)


def raw_margin(booster: lgb.Booster, features: np.ndarray) -> np.ndarray:
    """The booster's margin as LightGBM uses it: in random-forest mode its predictions
    average the trees, but predict(raw_score=True) returns their sum."""
    raw = np.asarray(booster.predict(features, raw_score=True), dtype=np.float64)
    if booster.dump_model(num_iteration=1).get("average_output"):
        raw = raw / booster.num_trees()
    return raw


@dataclass
class LightGBMBase:
    """A bag of boosters (one for a single refit): margin = their mean margin, plus the
    offset's feature for a kind boosted from one."""

    boosters: list[lgb.Booster]
    offset: Offset | None = None
    _dump: dict[str, Any] | None = field(default=None, init=False, repr=False, compare=False)

    family = FAMILY

    def margin(self, features: np.ndarray) -> np.ndarray:
        trees = np.mean([raw_margin(b, features) for b in self.boosters], axis=0)
        return trees + self.offset.values(features) if self.offset else trees

    def contributions(self, features: np.ndarray) -> np.ndarray:
        """Each feature's TreeSHAP term of the margin (the rest is the expected value),
        by LightGBM itself: the bag's mean of its boosters' terms, which is what the
        serving side's TreeSHAP over the merged trees gives, at C speed."""
        terms = np.zeros((len(features), features.shape[1]))
        for booster in self.boosters:
            part = np.asarray(booster.predict(features, pred_contrib=True), dtype=np.float64)
            if booster.dump_model(num_iteration=1).get("average_output"):
                part = part / booster.num_trees()  # as in raw_margin
            terms += part[:, :-1]
        terms /= len(self.boosters)
        return self.offset.explained(terms, features) if self.offset else terms

    def dump(self) -> dict[str, Any]:
        """The bag's trees as one dump (made once: export, explanation and report all read
        it; callers do not change it)."""
        if self._dump is None:
            self._dump = merged_dump([b.dump_model() for b in self.boosters])
        return self._dump

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for i, booster in enumerate(self.boosters):
            booster.save_model(str(folder / f"booster_{i}.txt"))
        if self.offset:
            (folder / OFFSET_FILE).write_text(json.dumps(asdict(self.offset)))

    @classmethod
    def load(cls, folder: Path) -> LightGBMBase:
        files = sorted(folder.glob("booster_*.txt"), key=lambda p: int(p.stem.split("_")[1]))
        if not files:
            raise FileNotFoundError(f"{folder} holds no booster_<i>.txt")
        offset = folder / OFFSET_FILE
        return cls(
            [lgb.Booster(model_file=str(path)) for path in files],
            Offset(**json.loads(offset.read_text())) if offset.exists() else None,
        )

    def explanation(self) -> dict[str, Any]:
        """What the serving side explains with (TreeSHAP over the merged trees, and the
        offset's feature as its own term)."""
        return {**self.dump(), "offset": asdict(self.offset) if self.offset else None}

    def onnx_parts(
        self, input_name: str, output_name: str, indicators: Indicators | None = None
    ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
        """The margin's nodes and constants; categorical splits read `indicators` (the
        graph's shared lookups) when given."""
        from onnx import TensorProto, helper

        from gallop.models.onnx_export import tree_ensemble_parts

        dump = self.dump()
        if not self.offset:
            return tree_ensemble_parts(dump, input_name, output_name, 1.0, indicators)
        p = output_name
        nodes, constants = tree_ensemble_parts(dump, input_name, f"{p}_trees", 1.0, indicators)
        constants += [
            helper.make_tensor(f"{p}_offset_at", TensorProto.INT64, [1], [self.offset.feature]),
            helper.make_tensor(f"{p}_offset_fill", TensorProto.FLOAT, [1], [self.offset.fill]),
            helper.make_tensor(f"{p}_offset_scale", TensorProto.FLOAT, [1], [self.offset.scale]),
        ]
        nodes += [
            helper.make_node("Gather", [input_name, f"{p}_offset_at"], [f"{p}_column"], axis=1),
            helper.make_node("IsNaN", [f"{p}_column"], [f"{p}_missing"]),
            helper.make_node(
                "Where", [f"{p}_missing", f"{p}_offset_fill", f"{p}_column"], [f"{p}_market"]
            ),
            helper.make_node("Mul", [f"{p}_market", f"{p}_offset_scale"], [f"{p}_offset"]),
            helper.make_node("Add", [f"{p}_trees", f"{p}_offset"], [output_name]),
        ]
        return nodes, constants

    def trees(self) -> int:
        return sum(b.num_trees() for b in self.boosters)

    def describe(self) -> dict[str, Any]:
        trees = [b.num_trees() for b in self.boosters]
        return {
            "boosters": len(self.boosters),
            "trees": trees,
            "offset": asdict(self.offset) if self.offset else None,
        }
