"""The ExecuTorch scorer with LoRA as external constants (lpfl.export.constant_lora), on
tiny-llama: each rewrite matches the eager maths, XNNPACK takes the layers whole, and the
adapter is swapped by rewriting the data file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm, eager_attention_forward

from lpfl.artefact import TOKEN_INPUTS, pad_tokens, rewrite_lora_data, verify_files
from lpfl.config import ModelSettings, RunConfig
from lpfl.errors import ArtefactError, ConfigError
from lpfl.export import stages
from lpfl.export.config import ExportConfig
from lpfl.export.constant_lora import (
    STATIC_VIEWS,
    ConstantLoraScorer,
    RMSNormAsLinear,
    grouped_attention,
)
from lpfl.export.scoring_graph import attention_mask_4d
from lpfl.model.adapters import load_trainable_state
from lpfl.model.prompt import PromptModel
from tests.export_artefacts import exported

TEXTS = ["a great movie", "boring , long and bad", "it was fine"]
RUN = RunConfig(model=ModelSettings(source="tiny-llama", max_length=48))


@pytest.fixture(scope="module")
def pm() -> PromptModel:
    torch.set_num_threads(1)
    model = stages.load(RUN)
    stages.prepare_lora(model, RUN.lora)
    return model


def test_grouped_attention_equals_transformers_eager_attention() -> None:
    gen = torch.Generator().manual_seed(0)
    b, heads, kv_heads, t, d = 2, 6, 2, 5, 4
    q, k, v = (torch.randn(b, h, t, d, generator=gen) for h in (heads, kv_heads, kv_heads))
    mask = attention_mask_4d(torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]]))
    module = torch.nn.Module()
    module.num_key_value_groups = heads // kv_heads  # type: ignore[assignment]
    module.training = False
    expected, _ = eager_attention_forward(module, q, k, v, mask, scaling=0.5)
    got, _ = grouped_attention(module, q, k, v, mask, scaling=0.5)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_rmsnorm_as_linear_equals_llama_rmsnorm() -> None:
    norm = LlamaRMSNorm(16, eps=1e-5)
    torch.nn.init.normal_(norm.weight)
    x = torch.randn(3, 7, 16)
    rewritten = RMSNormAsLinear(norm.weight, norm.variance_epsilon)
    torch.testing.assert_close(rewritten(x), norm(x), rtol=0, atol=1e-5)


def test_static_views_keep_unsqueeze_and_expand_semantics() -> None:
    x = torch.randn(2, 1, 3)
    assert torch.equal(STATIC_VIEWS[torch.ops.aten.unsqueeze.default](x, 1), x.unsqueeze(1))
    assert torch.equal(STATIC_VIEWS[torch.ops.aten.unsqueeze.default](x, -1), x.unsqueeze(-1))
    expand = STATIC_VIEWS[torch.ops.aten.expand.default]
    assert torch.equal(expand(x, [2, 4, 3]), x.expand(2, 4, 3))
    assert torch.equal(expand(x, [5, 2, -1, 3]), x.expand(5, 2, -1, 3))


def test_pad_tokens_fills_the_static_shape_and_refuses_what_does_not_fit(
        pm: PromptModel) -> None:
    batch = pm.encoder.encode(TEXTS)
    tokens = [batch[k] for k in TOKEN_INPUTS]
    padded = pad_tokens(tokens, 4, 32)
    assert [tuple(t.shape) for t in padded] == [(4, 32)] * 3
    scorer = ConstantLoraScorer(stages.prepare_lora(stages.load(RUN), RUN.lora)).eval()
    with torch.no_grad():  # left padding and filler rows change nothing for the real rows
        torch.testing.assert_close(scorer(*padded)[:3], scorer(*tokens), rtol=0, atol=1e-5)
    with pytest.raises(ArtefactError, match="does not fit"):
        pad_tokens(tokens, 2, 32)
    with pytest.raises(ArtefactError, match="does not fit"):
        pad_tokens(tokens, 4, tokens[0].shape[1] - 1)


def test_constant_lora_scorer_equals_the_prompt_model_with_its_lora(pm: PromptModel) -> None:
    graph = stages.prepare_lora(stages.load(RUN), RUN.lora)
    scorer = ConstantLoraScorer(graph).eval()
    assert len({bytes(p.detach().numpy()) for p in scorer.lora_params.values()}) == len(
        scorer.lora_params)  # distinct values: distinct XNNPACK data keys
    load_trainable_state(pm, {n: p.detach() for n, p in scorer.lora_params.items()})
    batch = pm.encoder.encode(TEXTS)
    with torch.no_grad():
        torch.testing.assert_close(scorer(*(batch[k] for k in TOKEN_INPUTS)), pm.score(TEXTS),
                                   rtol=0, atol=1e-5)


def test_xnnpack_takes_every_layer_in_one_delegate(pm: PromptModel) -> None:
    """Before these rewrites tiny-llama's two layers split into 26 delegates; only the
    position and mask set-up before the first layer may stay outside now."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    scorer = ConstantLoraScorer(stages.prepare_lora(stages.load(RUN), RUN.lora)).eval()
    programs = stages.export_static(scorer, pm, 2, (16,))
    edge = to_edge_transform_and_lower(programs, partitioner=[XnnpackPartitioner()])
    graph = edge.exported_program("forward_16").graph
    outside = {str(n.target) for n in graph.nodes if n.op == "call_function"}
    delegates = sum(n.target.__name__ == "executorch_call_delegate" for n in graph.nodes
                    if n.op == "call_function" and hasattr(n.target, "__name__"))
    assert delegates <= 4, outside
    assert not any(op in " ".join(outside) for op in ("mean", "bmm", "softmax", "linear",
                                                       "addmm", "mm.default"))


def test_rewritten_data_file_refuses_other_sizes_and_a_torn_copy_is_caught(
        tmp_path: Path) -> None:
    folder, manifest, _ = exported("executorch-xnnpack")
    template = (folder / "lora.ptd").read_bytes()
    name = next(iter(manifest.lora_keys))
    state = {n: torch.zeros(s) for n, s in manifest.lora_shapes.items()}
    assert rewrite_lora_data(template, manifest.lora_keys, state) != template
    state[name] = torch.zeros(3)
    with pytest.raises(ArtefactError, match="bytes"):
        rewrite_lora_data(template, manifest.lora_keys, state)
    copy = tmp_path / "artefact"
    shutil.copytree(folder, copy)
    (copy / "lora.ptd").write_bytes(template[:-8] + b"\0" * 8)
    with pytest.raises(ArtefactError, match="data file"):
        verify_files(copy, manifest)


def test_export_config_buckets_include_the_maximum_and_refuse_longer_ones() -> None:
    config = ExportConfig(model="tiny-llama", target="executorch-xnnpack", out=Path("o"),
                          seq_buckets=(32, 16, 32))
    assert config.buckets(48) == (16, 32, 48)
    with pytest.raises(ConfigError, match="exceed"):
        config.buckets(24)
    with pytest.raises(ConfigError, match="--batch"):
        ExportConfig(model="tiny-llama", target="executorch-xnnpack", out=Path("o"), batch=0)


def test_static_artefact_records_its_shapes_and_keys() -> None:
    _, manifest, _ = exported("executorch-xnnpack")
    assert manifest.static_batch == manifest.max_batch == 8
    assert manifest.seq_buckets == (48,)
    assert set(manifest.lora_keys) == set(manifest.lora_shapes)
    assert len(set(manifest.lora_keys.values())) == len(manifest.lora_keys)
    assert manifest.program("score").data_file == "lora.ptd"
