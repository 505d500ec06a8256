"""Hugging Face transformers, built from tiny configs with random weights (no downloads).

Every family traces (concretely: their forwards branch on shapes and read ``**kwargs``) with
either attention implementation; whole attention heads (grouped-query: a key/value head with
its query group) and MLP widths are removed; the pruned model equals the silenced original,
keeps its class, its own ``forward`` and its output type, and its head-count attributes
follow the weights. ``generate()`` with a KV cache gives the silenced original's tokens.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import transformers

import slimprune
from slimprune._trace import trace
from slimprune.measure import measure

from .helpers import assert_pruned_equals_silenced
from .models import TinyResNet

IDS = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0))
IMPLEMENTATIONS = ["eager", "sdpa"]


def tiny_bert(impl: str) -> transformers.BertModel:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=64, attn_implementation=impl)
    return transformers.BertModel(cfg).eval()


def tiny_gpt2(impl: str) -> transformers.GPT2LMHeadModel:
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                  attn_implementation=impl, bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def bert_inputs() -> dict[str, torch.Tensor]:
    return {"input_ids": IDS, "token_type_ids": torch.zeros_like(IDS)}


def plan_quietly(model: torch.nn.Module, **kw: object) -> tuple[slimprune.PruningPlan, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = slimprune.plan(model, **kw)
    return plan, [str(w.message) for w in caught if issubclass(w.category, slimprune.UnsupportedOpWarning)]


def test_keyword_inputs_give_the_plan_positional_inputs_give() -> None:
    model = TinyResNet().eval()
    x = torch.randn(2, 3, 32, 32)
    by_name = slimprune.plan(model, 0.5, example_inputs={"x": x})
    by_position = slimprune.plan(model, 0.5, example_inputs=x)
    assert by_name.slices == by_position.slices and by_name.params_after == by_position.params_after
    assert_pruned_equals_silenced(model, by_name, {"x": x})


FAMILIES = ["bert", "distilbert", "vit", "clip", "gpt2", "llama-gqa"]


def build(family: str, impl: str) -> tuple[torch.nn.Module, dict[str, object]]:
    """A tiny random-weight model of ``family`` and its keyword example inputs."""
    torch.manual_seed(0)
    pixels = {"pixel_values": torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))}
    vision = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, attn_implementation=impl)
    if family == "bert":
        return tiny_bert(impl), bert_inputs()
    if family == "distilbert":
        cfg = transformers.DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                            max_position_embeddings=64, attn_implementation=impl)
        return transformers.DistilBertModel(cfg).eval(), {"input_ids": IDS}
    if family == "vit":
        return transformers.ViTModel(transformers.ViTConfig(**vision)).eval(), pixels
    if family == "clip":
        return transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**vision)).eval(), pixels
    if family == "gpt2":
        return tiny_gpt2(impl), {"input_ids": IDS, "use_cache": False}
    if family == "llama-gqa":
        return tiny_llama(impl), {"input_ids": IDS, "use_cache": False}
    raise ValueError(family)


def tiny_llama(impl: str) -> transformers.LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=64,
                                   attn_implementation=impl, tie_word_embeddings=False)
    return transformers.LlamaForCausalLM(cfg).eval()


def heads_per_layer(model: torch.nn.Module) -> list[int]:
    """Query heads of every attention module, from the q projection's width (Conv1D: c_proj's input)."""
    out = []
    for m in model.modules():
        name = type(m).__name__
        if name in ("BertSelfAttention", "DistilBertSelfAttention"):
            q = m.query if hasattr(m, "query") else m.q_lin
            out.append(q.out_features // m.attention_head_size)
        elif name in ("ViTAttention", "CLIPAttention", "LlamaAttention"):
            out.append(m.q_proj.out_features // m.head_dim)
        elif name == "GPT2Attention":
            out.append(m.c_proj.weight.shape[0] // m.head_dim)
    return out


def counted_heads(model: torch.nn.Module) -> list[int]:
    """The head counts the attention modules' own attributes say (what their resizers keep)."""
    out = []
    for m in model.modules():
        for attr in ("num_attention_heads", "n_heads", "num_heads"):
            if type(m).__name__.endswith("Attention") and isinstance(getattr(m, attr, None), int):
                out.append(getattr(m, attr))
                break
        else:
            if type(m).__name__ == "LlamaAttention":
                out.append(m.q_proj.out_features // m.head_dim)
    return out


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("family", FAMILIES)
def test_attention_heads_are_removed_exactly_without_a_barrier(family: str, impl: str) -> None:
    model, inputs = build(family, impl)
    before = heads_per_layer(model)
    plan, barriers = plan_quietly(model, ratio=0.5, example_inputs=inputs, allow_inexact=False)
    assert not barriers, barriers
    small = assert_pruned_equals_silenced(model, plan, inputs)
    after = heads_per_layer(small)
    assert len(after) == len(before) == 2 and sum(after) < sum(before) and min(after) >= 1
    if family != "llama-gqa":
        assert counted_heads(small) == after  # the attributes the forward may read follow the weights
    # drop-in: same class, the model's own forward (no rewritten graph), same output type
    assert type(small) is type(model) and not isinstance(small, slimprune.Rewritten)
    assert type(small(**inputs)) is type(model(**inputs))


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_bert_traces_concretely_and_updates_its_head_counts(impl: str) -> None:
    model = tiny_bert(impl)
    inputs = bert_inputs()
    assert trace(model, inputs).method == "concrete"
    plan, barriers = plan_quietly(model, ratio=0.5, example_inputs=inputs)
    assert not barriers
    small = assert_pruned_equals_silenced(model, plan, inputs)
    assert isinstance(small(**inputs), transformers.modeling_outputs.BaseModelOutputWithPoolingAndCrossAttentions)
    for layer in small.encoder.layer:
        att = layer.attention.self
        assert att.all_head_size == att.query.out_features == att.num_attention_heads * att.attention_head_size
        assert att.attention_head_size == 8  # whole heads: the softmax scale is unchanged
        assert layer.attention.output.dense.in_features == att.all_head_size


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_gpt2_conv1d_mlp_widths_and_fused_qkv_heads_are_removed_exactly(impl: str) -> None:
    model = tiny_gpt2(impl)
    inputs = {"input_ids": IDS, "use_cache": False}  # a non-tensor keyword is a constant of the trace
    assert trace(model, inputs).method == "concrete"
    # exact: heads and MLP widths (the hidden width through LayerNorm is inexact, tested below)
    plan, barriers = plan_quietly(model, ratio=0.5, example_inputs=inputs, allow_inexact=False)
    assert plan.params_after < plan.params_before
    small = assert_pruned_equals_silenced(model, plan, inputs)
    assert type(small) is transformers.GPT2LMHeadModel and not isinstance(small, slimprune.Rewritten)
    for block in small.transformer.h:  # Conv1D's weight is (in, out): nf follows it
        assert block.mlp.c_fc.nf == block.mlp.c_fc.weight.shape[1] == block.mlp.c_proj.nx < 128
        att = block.attn  # c_attn holds q, k, v side by side: split_size is each one's width
        assert att.c_attn.nf == 3 * att.split_size == 3 * att.num_heads * att.head_dim == 3 * att.c_proj.nx
    assert not barriers  # the tied wte/lm_head is one tensor sliced once, not a barrier
    assert small.lm_head.weight is small.transformer.wte.weight


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_llama_gqa_removes_a_key_value_head_with_its_query_group(impl: str) -> None:
    model = tiny_llama(impl)
    inputs = {"input_ids": IDS, "use_cache": False}
    plan, barriers = plan_quietly(model, ratio=0.5, example_inputs=inputs, allow_inexact=False)
    assert not barriers
    small = assert_pruned_equals_silenced(model, plan, inputs)
    kv_before = [layer.self_attn.k_proj.out_features // 8 for layer in model.model.layers]
    for layer in small.model.layers:
        att = layer.self_attn
        q_heads, kv_heads = att.q_proj.out_features // att.head_dim, att.k_proj.out_features // att.head_dim
        assert att.v_proj.out_features == att.k_proj.out_features and att.o_proj.in_features == att.q_proj.out_features
        assert q_heads == att.num_key_value_groups * kv_heads and att.num_key_value_groups == 4  # groups stay whole
    assert sum(layer.self_attn.k_proj.out_features // 8 for layer in small.model.layers) < sum(kv_before)


def _greedy(model: torch.nn.Module, prompt: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=True, pad_token_id=0)


@pytest.mark.parametrize("family", ["gpt2", "llama-gqa"])
def test_generate_with_a_kv_cache_gives_the_silenced_originals_tokens(family: str) -> None:
    model, inputs = build(family, "sdpa")
    plan, _ = plan_quietly(model, ratio=0.5, example_inputs=inputs, allow_inexact=False)
    small = slimprune.apply(model, plan)
    ref = slimprune.silence(model, plan)
    prompt = IDS[:, :3]
    tokens = _greedy(small, prompt)
    assert tokens.shape == (2, 11) and torch.equal(tokens, _greedy(ref, prompt))
    # and one step at a time, the logits with the cache equal the silenced original's
    with torch.no_grad():
        a, b = small(prompt, use_cache=True), ref(prompt, use_cache=True)
        nxt = tokens[:, 3:4]
        a2 = small(nxt, past_key_values=a.past_key_values, use_cache=True).logits
        b2 = ref(nxt, past_key_values=b.past_key_values, use_cache=True).logits
    assert torch.allclose(a2, b2, atol=1e-5)


def test_pruned_gpt2_survives_deepcopy_pickle_and_slimprune_save(tmp_path) -> None:
    import copy

    model, inputs = build("gpt2", "eager")
    plan, _ = plan_quietly(model, ratio=0.5, example_inputs=inputs)
    small = slimprune.apply(model, plan)
    expect = small(**inputs).logits
    torch.save(small, tmp_path / "m.pt")
    slimprune.save(small, tmp_path / "m.safetensors", plan=plan)
    again = [copy.deepcopy(small), torch.load(tmp_path / "m.pt", weights_only=False),
             slimprune.load(tmp_path / "m.safetensors", lambda: tiny_gpt2("eager"))]
    for m in again:
        assert type(m) is transformers.GPT2LMHeadModel and m.config.n_head == 4
        assert [b.attn.num_heads for b in m.transformer.h] == [b.attn.num_heads for b in small.transformer.h]
        assert [b.attn.split_size for b in m.transformer.h] == [b.attn.split_size for b in small.transformer.h]
        assert torch.equal(m(**inputs).logits, expect)


class CountingAttention(torch.nn.Module):
    """Attention whose forward reads its own head count (``self.num_heads``) and no resizer."""

    def __init__(self) -> None:
        super().__init__()
        self.num_heads, self.head_dim = 4, 8
        self.q, self.k, self.v, self.o = (torch.nn.Linear(32, 32) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (p(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2) for p in (self.q, self.k, self.v))
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.o(y.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))


class CountingBlock(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp, self.attn, self.out = torch.nn.Linear(8, 32), CountingAttention(), torch.nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.attn(self.inp(x))))


def test_heads_counted_by_an_attribute_without_a_resizer_are_a_named_barrier() -> None:
    torch.manual_seed(0)
    model = CountingBlock().eval()
    x = torch.randn(2, 5, 8)
    plan, barriers = plan_quietly(model, ratio=0.5, example_inputs=x)
    assert any("attn (CountingAttention) reads self.num_heads" in b for b in barriers), barriers
    small = assert_pruned_equals_silenced(model, plan, x)
    assert small.attn.q.out_features == 32 and small.attn.num_heads == 4  # never a stale count


def test_measure_takes_keyword_inputs_of_a_transformer() -> None:
    model = tiny_bert("eager")
    inputs = bert_inputs()
    result = measure(model, inputs, latency=False)
    assert result.flops > 0 and result.input_shapes == ((2, 8), (2, 8))


def test_taylor_importance_ranks_by_weight_times_gradient_not_by_magnitude() -> None:
    """Hidden units 0-3 have big input rows but zero output weights: the loss does not see
    them, so Taylor removes them first, where magnitude would keep them."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    with torch.no_grad():
        model[0].weight[:4] *= 100
        model[2].weight[:, :4] = 0
    x = torch.randn(16, 4)
    batches = [(x[:8],), (x[8:],)]
    importance = slimprune.taylor_importance(batches, loss=lambda out, batch: out.pow(2).mean())
    model[2].weight.requires_grad_(False)  # a frozen weight: Taylor needs its grad, gives it back
    taylor = slimprune.plan(model, ratio=0.5, example_inputs=x, importance=importance)
    magnitude = slimprune.plan(model, ratio=0.5, example_inputs=x, importance="l2")
    assert taylor.kept("0", "weight", 0) == (4, 5, 6, 7)
    assert magnitude.kept("0", "weight", 0) != (4, 5, 6, 7)
    assert not model[2].weight.requires_grad and all(p.grad is None for p in model.parameters())
    assert_pruned_equals_silenced(model, taylor, x)


def test_taylor_importance_uses_a_hugging_face_models_own_loss() -> None:
    model = tiny_gpt2("eager")
    batches = [{"input_ids": IDS, "labels": IDS, "use_cache": False}]
    inputs = {"input_ids": IDS, "use_cache": False}
    plan, _ = plan_quietly(model, ratio=0.5, example_inputs=inputs, importance=slimprune.taylor_importance(batches),
                           allow_inexact=False)
    assert plan.params_after < plan.params_before
    assert_pruned_equals_silenced(model, plan, inputs)
    with pytest.raises(slimprune.InvalidArgumentError, match="needs a loss"):
        slimprune.plan(model, ratio=0.5, example_inputs=inputs, importance=slimprune.taylor_importance([inputs]))


def test_llama_hidden_width_goes_through_rmsnorm_only_when_inexact_is_allowed() -> None:
    model = tiny_llama("sdpa")
    inputs = {"input_ids": IDS, "use_cache": False}
    exact, _ = plan_quietly(model, ratio=0.5, example_inputs=inputs, allow_inexact=False)
    loose, barriers = plan_quietly(model, ratio=0.5, example_inputs=inputs)  # allow_inexact=True: the default
    assert not barriers
    def norm_groups(plan: slimprune.PruningPlan) -> list:
        return [g for g in plan.groups if any(m.startswith("model.norm.weight") for m in g.members)]

    hidden = norm_groups(loose)
    assert len(hidden) == 1 and not hidden[0].exact and hidden[0].removed  # the plan says it is inexact
    assert all(not g.removed for g in norm_groups(exact))
    small = slimprune.apply(model, loose)
    width = small.model.embed_tokens.embedding_dim
    assert width == small.model.norm.weight.numel() == small.lm_head.in_features < 64
    assert loose.params_after < exact.params_after
    assert _greedy(small, IDS[:, :3]).shape == (2, 11)  # generate() runs at the narrower width


class PlainAttention(torch.nn.Module):
    """Multi-head attention in plain torch, as HF writes it: ``view(b, n, -1, head_dim)``."""

    def __init__(self, sdpa: bool) -> None:
        super().__init__()
        self.sdpa, self.head_dim = sdpa, 8
        self.inp, self.o, self.out = torch.nn.Linear(6, 16), torch.nn.Linear(32, 16), torch.nn.Linear(16, 3)
        self.q, self.k, self.v = (torch.nn.Linear(16, 32) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        b, n, _ = h.shape
        q, k, v = (p(h).view(b, n, -1, self.head_dim).transpose(1, 2) for p in (self.q, self.k, self.v))
        if self.sdpa:
            y = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        else:
            y = torch.matmul(torch.softmax(torch.matmul(q, k.transpose(2, 3)) * self.head_dim ** -0.5, -1), v)
        return self.out(self.o(y.transpose(1, 2).reshape(b, n, -1)))


@pytest.mark.parametrize("sdpa", [False, True], ids=["matmul", "sdpa"])
def test_plain_torch_attention_loses_whole_heads_exactly(sdpa: bool) -> None:
    torch.manual_seed(0)
    model = PlainAttention(sdpa).eval()
    x = torch.randn(2, 5, 6)
    plan, barriers = plan_quietly(model, ratio=0.5, example_inputs=x, protect=["inp"])
    assert not barriers
    small = assert_pruned_equals_silenced(model, plan, x)
    width = small.q.out_features
    assert width < 32 and width % 8 == 0  # whole heads of 8: the softmax scale is unchanged
    assert small.k.out_features == small.v.out_features == small.o.in_features == width


def tiny_t5(impl: str, ff: str = "relu") -> transformers.T5ForConditionalGeneration:
    torch.manual_seed(0)
    cfg = transformers.T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                relative_attention_num_buckets=8, feed_forward_proj=ff, decoder_start_token_id=0,
                                pad_token_id=0, eos_token_id=1, attn_implementation=impl)
    return transformers.T5ForConditionalGeneration(cfg).eval()


T5_INPUTS = {"input_ids": IDS, "decoder_input_ids": IDS[:, :5], "use_cache": False}


@pytest.mark.parametrize("ff", ["relu", "gated-gelu"])
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_t5_heads_go_with_their_relative_position_bias_columns_exactly(impl: str, ff: str) -> None:
    model = tiny_t5(impl, ff)
    plan, barriers = plan_quietly(model, ratio=0.5, example_inputs=T5_INPUTS, allow_inexact=False)
    assert not barriers, barriers
    small = assert_pruned_equals_silenced(model, plan, T5_INPUTS)
    assert type(small) is type(model) and not isinstance(small, slimprune.Rewritten)
    for stack in (small.encoder, small.decoder):
        first = stack.block[0].layer[0].SelfAttention
        heads = [b.layer[0].SelfAttention.n_heads for b in stack.block]
        # the bias table is computed once, by the first layer, and reused: every layer's
        # self-attention keeps the same heads, and the table keeps their columns
        assert first.relative_attention_bias.embedding_dim == heads[0] == heads[1]
        for b in stack.block:
            att = b.layer[0].SelfAttention
            assert att.q.out_features == att.k.out_features == att.v.out_features == att.o.in_features == att.inner_dim
            assert att.inner_dim == att.n_heads * att.key_value_proj_dim
    assert small.encoder.block[0].layer[0].SelfAttention.n_heads < 4
    # cross-attention: the first decoder layer's zero position bias, torch.zeros((1, n_heads, q, k)),
    # is reused by the next layer, so every layer's cross-attention keeps the same heads
    cross = [b.layer[1].EncDecAttention for b in small.decoder.block]
    assert cross[0].n_heads == cross[1].n_heads < 4
    for att in cross:
        assert att.q.out_features == att.k.out_features == att.v.out_features == att.o.in_features == att.inner_dim
        assert att.inner_dim == att.n_heads * att.key_value_proj_dim
    ffn = [b.layer[-1].DenseReluDense for b in small.encoder.block]
    assert all(f.wo.in_features < 64 for f in ffn)
    if ff.startswith("gated"):
        assert all(f.wi_0.out_features == f.wi_1.out_features == f.wo.in_features for f in ffn)


def test_t5_generate_gives_the_silenced_originals_tokens() -> None:
    model = tiny_t5("sdpa", "gated-gelu")
    plan, _ = plan_quietly(model, ratio=0.5, example_inputs=T5_INPUTS, allow_inexact=False)
    small, ref = slimprune.apply(model, plan), slimprune.silence(model, plan)
    assert small.decoder.block[0].layer[0].SelfAttention.n_heads < 4
    assert small.decoder.block[1].layer[1].EncDecAttention.n_heads < 4  # cross-attention heads too
    mask = torch.ones_like(IDS)
    mask[1, 6:] = 0  # a padded source: the encoder mask is added to the cross-attention's zero bias
    with torch.no_grad():
        a = small.generate(IDS, attention_mask=mask, max_new_tokens=6, do_sample=False, use_cache=True)
        b = ref.generate(IDS, attention_mask=mask, max_new_tokens=6, do_sample=False, use_cache=True)
    assert a.shape[1] > 1 and torch.equal(a, b)


def tiny_vision(family: str, impl: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if family == "swin":  # 8x8 patches, windows of 4: the second block of stage 1 is shifted (roll)
        cfg = transformers.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[2, 1], num_heads=[2, 4],
                                      window_size=4, mlp_ratio=2.0, attn_implementation=impl)
        return transformers.SwinModel(cfg).eval()
    cfg = transformers.SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32],
                                       patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[2, 4],
                                       mlp_ratios=[2, 2], attn_implementation=impl)
    return transformers.SegformerModel(cfg).eval()


def vision_heads(model: torch.nn.Module) -> list[tuple[int, int]]:
    """(query heads from the weights, the module's num_attention_heads) per attention module."""
    return [(m.q_proj.out_features // m.head_dim, m.num_attention_heads) for m in model.modules()
            if type(m).__name__ in ("SwinAttention", "SegformerAttention")]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("family", ["swin", "segformer"])
def test_swin_and_segformer_heads_and_mlp_widths_are_removed_exactly(family: str, impl: str) -> None:
    model = tiny_vision(family, impl)
    pixels = {"pixel_values": torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))}
    plan, barriers = plan_quietly(model, ratio=0.5, example_inputs=pixels, allow_inexact=False)
    assert not barriers
    small = assert_pruned_equals_silenced(model, plan, pixels)
    before, after = vision_heads(model), vision_heads(small)
    assert all(w == n for w, n in after) and sum(w for w, _ in after) < sum(w for w, _ in before)
    assert min(w for w, _ in after) >= 1
    if family == "swin":  # the (2W-1)^2 x heads table keeps the columns of the kept heads
        for m in small.modules():
            if type(m).__name__ == "SwinAttention":
                assert m.relative_position_bias.relative_position_bias_table.shape == (49, m.num_attention_heads)
    else:  # the Mix-FFN: fc1 -> depthwise conv -> fc2, one width
        for m in small.modules():
            if type(m).__name__ == "SegformerMixMLP":
                conv = m.dwconv.dwconv
                assert m.fc1.out_features == conv.in_channels == conv.groups == m.fc2.in_features
        assert any(m.fc1.out_features < m.fc1.in_features * 2 for m in small.modules()
                   if type(m).__name__ == "SegformerMixMLP")
    assert type(small) is type(model) and not isinstance(small, slimprune.Rewritten)


def tiny_tied_llama() -> transformers.LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=True)
    return transformers.LlamaForCausalLM(cfg).eval()


def _embeddings(model: torch.nn.Module) -> tuple[torch.nn.Parameter, torch.nn.Parameter]:
    inner = model.transformer.wte if hasattr(model, "transformer") else model.model.embed_tokens
    return inner.weight, model.lm_head.weight


@pytest.mark.parametrize("family", ["gpt2", "llama-tied"])
def test_tied_input_and_output_embeddings_stay_one_tensor_through_pruning_and_round_trips(family: str, tmp_path) -> None:
    import copy

    model = tiny_gpt2("sdpa") if family == "gpt2" else tiny_tied_llama()
    factory = (lambda: tiny_gpt2("sdpa")) if family == "gpt2" else tiny_tied_llama
    inputs = {"input_ids": IDS, "use_cache": False}
    exact, barriers = plan_quietly(model, ratio=0.5, example_inputs=inputs, allow_inexact=False)
    assert not barriers  # kept because the hidden width is inexact, not because the tie is unknown
    assert exact.kept("lm_head", "weight", 1) is None or len(exact.kept("lm_head", "weight", 1)) == _embeddings(model)[0].shape[1]
    assert_pruned_equals_silenced(model, exact, inputs)
    loose, barriers = plan_quietly(model, ratio=0.5, example_inputs=inputs)  # allow_inexact=True, the default
    assert not barriers
    small = slimprune.apply(model, loose)
    wte, head = _embeddings(small)
    assert head is wte and wte.shape[0] == 100
    assert _embeddings(model)[1] is _embeddings(model)[0] and _embeddings(model)[0].shape[1] in (32, 64)  # untouched
    if family == "llama-tied":  # the hidden width went, through RMSNorm, embeddings and the tied lm_head at once
        assert wte.shape[1] == small.model.norm.weight.numel() < 64 and small.config.hidden_size == 64
    else:  # GPT-2's too: through LayerNorm, wte/wpe, and the output_shape its forward reshapes to
        assert wte.shape[1] == small.transformer.ln_f.weight.numel() < 32 and small.config.n_embd == 32
        assert small.lm_head.bias is None  # (no constant folded into the tied head)
    assert _greedy(small, IDS[:, :3]).shape == (2, 11)
    expect = small(**inputs).logits
    torch.save(small, tmp_path / "m.pt")
    slimprune.save(small, tmp_path / "m.safetensors", plan=loose)
    for again in (copy.deepcopy(small), torch.load(tmp_path / "m.pt", weights_only=False),
                  slimprune.load(tmp_path / "m.safetensors", factory)):
        wte2, head2 = _embeddings(again)
        assert head2 is wte2 and wte2.shape == wte.shape
        assert torch.equal(again(**inputs).logits, expect)


@pytest.mark.parametrize("family", ["bert-cls", "vit-cls"])
def test_a_task_heads_encoder_loses_its_hidden_width_only_when_inexact_is_allowed(family: str) -> None:
    """The logits are the user's output, the hidden states are not: under allow_inexact the
    residual width through LayerNorm goes (one group, marked inexact); under exact it stays."""
    torch.manual_seed(0)
    if family == "bert-cls":
        cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=64, max_position_embeddings=64, num_labels=3)
        model, inputs = transformers.BertForSequenceClassification(cfg).eval(), bert_inputs()
    else:
        cfg = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64, num_labels=3)
        pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        model, inputs = transformers.ViTForImageClassification(cfg).eval(), {"pixel_values": pixels}
    exact, barriers = plan_quietly(model, ratio=0.5, example_inputs=inputs, allow_inexact=False)
    assert not barriers and all(g.exact for g in exact.groups if g.removed)
    assert_pruned_equals_silenced(model, exact, inputs)
    loose, barriers = plan_quietly(model, ratio=0.5, example_inputs=inputs)  # allow_inexact=True, the default
    assert not barriers
    hidden = [g for g in loose.groups if not g.exact]
    assert len(hidden) == 1 and hidden[0].removed and loose.params_after < exact.params_after
    small = slimprune.apply(model, loose)
    assert small.classifier.in_features < 32 and small(**inputs).logits.shape == (2, 3)
    assert type(small) is type(model) and not isinstance(small, slimprune.Rewritten)


