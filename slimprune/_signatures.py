"""Units with the same members: grouping channels by the set of slices they appear in.

The channel graph knows, for every unit, the parameter slices (and pieces) it is a member
of; units with the same set form one :class:`~slimprune._graph.ChannelGroup`. A model has
tens of thousands of units and a few hundred groups, so the grouping is done with array
operations: each unit's set is hashed (a 64-bit sum of random words, one per member) and units are
grouped by hash, then every unit's members are compared, element by element, with those of
the first unit of its hash group. Equal hashes of different sets (about 2^-63 for any two)
are thereby never taken for equal sets: if any comparison fails,
the grouping is done again exactly, one unit at a time (:func:`_exact`). Both give the same
groups in the same order.
"""

from __future__ import annotations

import numpy as np

__all__ = ["group_units"]

Groups = list[tuple[tuple[int, ...], np.ndarray]]


def group_units(unit: np.ndarray, member: np.ndarray, pos: np.ndarray) -> Groups:
    """Units grouped by their set of members.

    Args:
        unit, member, pos: one entry per (unit, member) pair, each pair once: the unit, the
            member (a slice or piece index) and the unit's first position in that member.

    Returns:
        ``(members, units)`` per group: the sorted member indices and the units, ordered by
        their position in the group's first member, then by unit id. Groups come ordered by
        their first member, then by the position there of their smallest unit.
    """
    if not unit.size:
        return []
    unit, member = unit.astype(np.int64, copy=False), member.astype(np.int64, copy=False)
    key = unit * (int(member.max()) + 1) + member
    if not (key[1:] > key[:-1]).all():  # (pairs usually come sorted by unit, then member)
        order = np.argsort(key, kind="stable")
        unit, member, pos = unit[order], member[order], pos[order]
    starts = np.flatnonzero(np.r_[True, unit[1:] != unit[:-1]])
    lengths = np.diff(np.r_[starts, unit.size])
    label = _hash_groups(member, starts, lengths)
    if label is None:
        return _exact(unit, member, pos, starts, lengths)
    first_member, first_pos, first_unit = member[starts], pos[starts], unit[starts]
    n_groups = int(label.max()) + 1
    # the group's first unit in unit order (runs are sorted by unit)
    head = np.full(n_groups, starts.size, dtype=np.int64)
    np.minimum.at(head, label, np.arange(starts.size))
    rank = np.empty(n_groups, dtype=np.int64)
    rank[np.lexsort((first_pos[head], first_member[head]))] = np.arange(n_groups)
    gid = rank[label]
    runs = np.lexsort((first_unit, first_pos, gid))
    bounds = np.r_[0, np.flatnonzero(np.diff(gid[runs])) + 1, runs.size]
    out: Groups = []
    for g in range(n_groups):
        chosen = runs[bounds[g]:bounds[g + 1]]
        r = chosen[0]
        sig = tuple(member[starts[r]:starts[r] + lengths[r]].tolist())
        out.append((sig, first_unit[chosen]))
    return out


def _hash_groups(member: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray | None:
    """A group label per run of ``member`` (one run per unit), equal exactly for equal runs;
    None when two different runs hashed alike."""
    words = np.random.default_rng(0x5EED).integers(0, 2**63, size=int(member.max()) + 1, dtype=np.uint64)
    _, first, label = np.unique(np.add.reduceat(words[member], starts), return_index=True, return_inverse=True)
    label = label.ravel()
    # every run against the first run of its label: its length, then member by member
    rep = first[label]
    if not np.array_equal(lengths, lengths[rep]):
        return None
    run_of = np.repeat(np.arange(starts.size), lengths)
    offset = np.arange(member.size) - starts[run_of]
    if not np.array_equal(member, member[starts[rep[run_of]] + offset]):
        return None
    return label


def _exact(unit: np.ndarray, member: np.ndarray, pos: np.ndarray, starts: np.ndarray,
           lengths: np.ndarray) -> Groups:
    """:func:`group_units`, one unit at a time: each run of members is a key of its own."""
    buf, width = member.tobytes(), member.itemsize
    pos_list, unit_list = pos.tolist(), unit.tolist()
    by_sig: dict[bytes, list[tuple[int, int]]] = {}
    for st, n in zip(starts.tolist(), lengths.tolist()):
        by_sig.setdefault(buf[st * width:(st + n) * width], []).append((pos_list[st], unit_list[st]))
    sigs = {key: tuple(np.frombuffer(key, dtype=np.int64).tolist()) for key in by_sig}
    ordered = sorted(by_sig.items(), key=lambda kv: (sigs[kv[0]][0], kv[1][0][0]))
    return [(sigs[key], np.array([u for _, u in sorted(items)], dtype=np.int64)) for key, items in ordered]
