"""Hugging Face transformers, built from tiny configs with random weights (no downloads).

What holds today: keyword example inputs, and BERT and GPT-2 trace (concretely: their
forwards branch on shapes and read ``**kwargs``) with either attention implementation, and
the pruned model equals the silenced original, keeps its class and its output type.
Attention heads are not pruned yet: the score product (``matmul`` / ``scaled_dot_product_attention``)
and GPT-2's ``Conv1D`` (``addmm``) are barriers, named in the warning (never a stale head count).
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


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_bert_traces_with_keyword_inputs_and_prunes_exactly(impl: str) -> None:
    model = tiny_bert(impl)
    inputs = bert_inputs()
    assert trace(model, inputs).method == "concrete"
    plan, barriers = plan_quietly(model, ratio=0.5, example_inputs=inputs)
    assert plan.params_after < plan.params_before  # the feed-forward widths at least
    small = assert_pruned_equals_silenced(model, plan, inputs)
    assert type(small) is transformers.BertModel
    assert isinstance(small(**inputs), transformers.modeling_outputs.BaseModelOutputWithPoolingAndCrossAttentions)
    op = "matmul" if impl == "eager" else "scaled_dot_product_attention"
    assert barriers and f"torch.{op}" in barriers[0] and "encoder.layer.0.attention.self" in barriers[0]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_gpt2_traces_with_keyword_inputs_and_nothing_is_silently_wrong(impl: str) -> None:
    model = tiny_gpt2(impl)
    inputs = {"input_ids": IDS, "use_cache": False}  # a non-tensor keyword is a constant of the trace
    assert trace(model, inputs).method == "concrete"
    plan, barriers = plan_quietly(model, ratio=0.5, example_inputs=inputs)
    small = assert_pruned_equals_silenced(model, plan, inputs)
    assert type(small) is transformers.GPT2LMHeadModel
    assert barriers and "transformer.h.0.attn.c_attn" in barriers[0]
    assert "lm_head.weight is the same tensor as transformer.wte.weight" in barriers[0]


def test_measure_takes_keyword_inputs_of_a_transformer() -> None:
    model = tiny_bert("eager")
    inputs = bert_inputs()
    result = measure(model, inputs, latency=False)
    assert result.flops > 0 and result.input_shapes == ((2, 8), (2, 8))