class KeptLayerNorm(torch.nn.Module):
    """A silenced LayerNorm that normalises over the kept channels only: what the pruned
    model's narrower LayerNorm computes, laid out at the original width (the removed
    channels output what the silenced norm outputs there, its shift)."""

    def __init__(self, norm: torch.nn.LayerNorm, kept: tuple[int, ...]) -> None:
        super().__init__()
        self.norm, self.kept = norm, list(kept)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if getattr(self.norm, "data_format", "channels_last") == "channels_first":  # (ConvNextLayerNorm)
            return self._over_last(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self._over_last(x)

    def _over_last(self, x: torch.Tensor) -> torch.Tensor:
        k, n = self.kept, self.norm
        out = n.bias.expand_as(x).clone()
        out[..., k] = torch.nn.functional.layer_norm(x[..., k], (len(k),), n.weight[k], n.bias[k], n.eps)
        return out


def norms_over_kept_channels(model: torch.nn.Module, plan: slimprune.PruningPlan) -> torch.nn.Module:
    """``silence(model, plan)`` with every LayerNorm the plan narrows computed over its kept
    channels: the one inexactness an inexact hidden-width group declares, made explicit."""
    ref = slimprune.silence(model, plan)
    for name, m in list(ref.named_modules()):
        kept = plan.kept(name, "weight", 0) if isinstance(m, torch.nn.LayerNorm) else None
        if kept is not None and len(kept) < m.weight.numel():
            parent, _, attr = name.rpartition(".")
            setattr(ref.get_submodule(parent), attr, KeptLayerNorm(m, kept))
    return ref


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_gpt2_loses_its_hidden_width_under_allow_inexact_and_computes_the_silenced_original_with_narrower_norms(impl: str) -> None:
    """GPT2Model reshapes its last hidden state to ``(-1,) + input_shape[1:] + (h.size(-1),)``
    with ``h`` read after the embeddings: that size is the hidden width's own group, so the
    width goes (64 -> 32 style), and the pruned model is the silenced original up to exactly
    the LayerNorm statistics the plan declares inexact."""
    model = tiny_gpt2(impl)
    for m in model.modules():  # non-trivial norm scales and shifts: the shift of a removed channel is a constant
        if isinstance(m, torch.nn.LayerNorm):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.normal_(m.bias, std=0.2)
    inputs = {"input_ids": IDS, "use_cache": False}
    plan, barriers = plan_quietly(model, ratio=0.5, example_inputs=inputs)  # allow_inexact=True, the default
    assert not barriers
    hidden = [g for g in plan.groups if any(m.startswith("transformer.ln_f.weight") for m in g.members)]
    assert len(hidden) == 1 and not hidden[0].exact and hidden[0].removed  # the plan says so
    small = slimprune.apply(model, plan)
    width = small.transformer.wte.embedding_dim
    assert width == small.transformer.wpe.embedding_dim == small.transformer.ln_f.weight.numel() < 32
    assert small.lm_head.weight is small.transformer.wte.weight and small.lm_head.bias is None
    assert all(b.ln_1.normalized_shape == (width,) and b.attn.c_attn.nx == width for b in small.transformer.h)
    ref = norms_over_kept_channels(model, plan)
    with torch.no_grad():
        got, want = small(**inputs), ref(**inputs)
    assert type(got) is type(want) and got.logits.shape == (2, 8, 100)
    assert torch.allclose(got.logits, want.logits, atol=1e-5), (got.logits - want.logits).abs().max()
    tokens = _greedy(small, IDS[:, :3])
    assert tokens.shape == (2, 11) and torch.equal(tokens, _greedy(ref, IDS[:, :3]))


class T5Logits(torch.nn.Module):
    """A T5 whose user wants only the logits (``encoder_last_hidden_state`` is not returned,
    so the hidden width is not the user's)."""

    def __init__(self, model: transformers.T5ForConditionalGeneration) -> None:
        super().__init__()
        self.m = model

    def forward(self, input_ids: torch.Tensor, decoder_input_ids: torch.Tensor) -> torch.Tensor:
        return self.m(input_ids=input_ids, decoder_input_ids=decoder_input_ids, use_cache=False).logits


class KeptRMSNorm(torch.nn.Module):
    """A silenced T5LayerNorm computing its rms over the kept channels only (the removed ones
    output 0: no shift, a silenced scale)."""

    def __init__(self, norm: torch.nn.Module, kept: tuple[int, ...]) -> None:
        super().__init__()
        self.norm, self.kept = norm, list(kept)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, n = self.kept, self.norm
        out = torch.zeros_like(x)
        h = x[..., k]
        out[..., k] = n.weight[k] * (h * torch.rsqrt(h.to(torch.float32).pow(2).mean(-1, keepdim=True) + n.variance_epsilon))
        return out


def test_t5_returning_only_logits_loses_its_hidden_width_with_its_shared_embedding_still_one_parameter() -> None:
    model = tiny_t5("sdpa", "gated-gelu")  # tie_word_embeddings: shared, both embed_tokens and lm_head are one tensor
    for m in model.modules():
        if type(m).__name__ == "T5LayerNorm":
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
    wrapped = T5Logits(model).eval()
    inputs = {"input_ids": IDS, "decoder_input_ids": IDS[:, :5]}
    plan, barriers = plan_quietly(wrapped, ratio=0.5, example_inputs=inputs)  # allow_inexact=True, the default
    assert not barriers
    hidden = [g for g in plan.groups if any(m.startswith("m.encoder.final_layer_norm.weight") for m in g.members)]
    assert len(hidden) == 1 and not hidden[0].exact and hidden[0].removed
    small = slimprune.apply(wrapped, plan)
    t5 = small.m
    w = t5.shared.weight
    assert isinstance(w, torch.nn.Parameter) and w.shape[0] == 100 and w.shape[1] < 32
    assert t5.encoder.embed_tokens.weight is w and t5.decoder.embed_tokens.weight is w and t5.lm_head.weight is w
    assert sum(1 for n, _ in small.named_parameters() if n.endswith(("shared.weight", "embed_tokens.weight"))) == 1
    assert t5.encoder.final_layer_norm.weight.numel() == w.shape[1] and t5.lm_head.bias is None
    assert t5.shared.embedding_dim == t5.encoder.embed_tokens.embedding_dim == w.shape[1]  # no stale size either
    ref = slimprune.silence(wrapped, plan)
    for name, m in list(ref.named_modules()):
        kept = plan.kept(name, "weight", 0) if type(m).__name__ == "T5LayerNorm" else None
        if kept is not None and len(kept) < m.weight.numel():
            parent, _, attr = name.rpartition(".")
            setattr(ref.get_submodule(parent), attr, KeptRMSNorm(m, kept))
    with torch.no_grad():
        got, want = small(**inputs), ref(**inputs)
        assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
        a = t5.generate(IDS, max_new_tokens=6, do_sample=False, use_cache=True)
        b = ref.m.generate(IDS, max_new_tokens=6, do_sample=False, use_cache=True)
    assert a.shape[1] > 1 and torch.equal(a, b)
    # the bare model returns encoder_last_hidden_state: that width is the user's, kept
    bare, _ = plan_quietly(model, ratio=0.5, example_inputs=T5_INPUTS)
    assert all(not g.removed for g in bare.groups if any(m.startswith("encoder.final_layer_norm") for m in g.members))


def tiny_mobilevit() -> transformers.MobileViTModel:
    torch.manual_seed(0)
    cfg = transformers.MobileViTConfig(image_size=64, hidden_sizes=[32, 48, 64], num_attention_heads=4,
                                       neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 48])
    return transformers.MobileViTModel(cfg).eval()


