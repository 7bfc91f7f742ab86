"""The recommender's contract: growth mid-stream, cold start, checkpoint round trip, determinism, the
NaN guard, and the fine-tune's guards (anchor, decay). Tiny synthetic data, a few seconds in all."""
import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import spearmanr

from models.recommender import Checkpoint, TrainConfig, train
from models.synthetic import synthetic_stream

FAST = TrainConfig(dim=8, epochs=4, lr=0.05, batch_size=128, negatives=32, finetune_epochs=2, seed=3)


@pytest.fixture(scope="module")
def stream():
    return synthetic_stream(n_users=40, n_items=50, n_events=1500, seed=1)


@pytest.fixture(scope="module")
def base(stream):
    interactions, items = stream
    return train(interactions.iloc[:1000], cfg=FAST, items=items)


def weights_of(ckpt):
    return {k: v.clone() for k, v in ckpt.weights.items()}


def test_full_retrain_is_finite_and_learns(base):
    assert base.finite
    assert len(base.losses) == FAST.epochs
    assert base.losses[-1] < base.losses[0]
    assert base.examples == 1000
    assert base.train_cpu_s > 0


def test_new_users_and_items_mid_stream_grow_the_tables(base, stream):
    _, items = stream
    new = pd.DataFrame({"user_id": ["brand_new_user", "u1", "brand_new_user"],
                        "item_id": ["brand_new_item", "brand_new_item", "i3"],
                        "timestamp": [1_800_000_000.0, 1_800_000_060.0, 1_800_000_120.0]})
    result = train(new, cfg=FAST, init_from=base.checkpoint, anchor=base.checkpoint, items=items)
    ck = result.checkpoint
    assert result.finite
    assert len(ck.user_ids) == len(base.checkpoint.user_ids) + 1
    assert len(ck.item_ids) == len(base.checkpoint.item_ids) + 1
    assert ck.user_ids[: len(base.checkpoint.user_ids)] == base.checkpoint.user_ids  # old rows keep their index
    assert ck.weights["user"].shape == (len(ck.user_ids), FAST.dim)
    scores = ck.score(["brand_new_user", "never_seen_user"], ["brand_new_item", "never_seen_item", "i0"])
    assert scores.shape == (2, 3) and np.isfinite(scores).all()
    # The previous checkpoint is untouched by the fine-tune.
    assert len(base.checkpoint.item_ids) == len(ck.item_ids) - 1


def test_cold_start_unknown_user_gets_popularity_order(base, stream):
    ck = base.checkpoint
    # A user with no history is ranked by item bias + the decayed popularity prior: the ranking follows the
    # decayed counts at the half-life the model uses (recent events count most).
    recent = ck.popularity[ck.choice[1]].numpy()
    scores = ck.score(["nobody"], ck.item_ids)[0]
    assert spearmanr(scores, recent).statistic > 0.8
    assert ck.recommend(["nobody"], k=1)[0][0] in {ck.item_ids[j] for j in np.argsort(-recent)[:3]}


def test_cold_start_unknown_item_uses_its_categories(stream):
    interactions, items = stream
    # Users of one taste group like genre g0; a new item of genre g0 must outscore a new item of a genre the
    # user never touches, for a user of that group.
    ck = train(interactions, cfg=dataclasses.replace(FAST, epochs=8), items=items).checkpoint
    extra = pd.DataFrame({"item_id": ["new_g0", "new_g1"], "categories": ["g0|all", "g1|all"]})
    ft = train(interactions.iloc[:0], cfg=FAST, init_from=ck, items=extra).checkpoint  # metadata only
    item_genre = items.set_index("item_id")["categories"].str.split("|").str[0]
    by_user = interactions.assign(g=interactions["item_id"].map(item_genre)).groupby("user_id")["g"]
    fans = [u for u, g in by_user if (g == "g0").mean() > 0.7]
    assert fans
    s = ft.score(fans, ["new_g0", "new_g1"])
    assert (s[:, 0] > s[:, 1]).mean() > 0.8


