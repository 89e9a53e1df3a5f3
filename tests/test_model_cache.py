"""The de-quantized GGUF cache: first loads from several workers at once write it once."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

from lpfl.config import ModelSettings
from lpfl.model import loading


def test_concurrent_first_loads_dequantize_once(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + bytes(100))
    calls: list[Path] = []

    def slow_dequantize(source: Path, target: Path) -> None:
        calls.append(target)
        time.sleep(0.2)  # long enough for every worker to arrive while it runs
        target.mkdir(parents=True)
        (target / "config.json").write_text("{}", encoding="utf-8")

    monkeypatch.setattr(loading, "_dequantize_to_folder", slow_dequantize)
    settings = ModelSettings(source=str(gguf), cache_dir=str(tmp_path / "cache"))
    folders: list[Path] = []
    workers = [threading.Thread(target=lambda: folders.append(
        loading.resolve_folder(settings)[0])) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert len(calls) == 1
    assert len(folders) == 4 and len(set(folders)) == 1
    assert (folders[0] / "config.json").is_file()


def test_a_first_load_shows_its_stages_and_leaves_transformers_bars_as_they_were(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The slow steps are faked: what is checked is the bar and transformers' bar setting."""
    from transformers.utils import logging as hf_logging

    from tests.test_progress import on_a_terminal

    class Fake:
        config = object()

        @classmethod
        def from_pretrained(cls, *args: object, **kwargs: object) -> Fake:
            return cls()

        @classmethod
        def from_config(cls, *args: object, **kwargs: object) -> Fake:
            return cls()

        def state_dict(self) -> dict[str, object]:
            return {}

        def load_state_dict(self, state: dict[str, object]) -> None:
            pass

    saved: list[Path] = []
    monkeypatch.setattr(loading, "AutoTokenizer", Fake)
    monkeypatch.setattr(loading, "AutoModelForCausalLM", Fake)
    monkeypatch.setattr(loading, "_save_atomically",
                        lambda model, tokenizer, target: saved.append(target))
    tty = on_a_terminal(monkeypatch)
    hf_logging.enable_progress_bar()
    loading._dequantize_to_folder(tmp_path / "model.gguf", tmp_path / "cache")
    assert saved == [tmp_path / "cache"]
    assert "de-quantizing model.gguf" in tty.getvalue() and "save" in tty.getvalue()
    assert hf_logging.is_progress_bar_enabled()
    logging.getLogger("lpfl").setLevel(logging.WARNING)  # -q: no bar, transformers' off too
    seen: list[bool] = []
    monkeypatch.setattr(loading, "_save_atomically",
                        lambda model, tokenizer, target: seen.append(
                            hf_logging.is_progress_bar_enabled()))
    loading._dequantize_to_folder(tmp_path / "model.gguf", tmp_path / "cache")
    assert seen == [False] and hf_logging.is_progress_bar_enabled()
