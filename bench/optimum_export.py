"""Hugging Face optimum against lpfl's own export, for SmolLM2, measured on one machine.

optimum is not an lpfl dependency: install it beside the pinned stack without touching it (the
PyTorch index is unreachable here, and a plain ``pip install`` would replace the pinned
torch/transformers), then run this script with lpfl's interpreter::

    pip download --no-deps optimum==2.1.0 optimum-onnx==0.1.0 -d /tmp/optdl
    pip download --no-deps optimum==1.27.0 optimum-executorch==0.1.0 -d /tmp/optdl
    pip install --no-deps --target /tmp/optimum_pkgs /tmp/optdl/optimum-2.1.0-*.whl \
        /tmp/optdl/optimum_onnx-0.1.0-*.whl
    pip install --no-deps --target /tmp/optimum_et01 /tmp/optdl/optimum-1.27.0-*.whl \
        /tmp/optdl/optimum_executorch-0.1.0-*.whl
    nice -n 10 .venv/bin/python bench/optimum_export.py --optimum-onnx-path /tmp/optimum_pkgs \
        --optimum-et-path /tmp/optimum_et01 --artefacts /tmp/lpfl-optimum \
        --out bench/results/optimum                 # ~25 min on a shared 2-core host
    python bench/optimum_export.py --out bench/results/optimum --report-only

The two optimum families cannot share one process (optimum-onnx 0.1.0 needs optimum 2.1,
optimum-executorch 0.1.0 optimum 1.x, both install the ``optimum`` namespace): each exporter
runs in a child with its own folder first on ``PYTHONPATH``; the ONNX family's folder is also
added to this process, which scores with ``ORTModelForCausalLM``.

Cases (``--cases``): lpfl's ``lpfl export`` (ONNX fp32 and int8, ExecuTorch XNNPACK 8da4w)
and optimum's exports of the same base model (``optimum.exporters.onnx`` fp32, its
``ORTQuantizer`` dynamic int8, ``optimum.exporters.executorch`` XNNPACK 8da4w). Each export runs
once, in a child process whose wall time is the export time, into ``--artefacts``; a rerun
reuses it. Then, in this one process at one thread, every program scores the same MR prompts:
class logits (label-word columns of the last position) against eager PyTorch (lpfl's prompt
model, zero adapter), and the latency of one batch of ``--batch`` prompts, median of
``--repeats`` round-robin repeats (a background load slows every case alike). The script also
records what each program takes as inputs and returns (can a round's adapter go in, are the
outputs class logits), and, for optimum's fp32 ONNX file, whether the LoRA'd weights can be
rewritten per round (the merged-adapter route). ``results.json`` and ``report.md`` (with
``lscpu``'s CPU model and flags) land in ``--out``.

Exit status 2 (and a report saying why) when no optimum exporter imports beside the pinned
stack.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import importlib.metadata
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("bench.optimum_export")

LPFL_CASES = ("lpfl-onnx:none", "lpfl-onnx:int8", "lpfl-et:8da4w")
OPTIMUM_CASES = ("optimum-onnx:none", "optimum-onnx:int8", "optimum-et:8da4w")
CASES = (*LPFL_CASES, *OPTIMUM_CASES)
PACKAGES = ("optimum", "optimum-onnx", "optimum-executorch")
PINNED = ("torch", "transformers", "executorch", "torchao", "onnxruntime", "onnx",
          "huggingface-hub", "peft")
MODULES = {"optimum-onnx": ("optimum.exporters.onnx:main_export",
                            "optimum.onnxruntime:ORTModelForCausalLM",
                            "optimum.onnxruntime:ORTQuantizer"),
           "optimum-executorch": ("optimum.exporters.executorch:main_export",
                                  "optimum.executorch:ExecuTorchModelForCausalLM")}
"""What each optimum exporter needs (``module:name``; the modules import lazily, so the names
are resolved); a case runs only if its exporter's names resolve."""
INTERESTING_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile",
                     "fma", "f16c")
