"""The ExecuTorch training program: same trainable tensors, loss, logits and updates as eager.

Tiny-llama programs are exported once per module (about a minute each on one thread); the real
SmolLM2 program is a ``slow`` test (export several minutes, 20 training steps).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lpfl.config import LoraSettings, ModelSettings, PromptSettings
from lpfl.data import load_corpus
from lpfl.errors import ArtefactError, ConfigError, ModelError
from lpfl.export.training_program import (
    GROUP_SIZE,
    PromptLmLoss,
    _int4_groups,
    _int8_rows,
    build_loss_module,
    dequantize,
    example_inputs,
    export_gradients,
    export_training_program,
    lm_example_inputs,
    lora_names,
    lora_tensors,
    lower,
    peft_name,
    quantize_frozen,
    save,
    trace_gradients,
)
from lpfl.model.adapters import load_trainable_state, set_mode, trainable_state
from lpfl.model.loading import load_base_model
from lpfl.model.prompt import PromptModel
from lpfl.program_trainer import LM_METHOD, METHOD, ProgramTrainer, pad_inputs, program_train_steps
from lpfl.training import (
    LmBatches,
    TrainExample,
    batch_plan,
    example_losses,
    hard_example,
    shuffled_batches,
    train_steps,
)
from lpfl.training import weighted_loss as training_loss
from tests.export_artefacts import SEVERAL_TOKEN_WORDS

SEQ = 24
BATCH = 4
# Eager and program run the same maths with differently ordered float32 reductions (XNNPACK's
# GEMMs against PyTorch's). AdamW divides each gradient by its own running scale, so a rounding
# difference in a near-zero gradient can move that element by a fraction of the learning rate:
# the state tolerance is 1/10 of the 1e-2 step, the loss one stays tight.
LOSS_TOL = 1e-4
STATE_TOL = 1e-3


def prompt_model(source: str, max_length: int,
                 prompt: PromptSettings | None = None) -> PromptModel:
    torch.set_num_threads(1)
    base = load_base_model(ModelSettings(source=source, max_length=max_length))
    pm = PromptModel(base, prompt or PromptSettings(), max_length)
    torch.manual_seed(0)
    set_mode(pm, "lora", LoraSettings(r=4, target_modules=("q_proj", "v_proj")))
    return pm


def lora_shapes(pm: PromptModel) -> dict[str, tuple[int, ...]]:
    """The adapter's shapes under PEFT's names, as an artefact's manifest lists them."""
    return {k: tuple(v.shape) for k, v in trainable_state(pm).items()}


def random_adapter(pm: PromptModel, seed: int) -> dict[str, torch.Tensor]:
    """A non-trivial adapter (PEFT starts lora_B at zero, which hides mistakes)."""
    gen = torch.Generator().manual_seed(seed)
    return {k: 0.2 * torch.randn(v.shape, generator=gen) for k, v in trainable_state(pm).items()}


def examples(n_hard: int = 10, n_soft: int = 4) -> list[TrainExample]:
    """Hard and weighted soft examples: 14 of them make batches of 4 end with a short one."""
    corpus = load_corpus("mr")
    hard = [hard_example(e.text, e.label, 2) for e in corpus[:n_hard]]
    soft = [TrainExample(e.text, (0.3, 0.7), weight=0.5, soft=True)
            for e in corpus[n_hard : n_hard + n_soft]]
    return hard + soft


def weighted_loss(logits: torch.Tensor, targets: torch.Tensor,
                  weights: torch.Tensor) -> torch.Tensor:
    return training_loss(example_losses(logits, targets), weights)


@pytest.fixture(scope="module")
def pm() -> PromptModel:
    return prompt_model("tiny-llama", SEQ)