def test_checkpoint_round_trip_restores_identical_scores(base, tmp_path):
    path = tmp_path / "sub" / "model.pt"
    base.checkpoint.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temp file left behind
    loaded = Checkpoint.load(path)  # uses torch.load(weights_only=True)
    torch.load(path, weights_only=True)  # and the raw file loads under weights_only too
    users, items = base.checkpoint.user_ids[:7] + ["ghost"], base.checkpoint.item_ids + ["ghost_item"]
    np.testing.assert_array_equal(loaded.score(users, items), base.checkpoint.score(users, items))
    assert loaded.config == base.checkpoint.config and loaded.events_seen == base.checkpoint.events_seen
    assert loaded.ease.item_ids == base.checkpoint.ease.item_ids
    assert loaded.optimizer["state"][0]["exp_avg"].shape == base.checkpoint.weights["user"].shape
    # Resuming from the loaded copy equals resuming from the in-memory one (optimizer state included).
    more = pd.DataFrame({"user_id": ["u1", "u2"], "item_id": ["i1", "i2"], "timestamp": [2e9, 2e9 + 1]})
    a = train(more, cfg=FAST, init_from=loaded).checkpoint
    b = train(more, cfg=FAST, init_from=base.checkpoint).checkpoint
    for name in a.weights:
        torch.testing.assert_close(a.weights[name], b.weights[name], rtol=0, atol=0)


def test_seeded_runs_are_deterministic(stream):
    interactions, items = stream
    a = train(interactions.iloc[:600], cfg=FAST, items=items)
    b = train(interactions.iloc[:600], cfg=FAST, items=items)
    c = train(interactions.iloc[:600], cfg=dataclasses.replace(FAST, seed=4), items=items)
    assert a.losses == b.losses
    for name in a.checkpoint.weights:
        assert torch.equal(a.checkpoint.weights[name], b.checkpoint.weights[name])
    assert not torch.equal(a.checkpoint.weights["user"], c.checkpoint.weights["user"])


def test_injected_nan_rejects_candidate_and_keeps_previous_weights(base, stream):
    interactions, _ = stream
    before = weights_of(base.checkpoint)
    poisoned = interactions.iloc[1000:1200].assign(weight=1.0)
    poisoned.loc[poisoned.index[5], "weight"] = float("nan")
    result = train(poisoned, cfg=FAST, init_from=base.checkpoint, anchor=base.checkpoint)
    assert result.finite is False
    for name, tensor in before.items():
        assert torch.equal(base.checkpoint.weights[name], tensor)
    assert base.checkpoint.weights_finite()
    # Inf learning rate blows up the weights instead of the loss: also caught.
    result = train(interactions.iloc[1000:1200], cfg=dataclasses.replace(FAST, finetune_lr=float("inf")),
                   init_from=base.checkpoint)
    assert result.finite is False
    assert not result.checkpoint.weights_finite()


def test_anchor_l2_holds_fine_tune_near_anchor(base, stream):
    interactions, _ = stream
    window = interactions.iloc[1000:1500]
    free = train(window, cfg=dataclasses.replace(FAST, anchor_l2=0.0, finetune_epochs=5), init_from=base.checkpoint)
    held = train(window, cfg=dataclasses.replace(FAST, anchor_l2=1.0, finetune_epochs=5),
                 init_from=base.checkpoint, anchor=base.checkpoint)
    n = len(base.checkpoint.item_ids)
    drift_free = (free.checkpoint.weights["item"][:n] - base.checkpoint.weights["item"]).norm()
    drift_held = (held.checkpoint.weights["item"][:n] - base.checkpoint.weights["item"]).norm()
    assert drift_held < 0.5 * drift_free


