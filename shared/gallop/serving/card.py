"""Race cards: what an application sends before the off (identifiers and pre-race fields,
no result), which the server completes into feature rows from the entity snapshot
(`gallop.features.online.card_features`; `is_card` in `serving.predict` tells a card
from feature rows)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from gallop.spec import DatasetSpec


def card_from_rows(rows: pd.DataFrame, spec: DatasetSpec) -> list[dict[str, Any]]:
    """The card of runner rows read as text: every column but the target and the post-race
    ones, the spec's numeric features as numbers."""
    post_race = {spec.target, *spec.post_race}
    numeric = set(spec.features or [])
    card = []
    for record in rows.to_dict("records"):
        entry: dict[str, Any] = {}
        for name, value in record.items():
            if name in post_race:
                continue
            try:
                entry[str(name)] = float(value) if name in numeric else value
            except ValueError:  # left as sent: the server's card check names it
                entry[str(name)] = value
        card.append(entry)
    return card
