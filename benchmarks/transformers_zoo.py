"""Hugging Face transformers through slimprune and Torch-Pruning, side by side.

Every model is built from a tiny config with random weights (nothing is downloaded): hidden
32 (Llama 64; Swin embed 16, Segformer 16/32), 2 layers (Swin depths [2, 1], windows of 4, the
second block shifted; Segformer 2 stages with spatial reduction 2 in the first), 4 heads (Llama
8 query / 2 key-value heads; Swin/Segformer 2 then 4), T5 with gated-gelu FFN and 8 relative
position buckets, vocabulary 100, inputs of batch 2 and 8 tokens (T5 decoder: 5) or 32x32
images. At ratio 0.5:

* slimprune (``plan(ratio=0.5, allow_inexact=False)``, and once more for GPT-2, Llama, a
  Llama with ``tie_word_embeddings=True`` and a T5 wrapped to return only its logits with the
  default ``allow_inexact=True``, which also prunes the hidden width): parameters removed,
  query heads before -> after (and the hidden width for those rows),
  exact against the silenced original (eval mode, rtol 1e-4 / atol 1e-5), whether the
  model's own head-count attributes match its weights, barrier ops, seconds;
* slimprune with ``prune_outputs=True`` (the returned widths declared free to go) for the
  bare encoders, T5 (``T5Model`` and ``T5ForConditionalGeneration``) and the CNN backbones,
  with ``allow_inexact=True`` (the hidden width through the norms; ``ResNetModel``:
  ``allow_inexact=False``, where no norm couples its returned channels, checked exact against
  the silenced original at the kept channels): parameters removed, heads, returned width;
* Torch-Pruning 1.6.1 as its README shows for transformers (``MetaPruner``, L2 magnitude,
  ``num_heads`` of every q/k/v projection, ``prune_num_heads=True``, output layer ignored):
  whether it ran with the output shape kept, parameters removed, heads after, the largest
  output difference from the unpruned model (it has no silenced reference; 0 would mean
  nothing that mattered was removed), and whether the head-count attributes match.

    python benchmarks/transformers_zoo.py                 # both tools, every family, sdpa
    python benchmarks/transformers_zoo.py --impl eager --tools slimprune

Timings are single runs on a shared, loaded 2-core machine: read them as orders of magnitude.
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings
from typing import Any

import torch

FAMILIES = ["bert", "distilbert", "vit", "clip", "gpt2", "llama-gqa", "t5", "swin", "segformer", "mobilevit", "resnet",
            "convnext"]
# run once more by slimprune with allow_inexact=True (the default): the hidden width too
INEXACT = ["gpt2", "llama-gqa", "llama-tied", "t5-logits", "mobilevit"]
# run once more by slimprune with prune_outputs=True: the widths the model returns may go too
PRUNE_OUTPUTS = ["bert", "distilbert", "vit", "clip", "swin", "segformer", "t5-model", "t5", "mobilevit", "resnet",
                 "convnext"]
# prune_outputs rows checked exact (allow_inexact=False): the module whose weight rows are the returned channels
EXACT_OUTPUTS = {"resnet": "encoder.stages.3.layers.0.shortcut.normalization"}
IDS = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0))
PIXELS = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def build(family: str, impl: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    import transformers as T

    torch.manual_seed(0)
    vision = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, attn_implementation=impl)
    text = {"input_ids": IDS}
    if family == "bert":
        cfg = T.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=64, attn_implementation=impl)
        return T.BertModel(cfg).eval(), {"input_ids": IDS, "token_type_ids": torch.zeros_like(IDS)}
    if family == "distilbert":
        cfg = T.DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                 max_position_embeddings=64, attn_implementation=impl)
        return T.DistilBertModel(cfg).eval(), text
    if family == "vit":
        return T.ViTModel(T.ViTConfig(**vision)).eval(), {"pixel_values": PIXELS}
    if family == "clip":
        return T.CLIPVisionModel(T.CLIPVisionConfig(**vision)).eval(), {"pixel_values": PIXELS}
    if family == "gpt2":
        cfg = T.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64, attn_implementation=impl,
                           bos_token_id=0, eos_token_id=0)
        return T.GPT2LMHeadModel(cfg).eval(), {"input_ids": IDS, "use_cache": False}
    if family == "llama-gqa":
        cfg = T.LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                            num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=64,
                            attn_implementation=impl, tie_word_embeddings=False)
        return T.LlamaForCausalLM(cfg).eval(), {"input_ids": IDS, "use_cache": False}
    if family == "llama-tied":
        cfg = T.LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                            num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=64,
                            attn_implementation=impl, tie_word_embeddings=True)
        return T.LlamaForCausalLM(cfg).eval(), {"input_ids": IDS, "use_cache": False}
    if family == "t5":  # gated-gelu: T5 v1.1's FFN (wi_0, wi_1, wo)
        cfg = T.T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                         relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", decoder_start_token_id=0,
                         pad_token_id=0, eos_token_id=1, attn_implementation=impl)
        return T.T5ForConditionalGeneration(cfg).eval(), {"input_ids": IDS, "decoder_input_ids": IDS[:, :5],
                                                          "use_cache": False}
    if family == "t5-model":  # the bare encoder-decoder: returns last_hidden_state, encoder_last_hidden_state
        model, inputs = build("t5", impl)
        torch.manual_seed(0)
        return T.T5Model(model.config).eval(), inputs
    if family == "t5-logits":  # the user keeps only the logits: the hidden width is not returned
        model, inputs = build("t5", impl)
        return T5Logits(model).eval(), {k: v for k, v in inputs.items() if k != "use_cache"}
    if family == "swin":
        cfg = T.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[2, 1], num_heads=[2, 4], window_size=4,
                           mlp_ratio=2.0, attn_implementation=impl)
        return T.SwinModel(cfg).eval(), {"pixel_values": PIXELS}
    if family == "segformer":
        cfg = T.SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32],
                                patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[2, 4], mlp_ratios=[2, 2],
                                attn_implementation=impl)
        return T.SegformerModel(cfg).eval(), {"pixel_values": PIXELS}
    if family == "mobilevit":  # eager attention only (its attention module has no sdpa path)
        cfg = T.MobileViTConfig(image_size=64, hidden_sizes=[32, 48, 64], neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 48],
                                num_attention_heads=4)
        return T.MobileViTModel(cfg).eval(), {"pixel_values": torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))}
    if family == "resnet":
        cfg = T.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 1, 1])
        return T.ResNetModel(cfg).eval(), {"pixel_values": PIXELS}
    if family == "convnext":
        cfg = T.ConvNextConfig(hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 1, 1])
        return T.ConvNextModel(cfg).eval(), {"pixel_values": PIXELS}
    raise ValueError(family)


class T5Logits(torch.nn.Module):
    """T5ForConditionalGeneration returning only its logits (not encoder_last_hidden_state)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.m = model

    def forward(self, input_ids: torch.Tensor, decoder_input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.m(input_ids=input_ids, decoder_input_ids=decoder_input_ids, use_cache=False).logits}


