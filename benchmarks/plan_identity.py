"""Do plans stay the same? Digests of plans, channel graphs and pruned models, against a reference.

For every model (torchvision ones built with ``weights=None`` after ``torch.manual_seed(0)``,
and the conv-BN-ReLU chains of ``engine_speed.py``) this records:

* ``graph``: the channel graph's structure (every slice's module, parameter, dim, role and
  unit ids; every group's units, members and exactness; the unit-to-group map);
* ``l2`` and ``bn_scale``: ``plan.to_dict()`` of ``plan(model, 0.5, importance=...)``;
* ``pruned``: the names, dtypes, shapes and bytes of ``apply(model, l2 plan).state_dict()``,
  and that the model given to ``apply`` came back bit for bit,

each as a SHA-256 of its canonical JSON (plus a few readable numbers). Speed work must leave
all of them as they were: make the reference on the commit before the change, then check.

    PYTHONPATH=<base checkout> python benchmarks/plan_identity.py --write ref.json
    PYTHONPATH=.               python benchmarks/plan_identity.py --check ref.json
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import sys
import time
from typing import Any

MODELS = ["resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0", "regnet_y_400mf",
          "convnext_tiny", "densenet121", "shufflenet_v2_x1_0", "squeezenet1_0", "mnasnet1_0", "googlenet",
          "inception_v3", "swin_t", "maxvit_t", "vit_b_16", "chain100", "chain1000"]


def _speed_models() -> Any:
    """benchmarks/engine_speed.py, the script beside this one (its chain models)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "engine_speed.py")
    spec = importlib.util.spec_from_file_location("_engine_speed", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(spec: str) -> tuple[Any, Any]:
    import torch

    torch.manual_seed(0)
    if spec.startswith("chain"):
        return _speed_models().build(spec)
    import torchvision

    kwargs = {"aux_logits": False, "init_weights": True} if spec in ("googlenet", "inception_v3") else {}
    model = torchvision.models.get_model(spec, weights=None, **kwargs).eval()
    size = 299 if spec == "inception_v3" else 224
    return model, torch.randn(1, 3, size, size)


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def graph_structure(graph: Any) -> dict[str, Any]:
    return {
        "slices": [[s.module, s.param, s.dim, s.role, s.units.tolist()] for s in graph.slices],
        "groups": [[g.id, g.units.tolist(), list(g.members), bool(g.exact)] for g in graph.groups],
        "unit_to_group": graph.unit_to_group.tolist(),
        "num_units": int(graph.num_units),
    }


def state_digest(model: Any) -> str:
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.cpu().numpy().tobytes())
    return h.hexdigest()


def record(spec: str) -> dict[str, Any]:
    import slimprune

    model, x = build(spec)
    before = state_digest(model)
    t0 = time.perf_counter()
    analysis = slimprune.analyze(model, x, warn=False)
    out: dict[str, Any] = {"graph": digest(graph_structure(analysis.graph)), "groups": len(analysis.graph.groups)}
    l2 = None
    for importance in ("l2", "bn_scale"):
        p = slimprune.plan(model, 0.5, importance=importance, example_inputs=x)
        out[importance] = digest(p.to_dict())
        out[f"{importance}_params_after"] = p.params_after
        l2 = p if importance == "l2" else l2
    small = slimprune.apply(model, l2)
    out["pruned"] = state_digest(small)
    out["model_untouched"] = state_digest(model) == before
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", metavar="JSON", help="record the digests of this checkout into JSON")
    mode.add_argument("--check", metavar="JSON", help="compare this checkout's digests with JSON")
    ap.add_argument("--models", nargs="*", default=MODELS)
    args = ap.parse_args()
    import torch
    import warnings

    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    reference = json.load(open(args.check)) if args.check else {}
    results: dict[str, Any] = {}
    failed = []
    for spec in args.models:
        r = results[spec] = record(spec)
        if args.check:
            ref = reference.get(spec)
            keys = ("graph", "l2", "bn_scale", "pruned")
            same = ref is not None and all(r[k] == ref[k] for k in keys) and r["model_untouched"]
            diff = "missing from the reference" if ref is None else ", ".join(
                k for k in keys if r[k] != ref[k]) + ("" if r["model_untouched"] else " model changed")
            print(f"{spec:20s} {'identical' if same else 'DIFFERENT: ' + diff}  ({r['groups']} groups, "
                  f"params after l2 {r['l2_params_after']:,}, {r['seconds']} s)", flush=True)
            failed += [] if same else [spec]
        else:
            print(f"{spec:20s} recorded ({r['groups']} groups, {r['seconds']} s)", flush=True)
    if args.write:
        with open(args.write, "w") as f:
            json.dump(results, f, indent=1, sort_keys=True)
    if args.check:
        print(f"{len(args.models) - len(failed)} of {len(args.models)} identical" + (f"; different: {failed}" if failed else ""))
        sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