def mobilevit_heads(model: torch.nn.Module) -> list[tuple[int, int, int]]:
    """(query heads from the weights, num_attention_heads, all_head_size // head size) per attention."""
    return [(m.query.out_features // m.attention_head_size, m.num_attention_heads, m.all_head_size // m.attention_head_size)
            for m in model.modules() if type(m).__name__ == "MobileViTSelfAttention"]


def test_mobilevit_loses_whole_heads_through_its_carried_all_head_size_and_round_trips(tmp_path) -> None:
    """MobileViT merges heads with ``size()[:-2] + (self.all_head_size,)``: the literal is
    recorded as an edit naming ``all_head_size``, the resizer sets it and
    ``num_attention_heads``, and whole heads (value width included) go, exactly."""
    import copy

    model = tiny_mobilevit()
    inputs = {"pixel_values": torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))}
    plan, barriers = plan_quietly(model, ratio=0.5, example_inputs=inputs, allow_inexact=False)
    assert not barriers, barriers
    assert any('"all_head_size"' in e for e in plan.edits)
    small = assert_pruned_equals_silenced(model, plan, inputs)
    before, after = mobilevit_heads(model), mobilevit_heads(small)
    assert len(after) == len(before) == 9 and all(a == b == c >= 1 for a, b, c in after)
    assert sum(a for a, _, _ in after) < sum(a for a, _, _ in before) == 36
    pairs = [(a, b) for a, b in zip(model.modules(), small.modules()) if type(a).__name__ == "MobileViTSelfAttention"]
    for orig, m in pairs:  # whole heads: the value width goes too, head size (and the softmax scale) stay
        assert m.value.out_features == m.key.out_features == m.query.out_features == m.all_head_size
        assert m.attention_head_size == orig.attention_head_size
    assert type(small) is type(model) and not isinstance(small, slimprune.Rewritten)
    expect = small(**inputs).last_hidden_state
    torch.save(small, tmp_path / "m.pt")
    slimprune.save(small, tmp_path / "m.safetensors", plan=plan)
    for again in (copy.deepcopy(small), torch.load(tmp_path / "m.pt", weights_only=False),
                  slimprune.load(tmp_path / "m.safetensors", tiny_mobilevit)):
        assert mobilevit_heads(again) == after
        assert torch.equal(again(**inputs).last_hidden_state, expect)