def test_anchor_rows_map_by_id_whether_or_not_the_anchor_is_a_prefix():
    from models.recommender import _shared_rows

    own = {"a": 0, "b": 1, "c": 2, "d": 3}
    mine, theirs = _shared_rows(own, ["a", "b", "c"])             # a chain's anchor: a prefix of the vocabulary
    assert mine.tolist() == [0, 1, 2] and theirs.tolist() == [0, 1, 2]
    mine, theirs = _shared_rows(own, ["c", "x", "a"])             # another order, an id the model lacks
    assert mine.tolist() == [2, 0] and theirs.tolist() == [0, 2]
    assert mine.dtype == theirs.dtype == torch.int64
    assert _shared_rows(own, [])[0].numel() == 0


def test_replay_mixes_in_history(base, stream):
    interactions, _ = stream
    window = interactions.iloc[1000:1100]
    result = train(window, cfg=dataclasses.replace(FAST, replay_fraction=2.0), init_from=base.checkpoint,
                   replay=interactions.iloc[:1000])
    assert result.examples == 100 + 200
    none = train(window, cfg=dataclasses.replace(FAST, replay_fraction=0.0), init_from=base.checkpoint,
                 replay=interactions.iloc[:1000])
    assert none.examples == 100


def test_decay_counts_events_so_recent_popularity_wins():
    # Item "old" was hammered first, item "now" a little at the end. With half-lives of a small share of the
    # stream the model ranks "now" first for an unknown user; with half-lives longer than the stream, "old".
    rows = [(f"a{j}", "old", float(j)) for j in range(60)] + [(f"c{j}", f"filler{j % 10}", 100.0 + j)
                                                             for j in range(40)]
    rows += [(f"b{j}", "now", 200.0 + j) for j in range(20)]
    events = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    short = dataclasses.replace(FAST, half_life_share=0.05, pop_share_min=0.05, pop_share_max=0.05, epochs=30)
    long = dataclasses.replace(FAST, half_life_share=1e6, pop_share_min=1e6, pop_share_max=1e6, epochs=30)
    assert train(events, cfg=short).checkpoint.recommend(["x"], k=1)[0] == ["now"]
    assert train(events, cfg=long).checkpoint.recommend(["x"], k=1)[0] == ["old"]


def test_a_faster_stream_trains_the_same_model(stream):
    # Nothing depends on seconds: the same events 30x closer together give the same weights and scores.
    interactions, items = stream
    fast = interactions.assign(timestamp=interactions["timestamp"].iloc[0]
                               + (interactions["timestamp"] - interactions["timestamp"].iloc[0]) / 30.0)
    a = train(interactions.iloc[:800], cfg=FAST, items=items).checkpoint
    b = train(fast.iloc[:800], cfg=FAST, items=items).checkpoint
    a = train(interactions.iloc[800:1000], cfg=FAST, init_from=a, replay=interactions.iloc[:800], items=items)
    b = train(fast.iloc[800:1000], cfg=FAST, init_from=b, replay=fast.iloc[:800], items=items)
    for name in a.checkpoint.weights:
        assert torch.equal(a.checkpoint.weights[name], b.checkpoint.weights[name])
    assert torch.equal(a.checkpoint.popularity, b.checkpoint.popularity)
    users, item_ids = a.checkpoint.user_ids[:5], a.checkpoint.item_ids
    np.testing.assert_array_equal(a.checkpoint.score(users, item_ids), b.checkpoint.score(users, item_ids))


def test_popularity_counts_advance_like_a_recount(stream):
    # Fine-tuning advances the decayed counts; recounting everything from scratch gives nearly the same counts.
    # Not exactly: a half-life is a share of the events learned, so it grew while the old counts decayed (here
    # by a third in one step, far more than a window adds in practice).
    interactions, items = stream
    base = train(interactions.iloc[:900], cfg=FAST, items=items).checkpoint
    step = train(interactions.iloc[900:1200], cfg=FAST, init_from=base, items=items).checkpoint
    whole = train(interactions.iloc[:1200], cfg=FAST, items=items).checkpoint
    order = [whole.item_ids.index(i) for i in step.item_ids]
    gap = (step.popularity - whole.popularity[:, order]).abs().sum(1) / whole.popularity.sum(1)   # (G,)
    assert float(gap[:3].max()) < 1e-3 and float(gap.max()) < 0.1, gap
    assert step.events_seen == whole.events_seen == 1200


