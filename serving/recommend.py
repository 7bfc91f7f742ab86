"""One recommendation request, from the served model and the online features to the response body.

Who gets what:
- a user the model knows: the model's ranking (warmed at load), minus every item they used, the ones the model saw
  and the ones the online store has seen since it was trained (`source: model`);
- a user the model does not know but with recent events online: scored from those items (the model's fold-in:
  the items' vectors, the item-item term and popularity; `source: recent_items`), so a new user gets personal
  results one features run after their first events, before any fine-tune;
- a user with nothing: what is popular now (the online store's ranking, else the model's own popularity;
  `source: popular`, and `fallback` says why);
- no model yet: the popular-now ranking if the store has one (`fallback` says so), else the caller answers 503.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from serving.model_slot import ServedModel
from serving.online import OnlineFeatures


@dataclass(frozen=True)
class Answer:
    items: list[tuple[str, float]]
    source: str                # model | recent_items | popular
    fallback: str | None
    recent: Any                # serving.online.RecentItems
    popular_age_s: float | None = None


class NothingToServe(RuntimeError):
    """No model and no popular-now ranking: the request gets 503 with this reason."""


def known_user_items(model: ServedModel, user_id: str, exclude: set[str], k: int) -> list[tuple[str, float]]:
    indices, scores = model.candidates[user_id]
    items = model.item_ids
    out: list[tuple[str, float]] = []
    for j, score in zip(indices.tolist(), scores.tolist()):  # best first: stop at k, not at the warm list's end
        if items[j] not in exclude:
            out.append((items[j], score))
            if len(out) == k:
                return out
    if len(indices) == len(items):
        return out
    # More recent items than the warm list covers: score this user over the whole catalogue now.
    scores_all = model.checkpoint.score([user_id], items)[0]
    banned = exclude | model.seen.get(user_id, frozenset())
    order = np.argsort(-scores_all, kind="stable")
    return [(items[j], float(scores_all[j])) for j in order.tolist() if items[j] not in banned][:k]


def popular_items(model: ServedModel | None, online: OnlineFeatures, exclude: set[str], k: int
                  ) -> tuple[list[tuple[str, float]], float | None, str]:
    """Popular now (online ranking, scored by rank) else the model's own popularity; and where it came from."""
    ranking, age = online.popular_now()
    if ranking:
        picked = [item for item in ranking if item not in exclude][:k]
        return [(item, float(len(ranking) - rank)) for rank, item in enumerate(picked)], age, "the online store's popular-now ranking"
    if model is None:
        raise NothingToServe("no model in production yet and no popular-now ranking in the online store: "
                             "run a cycle (the features job writes the ranking, a promotion gives a model)")
    return [(i, s) for i, s in model.popular if i not in exclude][:k], None, f"{model.version}'s popularity"


def answer(model: ServedModel | None, online: OnlineFeatures, user_id: str, k: int) -> Answer:
    recent = online.recent_items(user_id)
    seen_since = set(recent.items)
    if model is not None and user_id in model.candidates:
        return Answer(known_user_items(model, user_id, seen_since, k), "model", None, recent)
    if model is not None and recent.items:
        items = model.checkpoint.recommend_from_items(recent.items, k)
        if items:
            return Answer(items, "recent_items", None, recent)
    ranked, age, where = popular_items(model, online, seen_since, k)
    why = ("no model in production yet" if model is None else
           f"user unknown to {model.version} and no recent events in the online store")
    return Answer(ranked, "popular", f"{why}: {where}", recent, age)


def response_body(answer_: Answer, *, user_id: str, k: int, request_id: str, model: ServedModel | None,
                  online: OnlineFeatures) -> dict[str, Any]:
    recent = answer_.recent
    return {
        "user_id": user_id,
        "k": k,
        "items": [{"item_id": item, "score": round(score, 6), "rank": rank + 1}
                  for rank, (item, score) in enumerate(answer_.items)],
        "model_version": model.version if model else None,
        "source": answer_.source,
        "fallback": answer_.fallback,
        "degraded": online.degraded_reason,
        "features": {"recent_items": {"count": len(recent.items), "age_s": _round(recent.age_s),
                                      "expired": recent.expired},
                     "popular_now": {"age_s": _round(answer_.popular_age_s)} if answer_.source == "popular" else None},
        "request_id": request_id,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