@pytest.fixture(scope="module")
def fp32_program(pm: PromptModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("programs") / "fp32.pte"
    return export_training_program(pm, quant="none", max_seq_len=SEQ, batch_size=BATCH,
                                   out_file=out)


@pytest.fixture(scope="module")
def int8_program(pm: PromptModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("programs") / "int8.pte"
    return export_training_program(pm, quant="int8", max_seq_len=SEQ, batch_size=BATCH,
                                   out_file=out)


# --- pieces that need no export -------------------------------------------------------------


def test_int8_and_4bit_codes_round_trip_within_half_a_step() -> None:
    weight = torch.randn(6, 4 * GROUP_SIZE)
    codes, scale = _int8_rows(weight)
    assert codes.dtype == torch.int8 and scale.shape == (6, 1)
    assert (dequantize(codes, scale, "int8") - weight).abs().max() <= scale.max() / 2 + 1e-6
    packed, scale4 = _int4_groups(weight)
    assert packed.dtype == torch.uint8 and packed.shape == (6, 2 * GROUP_SIZE)
    assert scale4.shape == (6, 4)
    error = (dequantize(packed, scale4, "4bit") - weight).abs()
    assert error.max() <= scale4.max() / 2 + 1e-6
    # Gathered rows de-quantize like the rows of the whole matrix (the embedding path).
    rows = torch.tensor([[4, 1]])
    torch.testing.assert_close(dequantize(packed[rows], scale4[rows], "4bit"),
                               dequantize(packed, scale4, "4bit")[rows])


@pytest.mark.parametrize("mode", ["int8", "4bit"])
def test_quantizing_keeps_the_lora_trainable_and_the_tied_table_shared(mode: str) -> None:
    pm = prompt_model("tiny-llama", SEQ)
    before = dict(pm.network.named_parameters())
    module = build_loss_module(pm, mode)
    trainable = {n.removeprefix("network."): p for n, p in module.named_parameters()
                 if p.requires_grad}
    assert set(trainable) == {n for n, p in before.items() if p.requires_grad}
    assert all(p.dtype == torch.float32 for p in trainable.values())
    frozen = [n for n, p in module.named_parameters() if not p.requires_grad]
    assert all(n.endswith("norm.weight") for n in frozen), frozen  # only the norms stay float
    codes = [n for n, _ in module.named_buffers() if n.endswith("codes")]
    assert len(codes) == 2 * 7 + 1  # 7 linear layers per block, one table for embed + LM head
    assert dict(pm.network.named_parameters()).keys() == before.keys()  # pm left untouched


def test_quantize_frozen_refuses_an_unknown_mode() -> None:
    with pytest.raises(ValueError, match="quant"):
        quantize_frozen(torch.nn.Linear(2, 2), "int3")


def test_dropout_is_refused() -> None:
    base = load_base_model(ModelSettings(source="tiny-llama", max_length=SEQ))
    pm = PromptModel(base, PromptSettings(), SEQ)
    set_mode(pm, "lora", LoraSettings(dropout=0.1))
    with pytest.raises(ModelError, match="dropout"):
        build_loss_module(pm)


def test_padding_fills_columns_on_the_left_and_rows_with_weight_zero(pm: PromptModel) -> None:
    batch = pm.encode(["fine", "a dull mess"])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    ids, mask, positions, padded_targets, weights = pad_inputs(
        batch, targets, torch.tensor([1.0, 2.0]), BATCH, SEQ)
    width = batch["input_ids"].shape[1]
    assert ids.shape == mask.shape == positions.shape == (BATCH, SEQ)
    torch.testing.assert_close(ids[:2, -width:], batch["input_ids"])
    assert int(mask[:2, : SEQ - width].sum()) == 0
    assert weights.tolist() == [1.0, 2.0, 0.0, 0.0]
    assert padded_targets.shape == (BATCH, 2)
    with pytest.raises(ValueError, match="does not fit"):
        pad_inputs(batch, targets, torch.ones(2), 1, SEQ)


def test_peft_names_drop_the_prefix_and_adapter() -> None:
    name = "network.base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"
    assert peft_name(name) == "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"


def gradient_program(pm: PromptModel) -> torch.export.ExportedProgram:
    module = build_loss_module(pm)
    inputs = example_inputs(pm, BATCH, SEQ)
    names = lora_names(module)
    return export_gradients(trace_gradients(module, names, inputs),
                            lora_tensors(module, names) + inputs)


def lm_gradient_program(pm: PromptModel) -> torch.export.ExportedProgram:
    module = PromptLmLoss(build_loss_module(pm))
    inputs = lm_example_inputs(pm, BATCH, SEQ)
    names = lora_names(module)
    return export_gradients(trace_gradients(module, names, inputs),
                            lora_tensors(module, names) + inputs)


def test_the_gradient_graph_takes_the_lora_and_never_transposes_a_weight(
        pm: PromptModel) -> None:
    """LoRA tensors are the first inputs (sorted by PEFT name), gradients the outputs after the
    loss and logits; and no weight is copied into its transpose (a full copy per step)."""
    ep = gradient_program(pm)
    shapes = lora_shapes(pm)
    user_inputs = [n for n in ep.graph.nodes if n.op == "placeholder"
                   and n.name in ep.graph_signature.user_inputs]
    assert [tuple(n.meta["val"].shape) for n in user_inputs[:len(shapes)]] == [
        shapes[k] for k in sorted(shapes)]
    assert len(ep.graph_signature.user_outputs) == 2 + len(shapes)
    constants = {n.name for n in ep.graph.nodes if n.op == "placeholder"
                 and n.name not in ep.graph_signature.user_inputs}
    ops = [(n.target, n.args[0].name) for n in ep.graph.nodes
           if n.op == "call_function" and isinstance(n.args[0], torch.fx.Node)]
    assert [name for op, name in ops
            if op == torch.ops.aten.permute.default and name in constants] == []
    assert sum(op == torch.ops.aten.linear.default for op, _ in ops) >= 2 * 7 + 4  # + LoRA


def test_xnnpack_takes_every_matrix_product_of_both_methods(pm: PromptModel) -> None:
    """Forward and backward GEMMs all run in XNNPACK, in the classification and the
    language-model method; none is left to the portable kernels."""
    program = lower({METHOD: gradient_program(pm), LM_METHOD: lm_gradient_program(pm)})
    for method in (METHOD, LM_METHOD):
        graph = program.exported_program(method).graph
        delegates = [n for n in graph.nodes if n.op == "call_function"
                     and "executorch_call_delegate" in str(n.target)]
        outside = [str(n.target) for n in graph.nodes if n.op == "call_function"
                   and any(op in str(n.target) for op in ("aten.mm", "aten.linear", "aten.bmm",
                                                          "aten.addmm"))]
        assert delegates and outside == [], method


def test_a_program_without_the_lm_method_refuses_the_lm_loss(pm: PromptModel,
                                                              tmp_path: Path) -> None:
    path = save(lower({METHOD: gradient_program(pm)}), tmp_path / "forward-only.pte")
    trainer = ProgramTrainer(path, lora_shapes(pm))
    assert not trainer.has_lm
    data = examples()
    batch = pm.encode([e.text for e in data[:2]])
    trainer.run(batch, torch.tensor([e.target for e in data[:2]]), torch.ones(2))
    with pytest.raises(ConfigError, match="re-export"):
        trainer.add_lm(batch, 0.1)


# --- the fp32 program -----------------------------------------------------------------------


def test_program_trains_exactly_the_lora_tensors(pm: PromptModel, fp32_program: Path) -> None:
    trainer = ProgramTrainer(fp32_program, lora_shapes(pm))
    expected = trainable_state(pm)
    assert set(trainer.parameters) == set(expected)
    for name, tensor in trainer.parameters.items():
        assert tensor.shape == expected[name].shape
    assert (trainer.batch_size, trainer.seq_len, trainer.num_classes) == (BATCH, SEQ, 2)


def test_a_new_adapter_gives_eager_loss_and_logits(pm: PromptModel, fp32_program: Path) -> None:
    trainer = ProgramTrainer(fp32_program.read_bytes(), lora_shapes(pm))
    adapter = random_adapter(pm, 1)
    trainer.load_state(adapter)
    load_trainable_state(pm, adapter)
    batch = pm.encode([e.text for e in examples()[:3]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.3, 0.7]])
    weights = torch.tensor([1.0, 0.5, 2.0])
    with torch.no_grad():
        logits = pm.class_logits(batch)
        loss = float(weighted_loss(logits, targets, weights))
    program_loss, program_logits = trainer.run(batch, targets, weights)
    torch.testing.assert_close(program_logits, logits, atol=1e-5, rtol=1e-5)
    assert program_loss == pytest.approx(loss, abs=1e-5)
    torch.testing.assert_close(trainer.state(), adapter)


def test_a_state_that_does_not_fit_is_refused(fp32_program: Path, pm: PromptModel) -> None:
    trainer = ProgramTrainer(fp32_program, lora_shapes(pm))
    state = trainable_state(pm)
    with pytest.raises(ArtefactError, match="missing"):
        trainer.load_state(dict(list(state.items())[1:]))
    name = next(iter(state))
    with pytest.raises(ArtefactError, match="shape"):
        trainer.load_state({**state, name: torch.zeros(1)})
    with pytest.raises(ArtefactError, match="does not exist"):
        ProgramTrainer(Path("/nonexistent/program.pte"), lora_shapes(pm))
    with pytest.raises(ArtefactError, match="inputs"):
        ProgramTrainer(fp32_program, dict(list(lora_shapes(pm).items())[1:]))
    with pytest.raises(ArtefactError, match="takes"):
        ProgramTrainer(fp32_program, {**lora_shapes(pm), name: (1, 1)})


def step_by_step(pm: PromptModel, trainer: ProgramTrainer, data: list[TrainExample], lr: float,
                 seed: int, steps: int = 20) -> tuple[list[float], list[float]]:
    """``steps`` single AdamW steps eagerly and on the program, on the same batches: the two
    loss curves."""
    plan = batch_plan(data, steps, BATCH, 0.0, np.random.default_rng(seed))
    eager, program = [], []
    for batch in plan:
        eager.append(train_steps(pm, data, [batch], lr))
        program.append(program_train_steps(trainer, pm.encode, data, [batch], lr))
    return eager, program


def test_loss_tracks_eager_for_20_steps(pm: PromptModel, fp32_program: Path) -> None:
    """20 single AdamW steps on both sides, from the same adapter and the same batches."""
    trainer = ProgramTrainer(fp32_program, lora_shapes(pm))
    adapter = random_adapter(pm, 2)
    load_trainable_state(pm, adapter)
    trainer.load_state(adapter)
    eager, program = step_by_step(pm, trainer, examples(), 1e-2, seed=7)
    np.testing.assert_allclose(program, eager, atol=LOSS_TOL)
    assert eager[-1] < eager[0]
    final = trainable_state(pm)
    torch.testing.assert_close(trainer.state(), final, atol=STATE_TOL, rtol=0)


def test_program_train_steps_is_a_drop_in_for_train_steps(pm: PromptModel,
                                                          fp32_program: Path) -> None:
    """One call of 20 steps (AdamW moments carried), a gold-share plan, weight decay."""
    trainer = ProgramTrainer(fp32_program, lora_shapes(pm))
    adapter = random_adapter(pm, 3)
    load_trainable_state(pm, adapter)
    trainer.load_state(adapter)
    data = examples()
    plan = batch_plan(data, 20, BATCH, 0.5, np.random.default_rng(11))
    eager = train_steps(pm, data, plan, 5e-3, 0.01)
    program = program_train_steps(trainer, pm.encode, data, plan, 5e-3, 0.01)
    assert program == pytest.approx(eager, abs=LOSS_TOL)
    torch.testing.assert_close(trainer.state(), trainable_state(pm), atol=STATE_TOL, rtol=0)


def test_label_words_of_several_tokens_train_like_eager(tmp_path: Path) -> None:
    """Three classes whose words are 1, 2 and 4 tokens: the program trains their summed
    log-probabilities as eager does (10 steps, short batches included)."""
    pm = prompt_model("tiny-llama", SEQ, PromptSettings(label_words=SEVERAL_TOKEN_WORDS))
    program = export_training_program(pm, quant="none", max_seq_len=SEQ, batch_size=BATCH,
                                      out_file=tmp_path / "words.pte")
    trainer = ProgramTrainer(program, lora_shapes(pm))
    assert trainer.num_classes == 3
    adapter = random_adapter(pm, 4)
    load_trainable_state(pm, adapter)
    trainer.load_state(adapter)
    data = [hard_example(e.text, i % 3, 3) for i, e in enumerate(load_corpus("mr")[:10])]
    plan = batch_plan(data, 10, BATCH, 0.5, np.random.default_rng(5))
    eager = train_steps(pm, data, plan, 1e-2)
    assert program_train_steps(trainer, pm.encode, data, plan, 1e-2) == pytest.approx(
        eager, abs=LOSS_TOL)
    torch.testing.assert_close(trainer.state(), trainable_state(pm), atol=STATE_TOL, rtol=0)


def assert_gradients_match(pm: PromptModel, trainer: ProgramTrainer, rel: float,
                           floor: float) -> None:
    """The program's last gradients against those eager autograd left in ``pm`` (then
    cleared): each within ``rel`` of its norm, plus ``floor``."""
    eager = {n.replace(".default", ""): p.grad for n, p in pm.network.named_parameters()
             if p.requires_grad}
    for name, grad in trainer._gradients.items():
        expected = eager[name]
        assert expected is not None
        assert float((grad - expected).norm()) <= rel * float(expected.norm()) + floor, name
    pm.network.zero_grad()


def lm_batches(steps: int, seed: int) -> LmBatches:
    """Unlabeled MR texts for ``steps`` LM batches of up to :data:`BATCH` (the last short)."""
    texts = tuple(e.text for e in load_corpus("mr")[100:110])
    plan = shuffled_batches(len(texts), steps, BATCH, np.random.default_rng(seed))
    return LmBatches(texts, tuple(tuple(b) for b in plan), 0.5)


def test_the_lm_method_gives_eager_lm_loss(pm: PromptModel, fp32_program: Path) -> None:
    """Three prompts in a batch of four: the filler row changes neither loss nor gradients."""
    trainer = ProgramTrainer(fp32_program, lora_shapes(pm))
    adapter = random_adapter(pm, 5)
    trainer.load_state(adapter)
    load_trainable_state(pm, adapter)
    assert trainer.has_lm
    data = examples()
    batch = pm.encode([e.text for e in data[:3]])
    texts = pm.encode([e.text for e in load_corpus("mr")[200:203]])
    targets = torch.tensor([e.target for e in data[:3]])
    trainer.run(batch, targets, torch.ones(3))
    lm_loss = trainer.add_lm(texts, 0.5)
    pm.network.zero_grad()
    eager_lm = pm.lm_loss(texts)
    (weighted_loss(pm.class_logits(batch), targets, torch.ones(3)) + 0.5 * eager_lm).backward()
    assert lm_loss == pytest.approx(float(eager_lm.detach()), abs=1e-4)
    assert_gradients_match(pm, trainer, 1e-4, 1e-6)


def test_program_train_steps_trains_the_lm_loss_like_eager(pm: PromptModel,
                                                           fp32_program: Path) -> None:
    """With an LM plan the program ends where eager ends, and elsewhere than without it."""
    trainer = ProgramTrainer(fp32_program, lora_shapes(pm))
    adapter = random_adapter(pm, 6)
    data = examples()
    plan = batch_plan(data, 12, BATCH, 0.5, np.random.default_rng(12))
    lm = lm_batches(12, 13)
    load_trainable_state(pm, adapter)
    eager = train_steps(pm, data, plan, 5e-3, 0.01, lm=lm)
    trainer.load_state(adapter)
    program = program_train_steps(trainer, pm.encode, data, plan, 5e-3, 0.01, lm=lm)
    assert program == pytest.approx(eager, abs=LOSS_TOL)
    with_lm = trainer.state()
    torch.testing.assert_close(with_lm, trainable_state(pm), atol=STATE_TOL, rtol=0)
    trainer.load_state(adapter)
    program_train_steps(trainer, pm.encode, data, plan, 5e-3, 0.01)
    moved = max(float((with_lm[k] - v).abs().max()) for k, v in trainer.state().items())
    assert moved > 10 * STATE_TOL


# --- the int8 program -----------------------------------------------------------------------


def test_int8_program_is_smaller_and_matches_eager_on_its_weights(
        pm: PromptModel, fp32_program: Path, int8_program: Path) -> None:
    ratio = int8_program.stat().st_size / fp32_program.stat().st_size
    assert ratio < 0.45  # the tiny model's float LoRA and graph are a large share here
    trainer = ProgramTrainer(int8_program, lora_shapes(pm))
    adapter = random_adapter(pm, 4)
    trainer.load_state(adapter)
    load_trainable_state(pm, adapter)
    dequantized = build_loss_module(pm, "int8")  # eager, on the de-quantized weights
    batch = pm.encode([e.text for e in examples()[:3]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.3, 0.7]])
    weights = torch.ones(3)
    inputs = pad_inputs(batch, targets, weights, BATCH, SEQ)
    with torch.no_grad():
        loss, logits = dequantized(*inputs)
        float_logits = pm.class_logits(batch)
    program_loss, program_logits = trainer.run(batch, targets, weights)
    torch.testing.assert_close(program_logits, logits[:3], atol=1e-5, rtol=1e-5)
    assert program_loss == pytest.approx(float(loss), abs=1e-5)
    assert (program_logits - float_logits).abs().max() < 0.05  # int8 error vs float weights