EXIT_NO_OPTIMUM = 2
MAX_SEQ_LEN = 64


# ----------------------------------------------------------------------------- pure helpers


def requirement_conflicts(requires: Mapping[str, Sequence[str]],
                          installed: Mapping[str, str | None]) -> list[str]:
    """Each unmet requirement as ``"PKG VER requires REQ (installed: X)"``.

    ``requires`` maps ``"name version"`` to its ``Requires-Dist`` lines; requirements with
    markers (extras, platforms) are skipped; ``installed`` maps normalized names to versions
    (``None``: not installed)."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    conflicts = []
    for owner, lines in requires.items():
        for line in lines:
            try:
                req = Requirement(line)
            except InvalidRequirement:
                continue
            if req.marker is not None:
                continue
            have = installed.get(canonicalize_name(req.name))
            if have is None:
                conflicts.append(f"{owner} requires {req} (installed: none)")
            elif req.specifier and not req.specifier.contains(have, prereleases=True):
                conflicts.append(f"{owner} requires {req} (installed: {have})")
    return conflicts


def cpu_summary(lscpu: str) -> dict[str, Any]:
    """Model name, CPU count and the SIMD flags that matter for int8 GEMMs, from ``lscpu``."""
    fields: dict[str, str] = {}
    for line in lscpu.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    flags = fields.get("Flags", "").split()
    return {"model": fields.get("Model name", platform.processor() or "unknown"),
            "cpus": fields.get("CPU(s)", str(os.cpu_count())),
            "flags": [f for f in INTERESTING_FLAGS if f in flags]}


@dataclass
class CaseResult:
    """What one export produced and how its program compares with eager PyTorch."""

    name: str
    status: str = "not run"
    """``ok``, ``failed`` (``error`` says how), ``skipped`` or ``not run``."""
    error: str = ""
    export_s: float = 0.0
    program_bytes: int = 0
    files: list[str] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    output_floats_per_batch: int = 0
    """Floats the program returns for one batch of prompts."""
    lora_as_inputs: bool = False
    max_abs_diff: float | None = None
    agreement: float | None = None
    random_adapter_max_abs_diff: float | None = None
    batch_s: float | None = None
    notes: list[str] = field(default_factory=list)


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "–" if value is None else f"{value:{spec}}{suffix}"


def render_report(results: Mapping[str, Any]) -> str:
    """``report.md`` from ``results.json``'s content."""
    env = results["environment"]
    cpu = env["cpu"]
    lines = ["# optimum against lpfl's export (SmolLM2-135M-Instruct)", ""]
    lines.append(f"Machine: {cpu['model']}, {cpu['cpus']} CPUs, flags "
                 f"{', '.join(cpu['flags']) or 'none of ' + ', '.join(INTERESTING_FLAGS)}; "
                 f"{env['python']}; " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()
                                                  if v) + ".")
    lines.append("")
    for exporter, versions in results.get("installed", {}).items():
        lines.append(f"- {exporter} run with: "
                     + (", ".join(f"{k} {v}" for k, v in versions.items()) or "nothing installed"))
    if results.get("installed"):
        lines.append("")
    if results.get("conflicts"):
        lines += ["## Declared requirements not met by the pinned stack", ""]
        lines += [f"- {c}" for c in results["conflicts"]] + [""]
    if results.get("import_errors"):
        lines += ["## Import with the pinned stack", ""]
        lines += [f"- {pkg}: {err}" for pkg, err in results["import_errors"].items()] + [""]
    cases = results.get("cases", {})
    if not cases:
        lines.append("No case ran.")
        return "\n".join(lines) + "\n"
    setup = results["setup"]
    lines += ["## Measured", "",
              f"{setup['texts']} MR sentences against eager PyTorch (lpfl's prompt model, zero "
              f"adapter); latency: one batch of {setup['batch']} prompts (≤ {MAX_SEQ_LEN} "
              f"tokens), median of {setup['repeats']} round-robin repeats, "
              f"{setup['threads']} thread; eager: {_fmt(setup.get('eager_batch_s'), '.3f', ' s')}"
              ". Export time is the wall time of the export command (model load included).",
              "",
              "| case | status | export s | program MB | LoRA as inputs | outputs per batch "
              "(floats) | max |Δ logit| | agreement | random adapter |Δ| | batch s | vs eager |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    eager_s = setup.get("eager_batch_s")
    for name, c in cases.items():
        ratio = (f"{eager_s / c['batch_s']:.2f}×" if eager_s and c.get("batch_s") else "–")
        lines.append(
            f"| {name} | {c['status']} | {_fmt(c['export_s'] or None, '.0f')} | "
            f"{_fmt(c['program_bytes'] / 1e6 if c['program_bytes'] else None, '.1f')} | "
            f"{'yes' if c['lora_as_inputs'] else 'no'} | "
            f"{c['output_floats_per_batch'] or '–'} | {_fmt(c['max_abs_diff'], '.2e')} | "
            f"{_fmt(None if c['agreement'] is None else 100 * c['agreement'], '.1f', ' %')} | "
            f"{_fmt(c['random_adapter_max_abs_diff'], '.2e')} | "
            f"{_fmt(c['batch_s'], '.3f')} | {ratio} |")
    lines.append("")
    for name, c in cases.items():
        details = [f"inputs: {', '.join(c['inputs'][:6])}"
                   + (f" … ({len(c['inputs'])} in all)" if len(c["inputs"]) > 6 else "")
                   ] if c["inputs"] else []
        if c["outputs"]:
            details.append(f"outputs: {', '.join(c['outputs'])}")
        details += c["notes"]
        if c["error"]:
            details.append(f"error: `{c['error']}`")
        if details:
            lines += [f"**{name}**", ""] + [f"- {d}" for d in details] + [""]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- environment


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        lscpu = ""
    return {"cpu": cpu_summary(lscpu), "python": f"Python {platform.python_version()}",
            "versions": {d: _version(d) for d in (*PINNED, *PACKAGES)}}


def declared_conflicts() -> list[str]:
    """Unmet ``Requires-Dist`` of the installed optimum packages."""
    from packaging.utils import canonicalize_name

    requires = {}
    for name in PACKAGES:
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        requires[f"{name} {dist.version}"] = list(dist.requires or [])
    installed: dict[str, str | None] = {str(canonicalize_name(d.metadata["Name"])): d.version
                                        for d in importlib.metadata.distributions()}
    return requirement_conflicts(requires, installed)


def import_error(package: str) -> str:
    """Why ``package``'s exporter modules fail to import here ("" when they import)."""
    if _version(package) is None:
        return f"{package} is not installed"
    for target in MODULES[package]:
        module, _, name = target.partition(":")
        try:
            getattr(importlib.import_module(module), name)
        except Exception as exc:  # any import failure is the finding
            return f"from {module} import {name}: {type(exc).__name__}: {exc}"
    return ""


def _child_env(path: str) -> dict[str, str]:
    """The environment of a child that uses the optimum installed in ``path`` (one optimum
    family per process: optimum-executorch 0.1.0 needs optimum 1.x, optimum-onnx optimum 2.1)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (path, env.get("PYTHONPATH", "")) if p)
    return env


def probe(package: str, path: str) -> dict[str, Any]:
    """In a child with ``path`` first on the import path: the installed optimum versions, their
    unmet declared requirements and the import error of ``package``'s exporter."""
    cmd = [sys.executable, __file__, "probe", "--case", package]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                          env=_child_env(path))
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"versions": {}, "conflicts": [],
                "import_error": f"probe failed: {proc.stderr.strip()[-400:]}"}
    found: dict[str, Any] = json.loads(lines[-1])
    return found