def test_observe_learns_the_popularity_weight_from_new_events_only():
    # A stream where only "what is popular now" predicts the next events: after observing new events the model
    # puts weight on popularity, and the evidence comes from the events passed to observe, nothing else.
    from models.recommender import observe, popularity_weights

    rng = np.random.default_rng(0)
    items = [f"i{j}" for j in range(200)]
    rows = []
    for t in range(3000):
        hot = items[(t // 300) * 10:(t // 300) * 10 + 10]   # ten hot items, replaced every 300 events
        rows.append((f"u{rng.integers(0, 300)}", str(rng.choice(hot)), float(t)))
    events = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    model = train(events.iloc[:2000], cfg=FAST).checkpoint
    assert model.selection is None and model.terms()["observed"] is False
    seen = observe(model, events.iloc[:2000], events.iloc[2000:2300])
    assert seen.selection is not None and seen.selection.shape == (5, 6, 7)
    assert seen.terms()["pop_weight"] >= 2.0
    assert model.selection is None                      # the input model is not mutated
    # Nothing to evaluate (no returning users): the model comes back unchanged.
    strangers = events.iloc[2000:2100].assign(user_id="never_seen")
    assert observe(model, events.iloc[:2000], strangers) is model
    # The evidence travels with the checkpoint through a fine-tune and a save.
    tuned = train(events.iloc[2000:2300], cfg=FAST, init_from=seen).checkpoint
    torch.testing.assert_close(tuned.selection, seen.selection)
    assert tuned.choice == seen.choice and float(popularity_weights(FAST)[tuned.choice[2]]) >= 2.0


def test_ease_term_recommends_co_watched_items():
    from models.ease import DecayedEASE

    # Pairs (a, b) always watched together: a user who saw a gets b on top.
    rows = [(f"u{j}", f"a{j % 5}", float(2 * j)) for j in range(200)]
    rows += [(f"u{j}", f"b{j % 5}", float(2 * j + 1)) for j in range(200)]
    events = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).sort_values("timestamp")
    ease = DecayedEASE.fit(events, half_life=1e9, l2_share=0.1, max_items=100)
    scores = ease.score(["new_fan"] + ["u3"], [f"b{j}" for j in range(5)] + ["unknown"])
    assert (scores[0] == 0).all()                        # unknown user
    assert int(np.argmax(scores[1, :5])) == 3 and scores[1, 5] == 0.0
    restored = DecayedEASE.from_dict(ease.to_dict())
    np.testing.assert_array_equal(restored.score(["u3"], ["b3", "a1"]), ease.score(["u3"], ["b3", "a1"]))


def test_ease_fit_keeps_the_heaviest_items_and_each_pairs_latest_event():
    # X, built the slow and obvious way: items ranked by decayed mass (the smaller id first on ties), the top
    # `max_items` kept, each (user, item) pair's latest event (its largest decay), users and items by id. Events
    # arrive out of order (a fine-tune joins history and new events) and ids of any type count as strings.
    from models.data import event_ages
    from models.ease import DecayedEASE

    rng = np.random.default_rng(7)
    n, half_life, max_items = 400, 60.0, 12
    events = pd.DataFrame({"user_id": rng.integers(0, 25, n), "item_id": rng.integers(0, 30, n),
                           "timestamp": rng.permutation(n).astype(float)})
    decay = 0.5 ** (event_ages(events["timestamp"].to_numpy()) / half_life)
    mass: dict[str, float] = {}
    for item, value in zip(events["item_id"].astype(str), decay):
        mass[item] = mass.get(item, 0.0) + value
    kept = sorted(sorted(mass), key=lambda i: -mass[i])[:max_items]
    latest: dict[tuple[str, str], float] = {}
    for user, item, value in zip(events["user_id"].astype(str), events["item_id"].astype(str), decay):
        if item in kept:
            latest[user, item] = max(latest.get((user, item), 0.0), value)
    users = sorted({u for u, _ in latest})

    ease = DecayedEASE.fit_arrays(events["user_id"].to_numpy(), events["item_id"].to_numpy(),
                                  events["timestamp"].to_numpy(), half_life=half_life, l2_share=1.0,
                                  max_items=max_items)
    assert ease.item_ids == kept and ease.user_ids == users
    for j, user in enumerate(users):
        lo, hi = int(ease.indptr[j]), int(ease.indptr[j + 1])
        got = {kept[c]: float(v) for c, v in zip(ease.indices[lo:hi].tolist(), ease.values[lo:hi].tolist())}
        assert got == pytest.approx({i: v for (u, i), v in latest.items() if u == user}, rel=1e-6)
    # The same events as a frame of string ids give the same model.
    frame = DecayedEASE.fit(events.astype({"user_id": str, "item_id": str}), half_life=half_life, l2_share=1.0,
                            max_items=max_items)
    assert frame.item_ids == ease.item_ids and torch.equal(frame.weights, ease.weights)


def test_recommend_respects_candidates_and_exclusions(base):
    ck = base.checkpoint
    cands = ck.item_ids[:6]
    user = ck.user_ids[0]
    recs = ck.recommend([user], k=3, candidates=cands, exclude={user: set(cands[:4])})[0]
    assert set(recs) == set(cands[4:6]) and len(recs) == 2


def test_finetune_is_observe_then_train(stream):
    # The production entry point of the winning strategy does exactly what the benchmark's incremental chain does.
    from models.recommender import finetune, observe

    interactions, items = stream
    base = train(interactions.iloc[:1000], cfg=FAST, items=items).checkpoint
    history, new = interactions.iloc[:1000], interactions.iloc[1000:1200]
    a = finetune(base, new, cfg=FAST, anchor=base, history=history, items=items).checkpoint
    b = train(new, cfg=FAST, init_from=observe(base, history, new), anchor=base, replay=history, items=items).checkpoint
    assert a.selection is not None and torch.equal(a.selection, b.selection)
    for name in a.weights:
        assert torch.equal(a.weights[name], b.weights[name])
    assert base.selection is None                      # production's checkpoint is untouched


@pytest.fixture(scope="module")
def groups_model():
    # Four taste groups (item i belongs to group i % 4); users pick their group's items 90% of the time.
    interactions, items = synthetic_stream(n_users=80, n_items=60, n_events=4000, n_groups=4, seed=2,
                                           affinity=0.9)
    return train(interactions, cfg=dataclasses.replace(FAST, epochs=6), items=items).checkpoint


def test_fold_in_user_gets_the_taste_group_of_their_recent_items(groups_model):
    ck = groups_model
    for g in range(4):
        group = [i for i in ck.item_ids if int(i[1:]) % 4 == g]
        in_group = np.array([int(i[1:]) % 4 == g for i in ck.item_ids])
        recent = ["unknown_item"] + group[:6]                # newest first; the unknown id is ignored
        recs = ck.recommend_from_items(recent, k=8)
        assert len(recs) == 8
        # A quarter of the catalogue is the group: at least 5 of the top 8 come from it (chance: 2).
        assert sum(int(item[1:]) % 4 == g for item, _ in recs) >= 5
        scores = ck.score_from_items(recent)
        assert np.mean(scores[in_group][:, None] > scores[~in_group][None, :]) > 0.85   # AUC of the group
        assert not set(group[:6]) & {item for item, _ in recs}  # the recent items themselves are not offered
    # The cold ranking does not know the taste: its group AUC is near chance.
    cold = ck.score_from_items([])
    in_group = np.array([int(i[1:]) % 4 == 2 for i in ck.item_ids])
    assert 0.3 < np.mean(cold[in_group][:, None] > cold[~in_group][None, :]) < 0.7


def test_fold_in_excludes_and_scores_like_score(groups_model):
    ck = groups_model
    recent = [i for i in ck.item_ids if int(i[1:]) % 4 == 1][:5]
    recs = ck.recommend_from_items(recent, k=8)
    values = [s for _, s in recs]
    assert values == sorted(values, reverse=True) and np.isfinite(values).all()
    full = ck.score_from_items(recent)
    for item, value in recs:
        assert full[ck.item_ids.index(item)] == pytest.approx(value)
    banned = [item for item, _ in recs[:3]]
    again = ck.recommend_from_items(recent, k=5, exclude=banned)
    assert [item for item, _ in again] == [item for item, _ in recs[3:8]]
    kept = ck.recommend_from_items(recent, k=len(ck.item_ids), exclude_recent=False)
    assert len(kept) == len(ck.item_ids) and set(recent) <= {item for item, _ in kept}
    # No history, or only unknown items: exactly the unknown-user scores of `score` (item bias + popularity).
    cold = ck.score(["never_seen_user"], ck.item_ids)[0]
    np.testing.assert_allclose(ck.score_from_items([]), cold, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ck.score_from_items(["nope", "nada"]), cold, rtol=1e-6, atol=1e-6)
    assert [item for item, _ in ck.recommend_from_items([], k=5)] == \
        [ck.item_ids[j] for j in np.argsort(-cold, kind="stable")[:5]]


def test_fold_in_combines_its_terms_with_the_selected_weights(groups_model):
    from models.recommender import ease_weights, popularity_weights

    ck = groups_model
    cfg = ck.train_config
    recent = [i for i in ck.item_ids if int(i[1:]) % 4 == 3][:4]

    def at(cell):   # the fold-in scores of the model whose evidence points at one grid cell (a, g, w)
        evidence = np.zeros((5, 6, 7))
        evidence[cell] = 1.0
        model = ck.with_selection(evidence)
        assert model.choice == cell
        return model.score_from_items(recent)

    zmf = at((0, 0, 0))                                          # weights 0: the fold-in mf term alone
    ease = (at((4, 0, 0)) - zmf) / float(ease_weights(cfg)[4])   # the EASE term, per unit of weight
    pop = (at((0, 3, 6)) - zmf) / float(popularity_weights(cfg)[6])
    # Any other cell is the same three terms with that cell's weights, as in `score`.
    expected = zmf + float(ease_weights(cfg)[2]) * ease + float(popularity_weights(cfg)[4]) * pop
    np.testing.assert_allclose(at((2, 3, 4)), expected, atol=1e-6)
    # The EASE term of a taste group's items favours that group; the popularity term is the users' one.
    in_group = np.array([int(i[1:]) % 4 == 3 for i in ck.item_ids])
    assert ease[in_group].mean() > ease[~in_group].mean() + 1.0
    zpop = ck.score_parts(["u1"], ck.item_ids)[2][3]
    np.testing.assert_allclose(pop, zpop, atol=1e-5)


def test_recommend_excludes_items_seen_after_training(groups_model):
    ck = groups_model
    user = ck.user_ids[0]
    top = ck.recommend([user], k=5)[0]
    seen_since = top[:2] + ["an_item_the_model_never_saw"]   # e.g. from the online store, a list
    after = ck.recommend([user, ck.user_ids[1]], k=5, exclude={user: seen_since})
    assert after[0][:3] == top[2:5] and not set(top[:2]) & set(after[0])
    assert after[1] == ck.recommend([ck.user_ids[1]], k=5)[0]  # other users unaffected


@pytest.mark.parametrize("users", [30, 200])
def test_ease_ridge_inverse_is_the_inverse_on_either_side(users):
    # Fewer users than items takes the Woodbury side, more users the Gram side: both are (X^T X + lambda I)^-1.
    from models.ease import ridge_inverse

    gen = torch.Generator().manual_seed(users)
    x = torch.rand(users, 80, generator=gen, dtype=torch.float64) * (torch.rand(users, 80, generator=gen) < 0.2)
    gram = x.T @ x
    lam = 3.0 * float(gram.diagonal().mean())
    expected = torch.linalg.inv(gram + lam * torch.eye(80, dtype=torch.float64))
    got = ridge_inverse(x, 3.0)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(ridge_inverse(x, 6.0), expected)   # the ridge is the share asked for