def spread_mobilevit(model: torch.nn.Module) -> torch.nn.Module:
    """Random weights of unit gain (Hugging Face's init leaves MobileViT's outputs ~1e-12,
    where any atol passes), norm scales drawn from [0.5, 1.5] (so |γ| ranks the channels)
    and non-zero LayerNorm shifts; BatchNorm shifts stay 0 (a removed channel's constant
    would fold into a zero-padded kxk conv, exact only in the interior)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                m.weight.normal_(0, m.weight[0].numel() ** -0.5, generator=g)
            if isinstance(m, (torch.nn.LayerNorm, torch.nn.BatchNorm2d)):
                m.weight.uniform_(0.5, 1.5, generator=g)
            if isinstance(m, torch.nn.LayerNorm):
                m.bias.normal_(0, 0.2, generator=g)
    return model


def mobilevit_widths(model: torch.nn.Module) -> list[int]:
    """The transformer width of each MobileViT block (its ``layernorm_before`` of layer 0)."""
    return [m.transformer.layer[0].layernorm_before.weight.numel()
            for m in model.modules() if type(m).__name__ == "MobileViTLayer"]


def test_mobilevit_loses_its_transformer_width_through_unfolding_into_the_batch_axis_and_round_trips(tmp_path) -> None:
    """``unfolding`` reshapes (B, C, H, W) to ``(B * C * patches_high, ...)`` (the channels
    merged into the batch axis) and on to ``(B * patch_area, patches, C)``; ``folding``
    reverses it with ``batch * channels * patches_high`` read before the transformer. The
    reshape rule follows the channels through both (traced on a batch of two), so the width
    goes under ``allow_inexact=True`` (measured: 32/48/64 -> 27/46/55, heads 36 -> 22): the
    pruned model equals the silenced original with every LayerNorm over its kept channels,
    at other batch sizes too, and stays a drop-in."""
    import copy

    model = spread_mobilevit(tiny_mobilevit())
    inputs = {"pixel_values": torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))}
    plan, barriers = plan_quietly(model, ratio=0.5, example_inputs=inputs, allow_inexact=True)
    assert not barriers, barriers
    width = [g for g in plan.groups if any(m.endswith("layer.0.layernorm_before.weight[0]") for m in g.members)]
    assert len(width) == 3 and all(not g.exact for g in width)  # the plan says LayerNorm makes it inexact
    small = slimprune.apply(model, plan)
    before, after = mobilevit_widths(model), mobilevit_widths(small)
    assert before == [32, 48, 64] and all(0 < a < b for a, b in zip(after, before)), after
    assert sum(a for a, _, _ in mobilevit_heads(small)) < sum(a for a, _, _ in mobilevit_heads(model))
    for m in small.modules():  # every LayerNorm, q/k/v and MLP layer follows the width
        if isinstance(m, torch.nn.LayerNorm):
            assert m.normalized_shape == tuple(m.weight.shape)
    ref = norms_over_kept_channels(model, plan)
    for batch in (2, 3, 1):
        x = {"pixel_values": torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(batch))}
        with torch.no_grad():
            got, want = small(**x), ref(**x)
        assert float(want.last_hidden_state.abs().max()) > 0.05  # a scale at which atol means something
        assert torch.allclose(got.last_hidden_state, want.last_hidden_state, atol=1e-5)
        assert torch.allclose(got.pooler_output, want.pooler_output, atol=1e-5)
    assert sum(p.numel() for p in small.parameters()) == plan.params_after
    assert type(small) is type(model) and not isinstance(small, slimprune.Rewritten)
    expect = small(**inputs).last_hidden_state
    torch.save(small, tmp_path / "m.pt")
    slimprune.save(small, tmp_path / "m.safetensors", plan=plan)
    for again in (copy.deepcopy(small), torch.load(tmp_path / "m.pt", weights_only=False),
                  slimprune.load(tmp_path / "m.safetensors", tiny_mobilevit)):
        assert mobilevit_widths(again) == after and mobilevit_heads(again) == mobilevit_heads(small)
        assert torch.equal(again(**inputs).last_hidden_state, expect)


def test_mobilevit_for_image_classification_loses_its_transformer_width_and_keeps_its_logits() -> None:
    """The classifier on top returns logits (the user's width, kept); the transformer width
    inside goes as in the bare model, and the logits equal the silenced original's with
    LayerNorms over the kept channels."""
    cfg = tiny_mobilevit().config
    cfg.num_labels = 5
    model = spread_mobilevit(transformers.MobileViTForImageClassification(cfg)).eval()
    inputs = {"pixel_values": torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))}
    plan, barriers = plan_quietly(model, ratio=0.5, example_inputs=inputs)
    assert not barriers, barriers
    small = slimprune.apply(model, plan)
    assert all(0 < a < b for a, b in zip(mobilevit_widths(small), mobilevit_widths(model)))
    assert small.classifier.out_features == 5
    with torch.no_grad():
        got, want = small(**inputs).logits, norms_over_kept_channels(model, plan)(**inputs).logits
    assert float(want.abs().max()) > 0.01 and torch.allclose(got, want, atol=1e-6), (got - want).abs().max()


# ------------------------------------------------- prune_outputs: returned widths free to go
def all_norms_over_kept_channels(model: torch.nn.Module, plan: slimprune.PruningPlan) -> torch.nn.Module:
    """``silence(model, plan)`` with every LayerNorm, T5LayerNorm and LlamaRMSNorm (the same
    rms) the plan narrows computed over its kept channels (the inexactness the plan's
    hidden-width group declares)."""
    ref = norms_over_kept_channels(model, plan)
    for name, m in list(ref.named_modules()):
        kept = plan.kept(name, "weight", 0) if type(m).__name__ in ("T5LayerNorm", "LlamaRMSNorm") else None
        if kept is not None and len(kept) < m.weight.numel():
            parent, _, attr = name.rpartition(".")
            setattr(ref.get_submodule(parent), attr, KeptRMSNorm(m, kept))
    return ref


# family -> (returned tensor, the module whose weight rows are its channels (None: every
# channel stays), its channel axis)
RETURNED = {
    "bert": [("last_hidden_state", "encoder.layer.1.output.LayerNorm", -1), ("pooler_output", "pooler.dense", -1)],
    "distilbert": [("last_hidden_state", "transformer.layer.1.output_layer_norm", -1)],
    "vit": [("last_hidden_state", "layernorm", -1), ("pooler_output", "pooler.dense", -1)],
    "clip": [("last_hidden_state", "post_layernorm", -1), ("pooler_output", "post_layernorm", -1)],
    "swin": [("last_hidden_state", "layernorm", -1), ("pooler_output", "layernorm", -1)],
    "segformer": [("last_hidden_state", "stages.1.layer_norm", 1)],
    "t5-model": [("last_hidden_state", "decoder.final_layer_norm", -1),
                 ("encoder_last_hidden_state", "encoder.final_layer_norm", -1)],
    "t5": [("logits", None, -1), ("encoder_last_hidden_state", "encoder.final_layer_norm", -1)],
    "convnext": [("last_hidden_state", "layernorm", 1), ("pooler_output", "layernorm", -1)],
}


def build_bare(family: str, impl: str = "sdpa") -> tuple[torch.nn.Module, dict[str, object]]:
    pixels = {"pixel_values": torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))}
    if family in ("swin", "segformer"):
        model, inputs = tiny_vision(family, impl), pixels
    elif family == "t5":
        model, inputs = tiny_t5(impl, "gated-gelu"), T5_INPUTS
    elif family == "convnext":  # its ConvNextLayerNorm (channels first or last) is a leaf norm
        torch.manual_seed(0)
        cfg = transformers.ConvNextConfig(hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 1, 1])
        model, inputs = transformers.ConvNextModel(cfg).eval(), pixels
    elif family == "t5-model":
        torch.manual_seed(0)
        model, inputs = transformers.T5Model(tiny_t5(impl, "gated-gelu").config).eval(), T5_INPUTS
    else:
        model, inputs = build(family, impl)
    # non-trivial scales and shifts: a removed channel's shift is a constant folded into the next
    # layer's bias (not Segformer's: its next stage's patch embedding is a zero-padded conv, where a
    # fold is exact only in the interior, and these 8x8 maps are mostly border)
    for m in model.modules():
        if isinstance(m, torch.nn.LayerNorm):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            if family != "segformer":
                torch.nn.init.normal_(m.bias, std=0.2)
        elif type(m).__name__ == "T5LayerNorm":
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
    return model, inputs


@pytest.mark.parametrize("family, impl", [(f, i) for f in RETURNED for i in IMPLEMENTATIONS
                                          if f != "convnext" or i == "sdpa"])  # (ConvNext has no attention)
def test_prune_outputs_lets_a_bare_encoders_hidden_width_go_and_its_outputs_are_the_originals_at_the_kept_channels(
        family: str, impl: str) -> None:
    model, inputs = build_bare(family, impl)
    with torch.no_grad():
        widths = {name: model(**inputs)[name].shape for name, _, _ in RETURNED[family]}
    plan, barriers = plan_quietly(model, ratio=0.5, example_inputs=inputs, prune_outputs=True)  # allow_inexact=True
    assert not barriers, barriers
    assert dict(plan.options)["prune_outputs"] is True
    assert any(g.removed and not g.exact for g in plan.groups)  # the hidden width, through the norms: inexact
    small = slimprune.apply(model, plan)
    assert type(small) is type(model) and not isinstance(small, slimprune.Rewritten)
    ref = all_norms_over_kept_channels(model, plan)
    with torch.no_grad():
        got, want = small(**inputs), ref(**inputs)
    assert type(got) is type(want)
    narrower = 0
    for name, module, axis in RETURNED[family]:
        expect = want[name]
        if module is not None:
            kept = plan.kept(module, "weight", 0)
            assert kept is not None and len(kept) < widths[name][axis]
            expect = expect.index_select(axis, torch.tensor(kept))
            narrower += 1
            note = [n for n in plan.notes if n.startswith("prune_outputs=True: the model returns narrower tensors")]
            assert len(note) == 1 and f"output[{name!r}] {widths[name][axis]} -> {len(kept)}" in note[0]
        assert got[name].shape == expect.shape and got[name].shape[axis] <= widths[name][axis]
        assert torch.allclose(got[name], expect, atol=1e-5), (name, (got[name] - expect).abs().max())
    assert narrower >= 1


def test_prune_outputs_on_a_language_model_narrows_its_vocabulary_and_the_plan_says_so() -> None:
    """Every returned width is free: an untied lm_head loses vocabulary rows (index i of the
    pruned logits is the i-th kept token), which the plan's note states; a tied one keeps
    them (the embedding's rows are read by token id, never a channel)."""
    untied, inputs = build("llama-gqa", "sdpa")
    plan, _ = plan_quietly(untied, ratio=0.5, example_inputs=inputs, prune_outputs=True)
    kept = plan.kept("lm_head", "weight", 0)
    assert kept is not None and len(kept) < 100
    assert any(f"output['logits'] 100 -> {len(kept)}" in n and "vocabulary" in n for n in plan.notes)
    small, ref = slimprune.apply(untied, plan), all_norms_over_kept_channels(untied, plan)
    with torch.no_grad():
        got, want = small(**inputs).logits, ref(**inputs).logits.index_select(-1, torch.tensor(kept))
    assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5)
    tied = tiny_gpt2("sdpa")
    plan, _ = plan_quietly(tied, ratio=0.5, example_inputs=inputs, prune_outputs=True)
    assert slimprune.apply(tied, plan)(**inputs).logits.shape[-1] == 100


def tiny_resnet() -> transformers.ResNetModel:
    torch.manual_seed(0)
    cfg = transformers.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 1, 1])
    return transformers.ResNetModel(cfg).eval()