def _exporter(case: str) -> str:
    return "optimum-onnx" if case.startswith("optimum-onnx") else (
        "optimum-executorch" if case.startswith("optimum-et") else "lpfl")


# ----------------------------------------------------------------------------- exports


def _model_folder() -> Path:
    from lpfl.config import ModelSettings
    from lpfl.model.loading import resolve_folder

    return resolve_folder(ModelSettings(source="smollm2"))[0]


def export_command(case: str, artefacts: Path) -> list[str]:
    """The command that writes ``case``'s artefact into ``artefacts / case``."""
    target, quant = case.split(":")
    out = artefacts / case.replace(":", "-")
    if target.startswith("lpfl"):
        runtime = "onnx" if target == "lpfl-onnx" else "executorch-xnnpack"
        return [str(Path(sys.executable).with_name("lpfl")), "export", "--model", "smollm2",
                "--target", runtime, "--quant", quant, "--max-seq-len", str(MAX_SEQ_LEN),
                "--parity-texts", "0", "--out", str(out)]
    return [sys.executable, __file__, "export-one", "--case", case, "--artefacts",
            str(artefacts)]


def export_one(case: str, artefacts: Path) -> None:
    """Child process: one optimum export (``export_command``)."""
    folder = _model_folder()
    out = artefacts / case.replace(":", "-")
    if case == "optimum-onnx:none":
        from optimum.exporters.onnx import main_export

        main_export(str(folder), output=out, task="text-generation", do_validation=True)
    elif case == "optimum-onnx:int8":
        import shutil

        from optimum.onnxruntime import ORTQuantizer
        from optimum.onnxruntime.configuration import AutoQuantizationConfig

        fp32 = artefacts / "optimum-onnx-none"
        if not (fp32 / "model.onnx").is_file():
            raise SystemExit(f"{fp32} is missing: run the optimum-onnx:none case first")
        quantizer = ORTQuantizer.from_pretrained(fp32, file_name="model.onnx")
        config = AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=False)
        quantizer.quantize(save_dir=out, quantization_config=config)
        for extra in fp32.iterdir():
            if extra.suffix in (".json", ".jinja", ".model") and not (out / extra.name).exists():
                shutil.copy(extra, out / extra.name)
    elif case == "optimum-et:8da4w":
        from optimum.exporters.executorch import main_export as et_export

        et_export(str(folder), task="text-generation", recipe="xnnpack", output_dir=out,
                  qlinear="8da4w", qembedding="8w", max_seq_len=MAX_SEQ_LEN)
    else:
        raise SystemExit(f"no optimum export for {case}")


