"""Units are grouped by their set of members exactly, by hash or one at a time, in one order."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from slimprune import _graph, _signatures
from slimprune._signatures import group_units


def _reference(unit: np.ndarray, member: np.ndarray, pos: np.ndarray) -> list[tuple[tuple[int, ...], list[int]]]:
    """The grouping written out plainly: sets of members, then the documented orders."""
    sets: dict[int, set[int]] = {}
    first: dict[int, tuple[int, int]] = {}  # unit -> (its smallest member, its position there)
    for u, m, p in zip(unit.tolist(), member.tolist(), pos.tolist()):
        sets.setdefault(u, set()).add(m)
        if u not in first or m < first[u][0]:
            first[u] = (m, p)
    by_sig: dict[tuple[int, ...], list[int]] = {}
    for u in sorted(sets):
        by_sig.setdefault(tuple(sorted(sets[u])), []).append(u)
    groups = [(sig, sorted(units, key=lambda u: (first[u][1], u))) for sig, units in by_sig.items()]
    return sorted(groups, key=lambda g: (g[0][0], first[min(g[1])][1]))


@st.composite
def _pairs(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random units of a few random member sets (so that groups have several units), as
    (unit, member, first position) pairs in a random order; positions distinct per member."""
    n_members = draw(st.integers(1, 6))
    sets = draw(st.lists(st.frozensets(st.integers(0, n_members - 1), min_size=1), min_size=1, max_size=4))
    units = draw(st.lists(st.integers(0, 40), min_size=1, max_size=30, unique=True))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rows = [(u, m) for k, u in enumerate(units) for m in sorted(sets[k % len(sets)])]
    rows = [rows[i] for i in rng.permutation(len(rows))]
    pos = {m: rng.permutation(100).tolist() for m in range(n_members)}
    u = np.array([r[0] for r in rows], dtype=np.int64)
    m = np.array([r[1] for r in rows], dtype=np.int64)
    p = np.array([pos[mm][uu % 100] for uu, mm in rows], dtype=np.int64)
    return u, m, p


def _plain(groups: list[tuple[tuple[int, ...], np.ndarray]]) -> list[tuple[tuple[int, ...], list[int]]]:
    return [(sig, units.tolist()) for sig, units in groups]


@settings(max_examples=200, deadline=None)
@given(_pairs())
def test_grouping_by_hash_equals_the_plain_grouping(pairs) -> None:
    assert _plain(group_units(*pairs)) == _reference(*pairs)


@settings(max_examples=100, deadline=None)
@given(_pairs())
def test_a_hash_that_says_every_set_is_equal_is_caught_and_the_exact_grouping_used(pairs) -> None:
    # Every member hashes to the same word, so any two sets of one size collide; the element
    # comparison must notice and the one-at-a-time grouping answer.
    real = np.random.default_rng

    class _Constant:
        def __init__(self, seed: int) -> None:
            self._rng = real(seed)

        def integers(self, low, high, size, dtype):  # noqa: ANN001, ANN201
            return np.full(size, 7, dtype=dtype)

    np.random.default_rng = _Constant  # type: ignore[assignment]
    try:
        got = _plain(group_units(*pairs))
    finally:
        np.random.default_rng = real
    assert got == _reference(*pairs)


def test_colliding_sets_fall_back_to_the_exact_grouping(monkeypatch) -> None:
    # {0, 3} and {1, 2} have the same size and, with these words, the same hash (0+3 == 1+2)
    monkeypatch.setattr(np.random, "default_rng", lambda seed: _Words(np.array([0, 1, 2, 3], dtype=np.uint64)))
    calls: list[int] = []
    real_exact = _signatures._exact
    monkeypatch.setattr(_signatures, "_exact", lambda *a: calls.append(1) or real_exact(*a))
    unit = np.array([5, 5, 6, 6], dtype=np.int64)
    member = np.array([0, 3, 1, 2], dtype=np.int64)
    pos = np.array([0, 0, 1, 1], dtype=np.int64)
    assert _plain(group_units(unit, member, pos)) == [((0, 3), [5]), ((1, 2), [6])]
    assert calls == [1]


class _Words:
    def __init__(self, words: np.ndarray) -> None:
        self._words = words

    def integers(self, low, high, size, dtype):  # noqa: ANN001, ANN201
        return self._words[:size].astype(dtype)


def test_first_positions_are_what_unique_gives_per_array() -> None:
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 9, size=n) for n in (0, 1, 5, 12, 30)]
    values, which, pos = _graph._first_positions(arrays)
    expected = []
    for i, a in enumerate(arrays):
        u, first = np.unique(a, return_index=True)
        expected += [(int(v), i, int(p)) for v, p in zip(u, first)]
    assert sorted(zip(values.tolist(), which.tolist(), pos.tolist())) == sorted(expected)
    assert list(zip(values.tolist(), which.tolist())) == sorted(zip(values.tolist(), which.tolist()))
