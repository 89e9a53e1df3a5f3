"""``run_export``: the stages in order, the artefact folder, its manifest and parity check.

An artefact folder holds ``score.pte`` or ``score.onnx`` (optionally ``train.pte``), the
tokenizer files under ``tokenizer/`` and ``manifest.json`` (:mod:`lpfl.artefact`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lpfl.artefact import Manifest, ProgramEntry, program_entry, write_manifest
from lpfl.errors import ConfigError
from lpfl.export import stages
from lpfl.export.config import ExportConfig
from lpfl.export.constant_lora import ConstantLoraScorer, lora_keys
from lpfl.export.onnx_export import export_onnx, quantize_onnx
from lpfl.export.parity import Parity, check, measure, parity_texts
from lpfl.export.scoring_graph import MAX_BATCH, ScoringGraph, dynamic_shapes, example_inputs
from lpfl.model.prompt import PromptModel
from lpfl.progress import stages as progress_stages

log = logging.getLogger(__name__)

TOKENIZER_DIR = "tokenizer"
TRAIN_FILE = "train.pte"
TRAINING_QUANT = {"none": "none", "int8": "int8", "8da4w": "4bit"}
"""How the training program stores the frozen base for each score-program scheme (its weights
are de-quantized in the graph; activations stay float, since the backward needs them)."""


@dataclass(frozen=True)
class ScoreProgram:
    """A written score program and what the manifest says about its shapes and LoRA data."""

    path: Path
    data: Path | None = None
    lora_keys: Mapping[str, str] = field(default_factory=dict)
    static_batch: int = 0
    seq_buckets: tuple[int, ...] = ()


def build_score_program(config: ExportConfig, pm: PromptModel,
                        graph: ScoringGraph) -> ScoreProgram:
    """Quantize, export, lower and write the score program into ``config.out``: for ONNX with
    LoRA as inputs and dynamic shapes, for ExecuTorch with LoRA as external constants and one
    static method per sequence bucket (:mod:`lpfl.export.constant_lora`)."""
    if config.runtime == "onnxruntime":
        program = stages.export_program(graph, example_inputs(pm, graph),
                                        dynamic_shapes(graph, pm.max_length),
                                        runtime_asserts=not graph.words.single)
        return ScoreProgram(quantize_onnx(export_onnx(program, graph.lora_names, config.out),
                                          config.quant, config.group_size))
    scorer = ConstantLoraScorer(graph).eval()
    with progress_stages("score program", ("quantize", "export", "lower", "serialize")) as step:
        step("quantize")
        module = stages.quantize(scorer, config.quant, config.group_size)
        buckets = config.buckets(pm.max_length)
        step("export")
        programs = stages.export_static(module, pm, config.batch, buckets)
        step("lower")
        lowered = stages.lower(programs, config.target)
        step("serialize")
        path, data = stages.serialize(lowered, config.out)
    return ScoreProgram(path, data, lora_keys(data.read_bytes(), scorer), config.batch, buckets)


def build_training_program(config: ExportConfig, pm: PromptModel) -> ProgramEntry:
    """The on-device training program (``--training``), built by
    :mod:`lpfl.export.training_program`."""
    try:
        from lpfl.export.training_program import export_training_program
    except ImportError as exc:
        raise ConfigError(f"--training needs lpfl.export.training_program, which this "
                          f"installation lacks ({exc}); export without --training") from None
    path = export_training_program(pm, quant=TRAINING_QUANT[config.quant],
                                   max_seq_len=pm.max_length,
                                   batch_size=config.train_batch_size,
                                   out_file=config.out / TRAIN_FILE)
    return program_entry(path, config.out, "train", "executorch", config.quant)


def run_export(config: ExportConfig) -> tuple[Manifest, Parity | None]:
    """Export ``config``'s model into ``config.out``; returns the manifest and the parity
    measured with the written artefact (None when ``parity_texts`` is 0)."""
    from lpfl.program_scorer import ProgramScorer

    run = config.run_config()
    pm = stages.load(run)
    graph = stages.prepare_lora(pm, run.lora)
    config.out.mkdir(parents=True, exist_ok=True)
    score = build_score_program(config, pm, graph)
    programs = [program_entry(score.path, config.out, "score", config.runtime, config.quant,
                              score.data)]
    if config.training:
        programs.append(build_training_program(config, pm))
    saved = pm.tokenizer.save_pretrained(str(config.out / TOKENIZER_DIR))
    tokenizer_files = tuple(sorted(Path(f).relative_to(config.out).as_posix() for f in saved
                                   if Path(f).is_file()))
    manifest = Manifest(model_id=pm.base.model_id, tokenizer_files=tokenizer_files,
                        pattern=run.prompt.pattern, label_words=run.prompt.label_words,
                        label_tokens=pm.encoder.label_tokens, max_seq_len=pm.max_length,
                        lora_shapes=graph.lora_shapes, lora=run.lora, programs=tuple(programs),
                        max_batch=score.static_batch or MAX_BATCH,
                        static_batch=score.static_batch, seq_buckets=score.seq_buckets,
                        lora_keys=score.lora_keys)
    write_manifest(config.out, manifest)
    if not config.parity_texts:
        return manifest, None
    scorer = ProgramScorer(config.out, runtime=config.runtime, model_id=pm.base.model_id,
                           lora_shapes=graph.lora_shapes)
    parity = measure(pm, scorer, parity_texts(config.parity_texts))
    manifest = dataclasses.replace(manifest, parity=dataclasses.asdict(parity))
    write_manifest(config.out, manifest)
    check(parity, config.quant)
    return manifest, parity