def _folder_bytes(folder: Path, suffixes: Sequence[str]) -> tuple[int, list[str]]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and
                   any(p.name.endswith(s) for s in suffixes))
    return sum(p.stat().st_size for p in files), [p.relative_to(folder).as_posix() for p in files]


def run_export(case: str, artefacts: Path, result: CaseResult, path: str,
               versions: Mapping[str, str]) -> Path | None:
    """Export ``case`` unless its folder holds an export finished with the same ``versions`` of
    the exporter's packages; fills export time and size."""
    out = artefacts / case.replace(":", "-")
    done = out / "lpfl-bench-export.json"
    if not done.is_file() or json.loads(done.read_text()).get("versions") != dict(versions):
        out.mkdir(parents=True, exist_ok=True)
        cmd = export_command(case, artefacts)
        log.info("exporting %s: %s", case, " ".join(cmd))
        started = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                              env=_child_env(path))
        seconds = time.perf_counter() - started
        (out / "export.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            tail = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
            result.status, result.error = "failed", " | ".join(tail[-3:])[-600:]
            result.export_s = seconds
            return None
        done.write_text(json.dumps({"export_s": seconds, "command": cmd,
                                    "versions": dict(versions)}))
    result.export_s = json.loads(done.read_text())["export_s"]
    result.program_bytes, result.files = _folder_bytes(out, (".onnx", ".onnx_data", ".pte",
                                                             ".ptd", ".data"))
    return out


# ----------------------------------------------------------------------------- scoring


Scorer = Callable[[Sequence[str]], Any]
"""texts -> ``[len(texts), classes]`` class logits (a torch tensor)."""


def _ort_session_options() -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return options


def optimum_onnx_scorer(folder: Path, file_name: str, pm: Any,
                        result: CaseResult) -> Scorer:
    """Class logits from optimum's ``ORTModelForCausalLM``: the label-word columns of the last
    position of the full ``[batch, seq, vocab]`` logits it returns."""
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM

    model = ORTModelForCausalLM.from_pretrained(folder, file_name=file_name, use_cache=False,
                                                use_io_binding=False,
                                                provider="CPUExecutionProvider",
                                                session_options=_ort_session_options())
    log_file = folder / "export.log"
    validation = [line.strip(" -") for line in (log_file.read_text().splitlines()
                                                 if log_file.is_file() else [])
                  if "not within the set tolerance" in line or "logits: max diff" in line]
    if validation:
        result.notes.append("optimum's own export validation (random inputs against PyTorch): "
                            + " ".join(validation))
    session = model.session if hasattr(model, "session") else model.model
    result.inputs = [i.name for i in session.get_inputs()]
    result.outputs = [f"{o.name}{list(o.shape)}" for o in session.get_outputs()]
    ids = [int(t[0]) for t in pm.encoder.label_tokens]

    def score(texts: Sequence[str]) -> torch.Tensor:
        batch = pm.encoder.encode(texts)
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"],
                           attention_mask=batch["attention_mask"]).logits
        result.output_floats_per_batch = int(logits.numel())
        return torch.as_tensor(logits)[:, -1, ids].float()

    return score


