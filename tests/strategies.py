"""Hypothesis strategies that draw SpecNet programs (random DAG architectures)."""

from __future__ import annotations

from hypothesis import strategies as st

ACT_ZERO = ["relu", "relu6", "silu", "hardswish", "leaky", "gelu", "tanh", "identity"]  # act(0) == 0


@st.composite
def programs(draw, max_ops: int = 7, size: int = 16):
    """A list of op tuples for tests.models.SpecNet, consistent in channels and spatial size."""
    c, h = 3, size
    prog = []
    width = draw(st.integers(3, 8))
    prog.append(("cba", width, 3, 1, 1, draw(st.sampled_from(ACT_ZERO))))
    c = width
    for _ in range(draw(st.integers(1, max_ops))):
        kinds = ["cba", "res", "cat", "split", "se", "dw", "out", "gconv", "write", "operand"]
        if c >= 2 and h >= 2:
            kinds.append("piece")
        if c % 2 == 0:
            kinds.append("shuffle")
        if h % 2 == 0 and h >= 4:
            kinds += ["fpn", "pool"]
        if c <= 16:
            kinds.append("view")
        kind = draw(st.sampled_from(kinds))
        act = draw(st.sampled_from(ACT_ZERO))
        if kind == "cba":
            cout = draw(st.integers(2, 12))
            k = draw(st.sampled_from([1, 3]))
            stride = draw(st.sampled_from([1, 2])) if h >= 4 else 1
            prog.append(("cba", cout, k, stride, 1, act))
            c, h = cout, (h + 2 * (k // 2) - k) // stride + 1
        elif kind == "gconv":
            g = draw(st.sampled_from([g for g in (2, 3, 4) if c % g == 0] or [1]))
            cout = g * draw(st.integers(1, 4))
            prog.append(("cba", cout, 3, 1, g, act))
            c = cout
        elif kind == "res":
            cout = draw(st.sampled_from([c, draw(st.integers(2, 12))]))
            stride = draw(st.sampled_from([1, 2])) if h >= 4 else 1
            prog.append(("res", cout, stride, act))
            c, h = cout, (h - 1) // stride + 1
        elif kind == "cat":
            c1, c2 = draw(st.integers(1, 8)), draw(st.integers(1, 8))
            prog.append(("cat", c1, c2, act))
            c = c1 + c2
        elif kind == "split":
            if c < 2:
                continue
            mode = "chunk" if c % 2 == 0 and draw(st.booleans()) else "split"
            first = c // 2 if mode == "chunk" else draw(st.integers(1, c - 1))
            prog.append(("split", first, mode, act))
        elif kind == "se":
            prog.append(("se", draw(st.integers(1, 4)), draw(st.sampled_from(["conv", "linear"]))))
        elif kind == "dw":
            prog.append(("dw", draw(st.sampled_from([1, 1, 2])), act))
            c = c * prog[-1][1]
        elif kind == "fpn":
            cmid = draw(st.integers(2, 8))
            mode = draw(st.sampled_from(["add", "cat"]))
            prog.append(("fpn", cmid, mode, act))
            c = cmid if mode == "add" else c + cmid
        elif kind == "pool":
            prog.append(("pool",))
            h //= 2
        elif kind == "shuffle":
            prog.append(("shuffle",))
        elif kind == "view":
            prog.append(("view", c, h))
        elif kind == "out":
            prog.append(("out",))
        elif kind == "write":
            prog.append(("write", draw(st.integers(1, c)), draw(st.sampled_from(["+=", "*=", "add_", "clamp_"]))))
        elif kind == "operand":
            prog.append(("operand", draw(st.sampled_from(["clamp", "pow", "maximum"]))))
        elif kind == "piece":
            prog.append(("piece", draw(st.integers(1, c - 1)),
                         draw(st.sampled_from(["maxpool", "avgpool", "reflect", "bilinear"]))))
    return prog
