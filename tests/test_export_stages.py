"""Each export stage alone, on tiny-llama: config checks, the scoring graph, quantize, export."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lpfl.artefact import TOKEN_INPUTS
from lpfl.config import LoraSettings, ModelSettings, PromptSettings, RunConfig
from lpfl.errors import ConfigError, ModelError
from lpfl.export import stages
from lpfl.export.config import ExportConfig
from lpfl.export.parity import random_adapter
from lpfl.export.scoring_graph import ScoringGraph, dynamic_shapes, example_inputs
from lpfl.model.adapters import load_trainable_state, trainable_state
from lpfl.model.prompt import PromptModel
from tests.export_artefacts import SEVERAL_TOKEN_WORDS

TEXTS = ["a great movie", "boring , long and bad", "it was fine", "the worst film of the year"]
RUN = RunConfig(model=ModelSettings(source="tiny-llama", max_length=48))


@pytest.fixture(scope="module")
def prepared() -> tuple[PromptModel, ScoringGraph]:
    torch.set_num_threads(1)
    pm = stages.load(RUN)
    graph = stages.prepare_lora(pm, RUN.lora)
    load_trainable_state(pm, random_adapter(pm))
    return pm, graph


def _inputs(pm: PromptModel, graph: ScoringGraph, texts: list[str]) -> list[torch.Tensor]:
    batch = pm.encoder.encode(texts)
    state = trainable_state(pm)
    return [*(batch[k] for k in TOKEN_INPUTS), *(state[n] for n in graph.lora_names)]


@pytest.mark.parametrize(("changes", "message"), [
    ({"target": "tflite"}, "--target"),
    ({"quant": "int4"}, "--quant"),
    ({"target": "executorch-portable", "quant": "int8"}, "executorch-xnnpack"),
    ({"max_seq_len": 4}, "--max-seq-len"),
    ({"group_size": 48}, "--group-size"),
    ({"target": "onnx", "training": True}, "--training"),
    ({"model": ""}, "--model"),
])
def test_export_config_refuses_bad_values(changes: dict[str, object], message: str) -> None:
    kwargs: dict[str, object] = {"model": "tiny-llama", "target": "executorch-xnnpack",
                                 "out": Path("out")}
    kwargs.update(changes)
    with pytest.raises(ConfigError, match=message):
        ExportConfig(**kwargs)  # type: ignore[arg-type]


def test_export_config_overrides_the_run_length() -> None:
    config = ExportConfig(model="tiny-llama", target="onnx", out=Path("o"), max_seq_len=32)
    assert config.runtime == "onnxruntime"
    assert config.run_config().model.max_length == 32
    assert config.run_config().model.source == "tiny-llama"


def test_scoring_graph_matches_the_prompt_model(
        prepared: tuple[PromptModel, ScoringGraph]) -> None:
    pm, graph = prepared
    with torch.no_grad():
        logits = graph(*_inputs(pm, graph, TEXTS))
    assert logits.shape == (len(TEXTS), pm.num_classes)
    torch.testing.assert_close(logits, pm.score(TEXTS), rtol=0, atol=1e-5)
    assert graph.label_weight.shape == (pm.num_classes, 64)  # label rows only, not the vocab


def test_scoring_graph_needs_lora_and_a_causal_lm() -> None:
    pm = stages.load(RUN)
    with pytest.raises(ModelError, match="attach LoRA"):
        ScoringGraph(pm)
    bert = stages.load(RunConfig(model=ModelSettings(source="tiny-bert"),
                                 prompt=RUN.prompt.__class__(pattern="{text} it was [MASK] .")))
    with pytest.raises(ModelError, match="masked LM"):
        stages.prepare_lora(bert, LoraSettings(target_modules=("query", "value")))


def test_quantize_returns_a_copy_and_keeps_lora_float(
        prepared: tuple[PromptModel, ScoringGraph]) -> None:
    pm, graph = prepared
    before = pm.score(TEXTS)
    quantized = stages.quantize(graph, "8da4w")
    torch.testing.assert_close(pm.score(TEXTS), before, rtol=0, atol=0)  # eager untouched
    weights = dict(quantized.named_parameters())
    lora = [w for name, w in weights.items() if ".lora_" in name]
    assert lora and all(type(w) is torch.nn.Parameter for w in lora)
    base = [w for name, w in weights.items() if name.endswith("q_proj.base_layer.weight")]
    assert base and all(type(w.data) is not torch.Tensor for w in base)  # a quantized subclass
    with torch.no_grad():
        close = quantized(*_inputs(pm, graph, TEXTS))
    assert (close - before).abs().max() < 0.1


def test_exported_program_has_dynamic_shapes_and_no_vocab_matmul(
        prepared: tuple[PromptModel, ScoringGraph]) -> None:
    pm, graph = prepared
    program = stages.export_program(graph, example_inputs(pm, graph),
                                     dynamic_shapes(graph, 48))
    vocab = len(pm.tokenizer)
    linears = [n for n in program.graph.nodes if n.target == torch.ops.aten.linear.default]
    layers, adapted = 2, len(RUN.lora.target_modules)
    assert len(linears) == layers * (7 + 2 * adapted) + 1  # base, LoRA A/B, label head
    assert not any(n.meta["val"].shape[-1] == vocab for n in linears)
    module = program.module()
    for texts in (TEXTS, TEXTS[:1] * 3):  # another batch size and sequence length
        with torch.no_grad():
            torch.testing.assert_close(module(*_inputs(pm, graph, texts)), pm.score(texts),
                                       rtol=0, atol=1e-5)


def test_words_of_several_tokens_export_the_whole_head_with_dynamic_shapes() -> None:
    run = RunConfig(model=RUN.model, prompt=PromptSettings(label_words=SEVERAL_TOKEN_WORDS))
    pm = stages.load(run)
    graph = stages.prepare_lora(pm, run.lora)
    load_trainable_state(pm, random_adapter(pm))
    assert graph.label_weight.shape == (len(pm.tokenizer), 64)  # log-probs need the vocab
    program = stages.export_program(graph, example_inputs(pm, graph),
                                     dynamic_shapes(graph, 48), runtime_asserts=True)
    module = program.module()
    for texts in (TEXTS, TEXTS[:1] * 3):  # another batch size and sequence length
        with torch.no_grad():
            torch.testing.assert_close(module(*_inputs(pm, graph, texts)), pm.score(texts),
                                       rtol=0, atol=1e-5)