def optimum_et_scorer(folder: Path, pm: Any, result: CaseResult) -> Scorer:
    """Class logits from optimum-executorch's ``model.pte``: batch 1, no attention mask (one
    prompt per call, unpadded), KV cache positions from 0 for every prompt."""
    import executorch.kernels.quantized
    import torch
    from executorch.extension.pybindings.portable_lib import _load_for_executorch

    with contextlib.suppress(ImportError):
        import executorch.extension.llm.custom_ops  # noqa: F401
    result.notes.append(pte_delegation(folder / "model.pte"))
    module = _load_for_executorch(str(folder / "model.pte"))
    meta = module.method_meta("forward")
    result.inputs = [f"input {i}: {list(meta.input_tensor_meta(i).sizes())}"
                     for i in range(meta.num_inputs())]
    result.outputs = [f"output {i}: {list(meta.output_tensor_meta(i).sizes())}"
                      for i in range(meta.num_outputs())]
    ids = [int(t[0]) for t in pm.encoder.label_tokens]

    def score(texts: Sequence[str]) -> torch.Tensor:
        rows, floats = [], 0
        for text in texts:
            enc = pm.encoder.encode([text])
            tokens = enc["input_ids"][enc["attention_mask"].bool()].reshape(1, -1)
            positions = torch.arange(tokens.shape[1], dtype=torch.long)
            out = module.run_method("forward", (tokens, positions))[0]
            floats += out.numel()
            last = out[0, -1] if out.dim() == 3 else out[0]
            rows.append(last[ids].float())
        result.output_floats_per_batch = floats
        return torch.stack(rows)

    return score