def hidden_width(model: torch.nn.Module) -> int | str:
    """The residual-stream width: the input embedding's (MobileViT: each block's transformer
    width, ``32/48/64``)."""
    vit = [str(m.transformer.layer[0].layernorm_before.weight.numel())
           for m in model.modules() if type(m).__name__ == "MobileViTLayer"]
    if vit:
        return "/".join(vit)
    for m in model.modules():
        if isinstance(m, torch.nn.Embedding) and m.num_embeddings == 100:
            return m.embedding_dim
    return 0


def projections(m: torch.nn.Module) -> tuple[list[torch.nn.Module], int, str | None]:
    """(q/k/v projections, head_dim, the attribute counting heads) of an attention module, or ([], 0, None)."""
    name = type(m).__name__
    if name == "BertSelfAttention":
        return [m.query, m.key, m.value], m.attention_head_size, "num_attention_heads"
    if name == "DistilBertSelfAttention":
        return [m.q_lin, m.k_lin, m.v_lin], m.attention_head_size, "n_heads"
    if name == "ViTAttention":
        return [m.q_proj, m.k_proj, m.v_proj], m.head_dim, "num_attention_heads"
    if name == "CLIPAttention":
        return [m.q_proj, m.k_proj, m.v_proj], m.head_dim, "num_heads"
    if name == "GPT2Attention":
        return [m.c_attn], m.head_dim, "num_heads"
    if name == "LlamaAttention":
        return [m.q_proj, m.k_proj, m.v_proj], m.head_dim, None
    if name == "T5Attention":
        return [m.q, m.k, m.v], m.key_value_proj_dim, "n_heads"
    if name == "MobileViTSelfAttention":
        return [m.query, m.key, m.value], m.attention_head_size, "num_attention_heads"
    if name in ("SwinAttention", "SegformerAttention"):
        return [m.q_proj, m.k_proj, m.v_proj], m.head_dim, "num_attention_heads"
    return [], 0, None


