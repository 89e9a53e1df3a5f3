"""The artefact manifest: round trip, digests, and the refusals a client relies on."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from lpfl.artefact import (
    Manifest,
    check_compatible,
    installed_version,
    load_manifest,
    program_entry,
    verify_files,
    write_manifest,
)
from lpfl.config import LoraSettings
from lpfl.errors import ArtefactError

SHAPES = {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": (8, 64),
          "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": (64, 8)}
ET_VERSION = installed_version("executorch")


@pytest.fixture
def artefact(tmp_path: Path) -> tuple[Path, Manifest]:
    program = tmp_path / "score.pte"
    program.write_bytes(b"program bytes")
    manifest = Manifest(
        model_id="tiny-llama", tokenizer_files=("tokenizer/tokenizer.json",),
        pattern="Review: {text} It was", label_words=(" bad", " so good"),
        label_tokens=((7,), (31, 9)),
        max_seq_len=48, lora_shapes=SHAPES, lora=LoraSettings(),
        programs=(program_entry(program, tmp_path, "score", "executorch", "none"),))
    write_manifest(tmp_path, manifest)
    return tmp_path, manifest


def _check(manifest: Manifest, **changes: object) -> None:
    kwargs: dict[str, object] = {"runtime": "executorch", "runtime_version": ET_VERSION,
                                 "model_id": "tiny-llama", "lora_shapes": SHAPES}
    kwargs.update(changes)
    check_compatible(manifest, **kwargs)  # type: ignore[arg-type]


def test_round_trip_keeps_every_field(artefact: tuple[Path, Manifest]) -> None:
    folder, manifest = artefact
    loaded = load_manifest(folder)
    assert loaded == manifest
    entry = loaded.program("score")
    assert (entry.file, entry.bytes, entry.runtime_version) == ("score.pte", 13, ET_VERSION)
    assert len(entry.sha256) == 64
    assert loaded.exporter["torch"] == installed_version("torch")
    assert loaded.tokenizer_dir == "tokenizer"


def test_manifest_of_one_token_ids_per_word_still_loads(artefact: tuple[Path, Manifest]) -> None:
    folder = artefact[0]
    table = json.loads((folder / "manifest.json").read_text())
    del table["label_tokens"]
    (folder / "manifest.json").write_text(json.dumps({**table, "label_ids": [7, 9]}))
    assert load_manifest(folder).label_tokens == ((7,), (9,))


def test_compatible_artefact_passes(artefact: tuple[Path, Manifest]) -> None:
    _check(artefact[1])
    verify_files(*artefact)


@pytest.mark.parametrize(("changes", "field", "fix"), [
    ({"runtime_version": "1.0.1"}, "runtime_version", "re-export with executorch==1.0.1"),
    ({"model_id": "smollm2-135m-instruct-q4_1"}, "model_id", "--backend eager"),
    ({"lora_shapes": {**SHAPES, next(iter(SHAPES)): (16, 64)}}, "lora_shapes", "[lora]"),
    ({"lora_shapes": dict(list(SHAPES.items())[:1])}, "lora_shapes", "unexpected"),
    ({"runtime": "onnxruntime", "runtime_version": "1.32.0"}, "runtime", "--target"),
])
def test_mismatch_is_refused_naming_the_field_and_the_fix(
        artefact: tuple[Path, Manifest], changes: dict[str, object], field: str,
        fix: str) -> None:
    with pytest.raises(ArtefactError, match=field) as info:
        _check(artefact[1], **changes)
    assert fix in str(info.value)


def test_damaged_program_file_is_refused(artefact: tuple[Path, Manifest]) -> None:
    folder, manifest = artefact
    (folder / "score.pte").write_bytes(b"program bytez")
    with pytest.raises(ArtefactError, match="damaged"):
        verify_files(folder, manifest)
    (folder / "score.pte").unlink()
    with pytest.raises(ArtefactError, match="missing"):
        verify_files(folder, manifest)


def test_bad_manifest_files_are_refused(tmp_path: Path,
                                        artefact: tuple[Path, Manifest]) -> None:
    with pytest.raises(ArtefactError, match="lpfl export"):
        load_manifest(tmp_path / "nowhere")
    folder = artefact[0]
    table = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**table, "schema": 99}))
    with pytest.raises(ArtefactError, match="schema"):
        load_manifest(folder)
    (folder / "manifest.json").write_text(json.dumps({**table, "max_seq_len": "long"}))
    with pytest.raises(ArtefactError, match="max_seq_len"):
        load_manifest(folder)


def test_missing_program_role_says_how_to_get_it(artefact: tuple[Path, Manifest]) -> None:
    with pytest.raises(ArtefactError, match="--training"):
        artefact[1].program("train")


def test_program_entry_validates_its_fields(artefact: tuple[Path, Manifest]) -> None:
    entry = artefact[1].program("score")
    for change in ({"role": "infer"}, {"runtime": "tflite"}, {"quant": "int4"}):
        with pytest.raises(ArtefactError, match=next(iter(change))):
            dataclasses.replace(entry, **change)  # type: ignore[arg-type]