def onnx_weight_swap(folder: Path, pm: Any, texts: Sequence[str],
                     result: CaseResult) -> None:
    """Can a round's adapter reach optimum's fp32 ONNX file without re-exporting? Look for the
    LoRA'd weights (q_proj, v_proj) among its initializers, by name and by content; if all are
    found, merge a random adapter into them (W + scale·B·A), rebuild the session from the
    rewritten model and compare with eager PyTorch holding the same adapter."""
    import onnx
    import onnxruntime as ort
    import torch

    from lpfl.export.parity import random_adapter
    from lpfl.model.adapters import load_trainable_state, trainable_state

    model = onnx.load(str(folder / "model.onnx"))
    names = {i.name: i for i in model.graph.initializer}
    layers = int(pm.base.model.config.num_hidden_layers)
    wanted = [f"model.layers.{i}.self_attn.{m}.weight" for i in range(layers)
              for m in ("q_proj", "v_proj")]
    by_name = [n for n in wanted if n in names]
    # The TorchScript exporter stores each linear weight transposed under an anonymous name
    # (onnx::MatMul_…); find it by its bytes, as lpfl finds XNNPACK's sha256-named constants.
    by_digest = {hashlib.sha256(onnx.numpy_helper.to_array(i).tobytes()).hexdigest(): i
                 for i in model.graph.initializer if len(i.dims) == 2}
    base_weights = _merged_weights(pm, wanted)  # zero adapter: the base weights themselves
    located = {}
    for name in wanted:
        digest = hashlib.sha256(base_weights[name].T.contiguous().numpy().tobytes()).hexdigest()
        if digest in by_digest:
            located[name] = by_digest[digest]
    result.notes.append(f"LoRA'd weights (q_proj, v_proj) among the fp32 file's {len(names)} "
                        f"initializers: {len(by_name)} of {len(wanted)} by parameter name, "
                        f"{len(located)} of {len(wanted)} by content (stored transposed, "
                        f"e.g. {sorted(t.name for t in located.values())[:2]})")
    if len(located) != len(wanted):
        return
    initial = trainable_state(pm)
    adapter = random_adapter(pm)
    load_trainable_state(pm, adapter)
    try:
        started = time.perf_counter()
        merged = _merged_weights(pm, wanted)
        for name, tensor in located.items():
            value = merged[name].T.contiguous().numpy()
            tensor.CopyFrom(onnx.numpy_helper.from_array(value, tensor.name))
        session = ort.InferenceSession(model.SerializeToString(), _ort_session_options(),
                                       providers=["CPUExecutionProvider"])
        swap_s = time.perf_counter() - started
        batch = pm.encoder.encode(texts)
        feeds = {k: batch[k].numpy() for k in ("input_ids", "attention_mask", "position_ids")
                 if k in {i.name for i in session.get_inputs()}}
        logits = torch.from_numpy(session.run(None, feeds)[0])
        ids = [int(t[0]) for t in pm.encoder.label_tokens]
        diff = float((logits[:, -1, ids] - pm.score(texts)).abs().max())
        result.random_adapter_max_abs_diff = diff
        result.notes.append(f"merged-adapter route: a random adapter merged into the "
                            f"{len(located)} initializers and the session rebuilt in "
                            f"{swap_s:.1f} s; max |Δ logit| against eager {diff:.2e}")
    finally:
        load_trainable_state(pm, initial)


def _merged_weights(pm: Any, names: Sequence[str]) -> dict[str, Any]:
    """``W + scale · B @ A`` for each base weight ``names`` (HF parameter names)."""
    base = pm.network.get_base_model()
    merged = {}
    for name in names:
        module: Any = base.get_submodule(name.removesuffix(".weight"))
        if not hasattr(module, "get_delta_weight"):
            raise RuntimeError(f"{name} has no LoRA layer")
        merged[name] = (module.get_base_layer().weight.detach()
                        + module.get_delta_weight(module.active_adapter[0]).detach())
    return merged


def pte_delegation(path: Path) -> str:
    """Per method that runs ops: its delegate calls by backend and its instruction count."""
    from collections import Counter

    from executorch.exir._serialize._program import deserialize_pte_binary

    loaded: Any = deserialize_pte_binary(path.read_bytes())
    program = getattr(loaded, "program", loaded)
    parts = []
    for plan in program.execution_plan:
        if not plan.chains or not plan.chains[0].instructions:
            continue  # a constant method (optimum's get_* metadata)
        delegates = Counter(d.id for d in plan.delegates)
        parts.append(f"{plan.name}: {len(plan.chains[0].instructions)} instructions, "
                     + ", ".join(f"{n} {backend} delegates" for backend, n in delegates.items()))
    return "lowered program: " + "; ".join(parts)