def heads(model: torch.nn.Module) -> tuple[list[int], bool]:
    """Query heads per layer from the weights, and whether every head-count attribute agrees."""
    counts, agree = [], True
    for m in model.modules():
        projs, hd, attr = projections(m)
        if not projs:
            continue
        if type(m).__name__ == "GPT2Attention":
            n = m.c_proj.weight.shape[0] // hd
            agree &= m.split_size == n * hd
        else:
            n = projs[0].weight.shape[0] // hd
        if type(m).__name__ == "LlamaAttention":
            agree &= n == m.num_key_value_groups * (projs[1].weight.shape[0] // hd)
        if attr is not None:
            agree &= getattr(m, attr) == n
        counts.append(n)
    return counts, bool(agree)


def first_tensor(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else next(v for v in out.values() if isinstance(v, torch.Tensor))


def returned_hidden(out: Any) -> torch.Tensor:
    """The returned hidden state (``last_hidden_state``, or T5's encoder one beside its logits)."""
    if not isinstance(out, tuple) and "last_hidden_state" in out:
        return out["last_hidden_state"]
    if not isinstance(out, tuple) and "encoder_last_hidden_state" in out:
        return out["encoder_last_hidden_state"]
    return first_tensor(out)


def channels(t: torch.Tensor) -> int:
    return int(t.shape[1] if t.ndim == 4 else t.shape[-1])  # NCHW feature maps, else [..., C]


def run_slimprune(family: str, impl: str, allow_inexact: bool = False, prune_outputs: bool = False) -> dict[str, Any]:
    import slimprune

    model, inputs = build(family, impl)
    n0 = sum(p.numel() for p in model.parameters())
    h0, _ = heads(model)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = slimprune.plan(model, ratio=0.5, example_inputs=inputs, allow_inexact=allow_inexact,
                              prune_outputs=prune_outputs)
    small = slimprune.apply(model, plan)
    seconds = time.perf_counter() - t0
    ref = slimprune.silence(model, plan)
    with torch.no_grad():
        out_ref, out_small = ref(**inputs), small(**inputs)
    a, b = first_tensor(out_ref), first_tensor(out_small)
    if prune_outputs and family in EXACT_OUTPUTS:  # the silenced original's output at the kept channels
        kept = torch.tensor(plan.kept(EXACT_OUTPUTS[family], "weight", 0))
        a = a.index_select(1 if a.ndim == 4 else a.ndim - 1, kept)
    h1, agree = heads(small)
    barriers = sum(str(w.message).count("\n  - ") for w in caught if issubclass(w.category, slimprune.UnsupportedOpWarning))
    return {"ran": True, "removed": 1 - sum(p.numel() for p in small.parameters()) / n0, "heads": f"{sum(h0)}->{sum(h1)}",
            "hidden": f"{hidden_width(model)}->{hidden_width(small)}",
            "returned": f"{channels(returned_hidden(out_ref))}->{channels(returned_hidden(out_small))}",
            "exact": (bool(a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-5))
                      if not allow_inexact else None),
            "counts_agree": agree,
            "barriers": barriers, "seconds": seconds}


def run_torch_pruning(family: str, impl: str) -> dict[str, Any]:
    import torch_pruning as tp

    model, inputs = build(family, impl)
    small = copy.deepcopy(model)
    n0 = sum(p.numel() for p in model.parameters())
    h0, _ = heads(model)
    num_heads = {}
    for m in small.modules():
        projs, hd, _ = projections(m)
        for p in projs:
            num_heads[p] = p.weight.shape[0] // hd // (3 if type(m).__name__ == "GPT2Attention" else 1)
    ignored = [m for name, m in small.named_modules() if name in ("lm_head", "pooler.dense")]
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pruner = tp.pruner.MetaPruner(small, inputs, importance=tp.importance.MagnitudeImportance(p=2),
                                          pruning_ratio=0.5, ignored_layers=ignored, num_heads=num_heads,
                                          prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=0.5)
            pruner.step()
        seconds = time.perf_counter() - t0
        with torch.no_grad():
            a, b = first_tensor(model(**inputs)), first_tensor(small(**inputs))
    except Exception as exc:  # noqa: BLE001 - reported in the table
        return {"ran": False, "error": f"{type(exc).__name__}: {str(exc)[:80]}"}
    if a.shape != b.shape:
        return {"ran": False, "error": f"output shape {tuple(a.shape)} -> {tuple(b.shape)}"}
    h1, agree = heads(small)
    return {"ran": True, "removed": 1 - sum(p.numel() for p in small.parameters()) / n0, "heads": f"{sum(h0)}->{sum(h1)}",
            "max_diff": float((a - b).abs().max()), "counts_agree": agree, "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", nargs="*", default=FAMILIES)
    ap.add_argument("--impl", default="sdpa", choices=["eager", "sdpa"])
    ap.add_argument("--tools", nargs="*", default=["slimprune", "torch_pruning"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"attn_implementation={args.impl}, ratio 0.5")
    print("| model | tool | ran | params removed | query heads | exact / max diff | head counts agree | barriers | s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for family in args.families:
        for tool in args.tools:
            r = run_slimprune(family, args.impl) if tool == "slimprune" else run_torch_pruning(family, args.impl)
            if not r["ran"]:
                print(f"| {family} | {tool} | no: {r['error']} | | | | | | |")
                continue
            check = ("exact" if r["exact"] else "NOT exact") if "exact" in r else f"{r['max_diff']:.3g}"
            check = "inexact allowed" if r.get("exact", False) is None else check
            print(f"| {family} | {tool} | yes | {r['removed']:.0%} | {r['heads']} | {check} | "
                  f"{'yes' if r['counts_agree'] else 'no'} | {r.get('barriers', '')} | {r['seconds']:.2f} |", flush=True)
    for family in INEXACT if "slimprune" in args.tools else []:  # the hidden width, through the norms
        if family not in args.families and family not in ("llama-tied", "t5-logits"):
            continue
        r = run_slimprune(family, args.impl, allow_inexact=True)
        print(f"| {family}, allow_inexact=True | slimprune | yes | {r['removed']:.0%} | {r['heads']}, hidden {r['hidden']} | inexact allowed | "
              f"{'yes' if r['counts_agree'] else 'no'} | {r['barriers']} | {r['seconds']:.2f} |", flush=True)
    for family in PRUNE_OUTPUTS if "slimprune" in args.tools else []:  # the returned widths declared free
        if family not in args.families and family != "t5-model":
            continue
        inexact = family not in EXACT_OUTPUTS
        r = run_slimprune(family, args.impl, allow_inexact=inexact, prune_outputs=True)
        check = "inexact allowed" if inexact else ("exact at the kept channels" if r["exact"] else "NOT exact")
        print(f"| {family}, prune_outputs=True{', allow_inexact=True' if inexact else ''} | slimprune | yes | "
              f"{r['removed']:.0%} | {r['heads']}, returned width {r['returned']} | {check} | "
              f"{'yes' if r['counts_agree'] else 'no'} | {r['barriers']} | {r['seconds']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