# --- the real model -------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.smollm2
def test_smollm2_program_tracks_eager_for_20_steps(tmp_path: Path) -> None:
    """Same gradients as eager autograd on a first batch, then 20 AdamW steps whose losses track
    eager's. The adapters themselves are not compared after 20 steps: a fresh AdamW per step
    (as ``train_steps`` runs one step at a time here) moves each element by about ±lr whatever its
    gradient's size, so float rounding in a near-zero gradient flips whole steps, and over 30
    layers the worst tensors drift apart by up to ~25 % of their update while the losses stay
    within 1e-3."""
    pm = prompt_model("smollm2", 64)
    program = export_training_program(pm, quant="none", max_seq_len=64, batch_size=BATCH,
                                      out_file=tmp_path / "smollm2.pte")
    trainer = ProgramTrainer(program, lora_shapes(pm))
    trainer.load_state(trainable_state(pm))
    data = examples(16, 4)
    batch = pm.encode([e.text for e in data[:BATCH]])
    targets = torch.tensor([e.target for e in data[:BATCH]], dtype=torch.float32)
    weights = torch.ones(BATCH)
    loss, _ = trainer.run(batch, targets, weights)
    pm.network.zero_grad()
    eager_loss = weighted_loss(pm.class_logits(batch), targets, weights)
    eager_loss.backward()
    assert loss == pytest.approx(float(eager_loss), abs=1e-4)
    assert_gradients_match(pm, trainer, 1e-4, 1e-7)
    eager, device = step_by_step(pm, trainer, data, 1e-3, seed=0)
    np.testing.assert_allclose(device, eager, atol=1e-3)