def lpfl_scorer(folder: Path, runtime: str, pm: Any, graph_shapes: Mapping[str, Any],
                texts: Sequence[str], result: CaseResult) -> Scorer:
    """lpfl's ``ProgramScorer`` on its artefact; lpfl's parity check fills the random-adapter
    difference (the adapter goes in as new inputs / a rewritten data file)."""
    from lpfl.export.parity import measure
    from lpfl.program_scorer import ProgramScorer

    scorer = ProgramScorer(folder, runtime=runtime, model_id=pm.base.model_id,
                           lora_shapes=graph_shapes)
    manifest = scorer.manifest
    entry = manifest.program("score")
    if runtime == "onnxruntime":
        import onnxruntime as ort

        session = ort.InferenceSession(str(folder / entry.file),
                                       providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        result.inputs = names
        result.outputs = [f"{o.name}{list(o.shape)}" for o in session.get_outputs()]
        del session
    else:
        result.inputs = ["input_ids", "attention_mask", "position_ids"]
        result.outputs = [f"class_logits[{manifest.static_batch}, "
                          f"{len(manifest.label_words)}] per method "
                          f"({', '.join(f'forward_{n}' for n in manifest.seq_buckets)})"]
        result.notes.append(f"LoRA: {len(manifest.lora_keys)} tensors in the external data file "
                            f"{entry.data_file}, rewritten per round")
        result.notes.append(pte_delegation(folder / entry.file))
    result.lora_as_inputs = True
    parity = measure(pm, scorer, texts, batch_size=8)
    result.random_adapter_max_abs_diff = parity.random_adapter_max_abs_diff
    result.output_floats_per_batch = 8 * pm.encoder.num_classes

    def score(batch_texts: Sequence[str]) -> Any:
        return scorer.score(batch_texts, batch_size=len(batch_texts))

    return score


# ----------------------------------------------------------------------------- main run


def measure_all(cases: Sequence[str], folders: Mapping[str, Path],
                results: dict[str, CaseResult], args: argparse.Namespace) -> dict[str, Any]:
    """Open every exported program, compare with eager and time the same batch round-robin."""
    import torch

    from lpfl.config import ModelSettings, RunConfig
    from lpfl.export import stages
    from lpfl.export.parity import parity_texts
    from lpfl.export.scoring_graph import ScoringGraph

    torch.set_num_threads(1)
    run = RunConfig(model=ModelSettings(source="smollm2", max_length=MAX_SEQ_LEN))
    pm = stages.load(run)
    graph: ScoringGraph = stages.prepare_lora(pm, run.lora)
    texts = parity_texts(args.texts)
    batch = texts[: args.batch]
    with torch.no_grad():
        eager = pm.score(texts, batch_size=args.batch)
    scorers: dict[str, Scorer] = {"eager": lambda t: pm.score(t, batch_size=len(t))}
    for case in cases:
        folder, result = folders.get(case), results[case]
        if folder is None:
            continue
        try:
            scorer: Scorer
            if case.startswith("lpfl"):
                runtime = "onnxruntime" if case.startswith("lpfl-onnx") else "executorch"
                scorer = lpfl_scorer(folder, runtime, pm, graph.lora_shapes, texts, result)
            elif case.startswith("optimum-onnx"):
                name = "model.onnx" if case.endswith("none") else "model_quantized.onnx"
                scorer = optimum_onnx_scorer(folder, name, pm, result)
                result.notes.append("inputs are fixed by optimum's OnnxConfig: no adapter "
                                    "input; the outputs are the whole vocabulary at every "
                                    "position")
                if case.endswith("none"):
                    try:
                        onnx_weight_swap(folder, pm, texts[:16], result)
                    except Exception as exc:  # the route failing is a finding
                        log.exception("weight swap on %s failed", case)
                        result.notes.append(f"merged-adapter route failed: "
                                            f"{type(exc).__name__}: {exc}"[:400])
            else:
                scorer = optimum_et_scorer(folder, pm, result)
                result.notes.append("batch 1 and no attention mask: a batch of prompts runs "
                                    "as one call per prompt")
            with torch.no_grad():
                logits = torch.as_tensor(scorer(texts))
            result.max_abs_diff = float((logits - eager).abs().max())
            result.agreement = float((logits.argmax(-1) == eager.argmax(-1)).float().mean())
            scorers[case] = scorer
            result.status = "ok"
        except Exception as exc:  # a case that cannot score is a finding, not a crash
            log.exception("scoring %s failed", case)
            result.status, result.error = "failed", f"{type(exc).__name__}: {exc}"[:600]
    times: dict[str, list[float]] = {name: [] for name in scorers}
    for _ in range(args.repeats):
        for name, scorer in scorers.items():
            started = time.perf_counter()
            with torch.no_grad():
                scorer(batch)
            times[name].append(time.perf_counter() - started)
    for case in cases:
        if case in times:
            results[case].batch_s = statistics.median(times[case])
    return {"texts": len(texts), "batch": len(batch), "repeats": args.repeats, "threads": 1,
            "eager_batch_s": statistics.median(times["eager"]),
            "prompt_tokens": [int(n) for n in pm.encoder.encode(batch)["attention_mask"]
                              .sum(-1)]}


def write(out: Path, results: Mapping[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "report.md").write_text(render_report(results))
    log.info("wrote %s", out / "report.md")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("command", nargs="?", default="run",
                        choices=("run", "export-one", "probe"))
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--case", default="")
    parser.add_argument("--artefacts", type=Path, default=Path("/tmp/lpfl-optimum"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/optimum"))
    parser.add_argument("--texts", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--optimum-onnx-path", default="",
                        help="folder holding optimum + optimum-onnx (pip install --target)")
    parser.add_argument("--optimum-et-path", default="",
                        help="folder holding optimum + optimum-executorch (pip install --target)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.command == "export-one":
        export_one(args.case, args.artefacts)
        return 0
    if args.command == "probe":
        print(json.dumps({"versions": {p: _version(p) for p in PACKAGES},
                          "conflicts": declared_conflicts(),
                          "import_error": import_error(args.case)}))
        return 0
    if args.report_only:
        saved = json.loads((args.out / "results.json").read_text())
        (args.out / "report.md").write_text(render_report(saved))
        return 0
    cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown cases {unknown}; choose from {', '.join(CASES)}")
    paths = {"lpfl": "", "optimum-onnx": args.optimum_onnx_path,
             "optimum-executorch": args.optimum_et_path}
    probes = {p: probe(p, paths[p]) for p in MODULES}
    results: dict[str, Any] = {
        "environment": environment(),
        "installed": {p: {k: v for k, v in found["versions"].items() if v}
                      for p, found in probes.items()},
        "conflicts": sorted({c for found in probes.values() for c in found["conflicts"]}),
        "import_errors": {p: found["import_error"] for p, found in probes.items()
                          if found["import_error"]}}
    errors = results["import_errors"]
    if all(p in errors for p in MODULES):
        write(args.out, results)
        print("optimum's exporters do not import beside the pinned stack:", file=sys.stderr)
        for line in [*results["conflicts"], *errors.values()]:
            print(f"  {line}", file=sys.stderr)
        return EXIT_NO_OPTIMUM
    if args.optimum_onnx_path and "optimum-onnx" not in errors:
        sys.path.insert(0, args.optimum_onnx_path)  # ORTModelForCausalLM scores in-process
    case_results = {c: CaseResult(c) for c in cases}
    folders: dict[str, Path] = {}
    for case in cases:
        exporter = _exporter(case)
        if exporter in errors:
            case_results[case].status = "skipped"
            case_results[case].error = errors[exporter]
            continue
        versions = results["installed"].get(exporter, {"lpfl": _version("lpfl") or ""})
        folder = run_export(case, args.artefacts, case_results[case], paths[exporter],
                            versions)
        if folder is not None:
            folders[case] = folder
    results["setup"] = measure_all(cases, folders, case_results, args)
    results["cases"] = {c: asdict(r) for c, r in case_results.items()}
    write(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
