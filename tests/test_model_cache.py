"""The de-quantized GGUF cache: first loads from several workers at once write it once."""

from __future__ import annotations

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
