"""Network slimming of YOLOv8n with Ultralytics' own trainer, on SynthFaces in YOLO format.

Phases: sparsity training (L1 on every BatchNorm γ, ``SparsityRegularizer.step()`` between
backward and the optimizer step, from a trainer subclass), pruning by threshold, fine-tuning
the pruned model with Ultralytics, and Ultralytics' ``val`` (mAP50, mAP50-95) before and
after, with params, FLOPs and CPU latency from :func:`slimprune.measure`.

    PYTHONPATH=. python -m examples.yolo.slimming [--quick] [--out runs/yolo-slimming]

Offline throughout (docs/ultralytics.md says what that takes). ``--quick`` is the smoke run
the tests use (tiny data, one epoch per phase).
"""

from __future__ import annotations

import argparse
import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "False")

import torch  # noqa: E402
from torch import nn  # noqa: E402

import slimprune  # noqa: E402
from slimprune.measure import measure  # noqa: E402
from slimprune.sparsity import SparsityRegularizer  # noqa: E402

from . import data as yolo_data  # noqa: E402
from .workflow import trainer_for  # noqa: E402


@dataclass(frozen=True)
class Config:
    n_train: int = 200
    n_val: int = 50
    imgsz: int = 160
    batch: int = 16
    sparse_epochs: int = 10
    finetune_epochs: int = 5
    lam: float = 0.1
    threshold: float = 0.05
    seed: int = 0
    # Not Ultralytics' "auto" (AdamW for short runs: Adam divides λ·sign(γ) by its own running
    # scale, so the L1 term stops pulling γ to 0) but SGD, stepping every batch (nbs = batch;
    # the default nbs=64 steps every 4th batch of 16).
    optimizer: str = "SGD"
    lr0: float = 0.01
    nbs: int = 16


# Two optimizer steps move γ (initialised to 1) by about 2·lr: the threshold sits just below 1,
# so the smoke run removes what the sparsity step pushed down and exercises every phase.
QUICK = Config(n_train=8, n_val=4, batch=4, nbs=4, sparse_epochs=1, finetune_epochs=1, lam=0.1, threshold=0.9995)


def _quiet_fonts() -> None:
    """check_det_dataset fetches Arial.ttf for plot labels when missing: use a local TTF."""
    import matplotlib
    import ultralytics.data.utils as data_utils

    dejavu = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    data_utils.check_font = lambda font="Arial.ttf": dejavu


def sparsity_trainer(yolo: Any, lam: float) -> type:
    """The task's trainer with λ·sign(γ) added to every BatchNorm γ's gradient before each step."""
    base = yolo.task_map[yolo.task]["trainer"]

    class SparsityTrainer(base):  # type: ignore[misc, valid-type]
        _reg: SparsityRegularizer | None = None
        _steps = 0

        def optimizer_step(self) -> None:
            if self._reg is None:
                bns = [m for m in self.model.modules() if isinstance(m, nn.BatchNorm2d)]
                self._reg = SparsityRegularizer(self.model, lam, bn_modules=bns)
            # Ultralytics' step (amp=False: nothing to unscale), with the L1 term added after its
            # gradient clipping: clipped together with the loss's (large) gradient, λ·sign(γ) would
            # be scaled down with it and γ would hardly move.
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm=10.0)
            self._reg.step(self._steps)
            self._steps += 1
            self.optimizer.step()
            self.optimizer.zero_grad()
            if self.ema:
                self.ema.update(self.model)

    return SparsityTrainer


def _args(cfg: Config, out: Path, name: str) -> dict[str, Any]:
    return dict(imgsz=cfg.imgsz, batch=cfg.batch, workers=0, plots=False, device="cpu", verbose=False,
                amp=False, seed=cfg.seed, deterministic=True, optimizer=cfg.optimizer, lr0=cfg.lr0, nbs=cfg.nbs, project=str(out / "runs"), name=name, exist_ok=True)


def _val(yolo: Any, data: Path, cfg: Config, out: Path, name: str) -> dict[str, float]:
    args = {k: v for k, v in _args(cfg, out, name).items() if k not in ("amp", "seed", "deterministic", "optimizer", "lr0", "nbs")}
    r = yolo.val(data=str(data), **args).results_dict
    return {"mAP50": float(r["metrics/mAP50(B)"]), "mAP50-95": float(r["metrics/mAP50-95(B)"])}


def _figures(model: nn.Module, cfg: Config, quick: bool) -> dict[str, float]:
    m = measure(model.eval(), torch.rand(1, 3, cfg.imgsz, cfg.imgsz), threads=1,
                          min_run_time=0.05 if quick else 1.0)
    assert m.latency is not None
    return {"params": int(m.params), "flops": int(m.flops), "latency_ms": m.latency.median_ms,
            "latency_iqr_ms": m.latency.iqr_ms}


def run(cfg: Config, out: Path) -> dict[str, Any]:
    quick = cfg == QUICK
    from ultralytics import YOLO
    from ultralytics.utils import SETTINGS

    SETTINGS.update(sync=False)
    _quiet_fonts()
    torch.set_num_threads(1)
    out = Path(out)
    data = yolo_data.write(out / "data", n_train=cfg.n_train, n_val=cfg.n_val, image_size=cfg.imgsz, seed=cfg.seed)
    yolo = YOLO("yolov8n.yaml", verbose=False)
    yolo.train(data=str(data), trainer=sparsity_trainer(yolo, cfg.lam), epochs=cfg.sparse_epochs,
               pretrained=False, **_args(cfg, out, "sparse"))
    dense = yolo.model.float().eval()  # best.pt, reloaded
    before = {**_val(yolo, data, cfg, out, "val-sparse"), **_figures(dense, cfg, quick)}
    gammas = torch.cat([m.weight.detach().abs().flatten() for m in dense.modules() if isinstance(m, nn.BatchNorm2d)])
    before["gamma_quantiles"] = [float(q) for q in torch.quantile(gammas, torch.tensor([0.0, 0.1, 0.25, 0.5, 0.9]))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = slimprune.plan(dense, threshold=cfg.threshold, example_inputs=torch.rand(1, 3, cfg.imgsz, cfg.imgsz))
    small = slimprune.apply(dense, plan)
    yolo.model = small
    pruned = {**_val(yolo, data, cfg, out, "val-pruned"), **_figures(small, cfg, quick)}
    yolo.train(data=str(data), trainer=trainer_for(yolo, small.train()), epochs=cfg.finetune_epochs,
               **_args(cfg, out, "finetune"))
    after = {**_val(yolo, data, cfg, out, "val-finetuned"), **_figures(yolo.model.float(), cfg, quick)}
    result = {"config": asdict(cfg), "sparse": before, "pruned": pruned, "finetuned": after,
              "channels_removed": int(sum(len(s.removed) for s in plan.changed if s.role == "scale"))}  # BN γ
    (out / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny data, one epoch per phase")
    ap.add_argument("--out", type=Path, default=Path("runs/yolo-slimming"))
    args = ap.parse_args(argv)
    result = run(QUICK if args.quick else Config(), args.out)
    print("| stage | mAP50 | mAP50-95 | params | FLOPs | CPU latency (ms, 1 thread) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for stage in ("sparse", "pruned", "finetuned"):
        r = result[stage]
        print(f"| {stage} | {r['mAP50']:.3f} | {r['mAP50-95']:.3f} | {r['params']:,} | {r['flops'] / 1e6:.1f}M | {r['latency_ms']:.2f} (IQR {r['latency_iqr_ms']:.2f}) |")


if __name__ == "__main__":
    main()