def test_prune_outputs_narrows_a_cnns_returned_feature_map_exactly(tmp_path) -> None:
    """ResNetModel returns its last feature map and the pooled one: no norm couples their
    channels, so with the returned widths free they go exactly (at the kept channels)."""
    model = tiny_resnet()
    for m in model.modules():  # (shifts stay 0: a removed channel's relu(shift) folds exactly only inside
        if isinstance(m, torch.nn.BatchNorm2d):  # zero-padded convs, and these maps are mostly border)
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.uniform_(m.running_var, 0.5, 1.5)
    inputs = {"pixel_values": torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))}
    kept_width, _ = plan_quietly(model, ratio=0.5, example_inputs=inputs, allow_inexact=False)
    plan, barriers = plan_quietly(model, ratio=0.5, example_inputs=inputs, allow_inexact=False, prune_outputs=True)
    assert not barriers and all(g.exact for g in plan.groups)
    assert plan.params_after < kept_width.params_after
    assert_pruned_equals_silenced(model, kept_width, inputs)  # the default: 64 channels returned, as before
    assert not any("prune_outputs" in n for n in kept_width.notes)
    small = slimprune.apply(model, plan)
    ref = slimprune.silence(model, plan)
    kept = torch.tensor(plan.kept("encoder.stages.3.layers.0.shortcut.normalization", "weight", 0))
    assert 0 < kept.numel() < 64
    with torch.no_grad():
        got, want = small(**inputs), ref(**inputs)
    for name in ("last_hidden_state", "pooler_output"):
        assert got[name].shape[1] == kept.numel()
        assert torch.allclose(got[name], want[name].index_select(1, kept), rtol=1e-4, atol=1e-5)
    assert type(small) is type(model) and not isinstance(small, slimprune.Rewritten)
    slimprune.save(small, tmp_path / "m.safetensors", plan=plan)  # the narrower model round-trips
    again = slimprune.load(tmp_path / "m.safetensors", tiny_resnet)
    with torch.no_grad():
        assert torch.equal(again(**inputs).pooler_output, got.pooler_output)
