"""Run configuration: one frozen dataclass per stage, validated on construction.

A run file is TOML with one table per stage (``[model]``, ``[prompt]``, ``[lora]``,
``[soft_labels]``, ``[data]``, ``[federation]``, ``[run]``), plus an optional ``[server]`` table
that only ``lpfl server`` reads (:mod:`lpfl.transport`) and an optional ``[field]`` table that
only ``lpfl field`` reads (:mod:`lpfl.fleet`). Keys may be written with dashes or
underscores. Any value can be overridden from the command line with ``--set section.key=value``
(the value is parsed as TOML, so ``--set federation.rounds=3`` and
``--set run.methods='["lp-fl"]'`` both work). Every problem is reported as a :class:`ConfigError`
that names the key and says what to change.
"""

from __future__ import annotations

import dataclasses
import enum
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from lpfl.errors import ConfigError
from lpfl.methods import METHODS


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass(frozen=True)
class ModelSettings:
    """Which base model to load and how long prompts may be.

    ``source`` is ``"smollm2"`` (the packaged SmolLM2-135M-Instruct GGUF), ``"tiny-llama"`` or
    ``"tiny-bert"`` (small random models built from a config, for tests and emulated devices), a
    path to a local ``.gguf`` file, or a local Hugging Face model folder.
    """

    source: str = "smollm2"
    max_length: int = 96
    cache_dir: str = ""
    """Where de-quantized GGUF weights are cached; empty means ``~/.cache/lpfl/models``."""

    def __post_init__(self) -> None:
        _require(bool(self.source), "model.source is empty: use 'smollm2', 'tiny-llama', "
                 "'tiny-bert', a .gguf file or a model folder")
        _require(8 <= self.max_length <= 4096,
                 f"model.max_length={self.max_length} must be between 8 and 4096 tokens")


@dataclass(frozen=True)
class PromptSettings:
    """The pattern that turns a text into a prompt and the verbalizer (one label word per class).

    For a causal LM the label word is scored at the last position, so the pattern ends where the
    label word would follow; a word may be several tokens (scored by their summed
    log-probability, one forward row per class). For a masked LM the pattern must contain
    ``[MASK]`` once and every label word must be one token.
    """

    pattern: str = "Review: {text}\nAll in all, the movie was"
    label_words: tuple[str, ...] = (" terrible", " great")

    def __post_init__(self) -> None:
        _require(self.pattern.count("{text}") == 1,
                 f"prompt.pattern must contain {{text}} exactly once, got {self.pattern!r}")
        _require(len(self.label_words) >= 2,
                 "prompt.label_words needs one word per class (at least two)")
        _require(len(set(self.label_words)) == len(self.label_words),
                 f"prompt.label_words must be distinct, got {list(self.label_words)}")

    @property
    def num_classes(self) -> int:
        return len(self.label_words)


@dataclass(frozen=True)
class LoraSettings:
    """LoRA adapter shape: the only trainable (and transmitted) state in LP-FL."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")

    def __post_init__(self) -> None:
        _require(self.r >= 1, f"lora.r={self.r} must be at least 1")
        _require(self.alpha >= 1, f"lora.alpha={self.alpha} must be at least 1")
        _require(0.0 <= self.dropout < 1.0, f"lora.dropout={self.dropout} must be in [0, 1)")
        _require(len(self.target_modules) > 0,
                 "lora.target_modules is empty: name the linear layers to adapt, e.g. q_proj")


class SoftTarget(enum.Enum):
    """What a soft-labeled text is trained towards."""

    DISTRIBUTION = "distribution"
    """The teacher's class distribution at ``soft_labels.temperature``."""
    ARGMAX = "argmax"
    """A one-hot vector on the teacher's most likely class (classic pseudo-labels)."""


@dataclass(frozen=True)
class SoftLabelSchedule:
    """How clients use their unlabeled texts each round: pseudo-labels and a language-model loss.

    From ``start_round`` on, each client scores its unlabeled pool with the newest global model
    (the *teacher*) and keeps texts whose top teacher probability is at least ``threshold``. By
    round ``r`` at most ``min(growth * (r - start_round + 1), max_per_client)`` are kept, split
    evenly across classes when ``balanced``.

    The teacher scores every text under the run's pattern and each of ``teacher_patterns`` (other
    wordings with the same label words, scored by the same global adapter) and averages the
    members' probabilities; with ``agreement`` only texts on which every member predicts the same
    class are eligible. With ``align`` the teacher's distribution is first shifted so that its
    mean over the pool matches the class frequencies of the client's labeled examples
    (distribution alignment). Kept texts train towards ``target``: the teacher's distribution
    with its logits divided by ``temperature`` (below 1 sharpens it), or its argmax as a one-hot
    label.
    A student trained on its own unsharpened probabilities gets no gradient from them at the
    start of a round, so sharpening or a stronger teacher is what makes soft labels teach.

    ``gold_share`` keeps the labeled examples' weight: when positive, that share of every local
    batch is labeled examples and the rest soft ones, however many soft labels there are; at 0
    batches are drawn from all examples alike. Each soft example's loss is scaled by ``weight``.

    With ``lm_weight`` above 0 every local step also trains the adapter with the language-model
    loss on a batch of the client's unlabeled texts written in the run's pattern (prompt-based
    continued pre-training), scaled by ``lm_weight``; this needs a causal LM.
    The defaults (half of every batch labeled, argmax targets) are the best of the soft-label
    study at one learning rate (docs/soft-labels.md).
    """

    threshold: float = 0.8
    growth: int = 16
    max_per_client: int = 256
    start_round: int = 2
    balanced: bool = True
    weight: float = 1.0
    gold_share: float = 0.5
    target: SoftTarget = SoftTarget.ARGMAX
    temperature: float = 1.0
    teacher_patterns: tuple[str, ...] = ()
    agreement: bool = False
    align: bool = False
    lm_weight: float = 0.0

    def __post_init__(self) -> None:
        _require(0.0 <= self.threshold < 1.0,
                 f"soft_labels.threshold={self.threshold} must be between 0 and 1 (0 keeps "
                 "texts of any confidence)")
        _require(self.growth >= 0, f"soft_labels.growth={self.growth} must be >= 0")
        _require(self.max_per_client >= 0,
                 f"soft_labels.max_per_client={self.max_per_client} must be >= 0")
        _require(self.start_round >= 1,
                 f"soft_labels.start_round={self.start_round} must be >= 1 (rounds count from 1)")
        _require(self.weight >= 0.0, f"soft_labels.weight={self.weight} must be >= 0")
        _require(0.0 <= self.gold_share <= 1.0,
                 f"soft_labels.gold_share={self.gold_share} must be between 0 and 1")
        _require(self.temperature > 0.0,
                 f"soft_labels.temperature={self.temperature} must be > 0 (1 keeps the "
                 "teacher's probabilities, below 1 sharpens them)")
        _require(self.lm_weight >= 0.0,
                 f"soft_labels.lm_weight={self.lm_weight} must be >= 0 (0: no LM loss)")
        for pattern in self.teacher_patterns:
            _require(pattern.count("{text}") == 1, "soft_labels.teacher_patterns: every pattern "
                     f"must contain {{text}} exactly once, got {pattern!r}")

    def budget(self, round_number: int) -> int:
        """How many soft labels one client may hold in round ``round_number`` (1-based)."""
        if round_number < self.start_round:
            return 0
        return min(self.growth * (round_number - self.start_round + 1), self.max_per_client)


PARTITIONS = ("iid", "dirichlet", "domain")


@dataclass(frozen=True)
class DataSettings:
    """Which corpus, how it is split, and how it is spread over clients.

    ``dataset`` is a packaged corpus (``mr``, ``tweets``, ``amazon``, ``nyt``, or ``domains`` for
    all four) or a path to a ``.csv``/``.jsonl`` file with ``text`` and ``label`` columns.
    ``shots_per_class`` is the labeled budget of the whole federation, spread over the clients by
    the partitioner; centralized training gets exactly the same examples.

    ``label_names`` names the classes in order (class ``i`` is the class of
    ``prompt.label_words[i]``), so data files may write ``positive`` instead of ``1``; integer
    labels are read either way. Empty: labels are class indices only.

    ``test_file`` / ``validation_file`` (a ``.csv``/``.jsonl`` file with ``text`` and ``label``
    columns, every row labeled) replace the split carved out of ``dataset``: the run evaluates on
    the file, and ``test_size`` / ``validation_size`` carve nothing. Empty: carve the split.
    When ``dataset`` is too small for the carved splits plus the training pool, the carved splits
    shrink to at most 20 % (test) and 10 % (validation) of it, with a warning
    (:func:`lpfl.data.federated.carved_sizes`).
    """

    dataset: str = "mr"
    test_size: int = 1000
    test_limit: int = 0
    """Evaluate on only the first ``test_limit`` test texts (0: all); for quick runs."""
    validation_size: int = 200
    shots_per_class: int = 16
    unlabeled_per_client: int = 200
    num_clients: int = 4
    partition: str = "iid"
    alpha: float = 0.5
    label_names: tuple[str, ...] = ()
    test_file: str = ""
    validation_file: str = ""

    def __post_init__(self) -> None:
        _require(self.test_size >= 1, f"data.test_size={self.test_size} must be >= 1")
        _require(self.test_limit >= 0 and (bool(self.test_file)
                                           or self.test_limit <= self.test_size),
                 f"data.test_limit={self.test_limit} must be between 0 and test_size")
        for key in ("test_file", "validation_file"):
            name = str(getattr(self, key))
            _require(not name or Path(name).suffix.lower() in (".csv", ".jsonl"),
                     f"data.{key}={name!r}: use a .csv file with a header row or a .jsonl file, "
                     "with 'text' and 'label' columns")
        _require(self.validation_size >= 0, "data.validation_size must be >= 0")
        _require(self.shots_per_class >= 1,
                 f"data.shots_per_class={self.shots_per_class} must be >= 1")
        _require(self.unlabeled_per_client >= 0, "data.unlabeled_per_client must be >= 0")
        _require(self.num_clients >= 1, f"data.num_clients={self.num_clients} must be >= 1")
        _require(self.partition in PARTITIONS,
                 f"data.partition={self.partition!r}: use one of {', '.join(PARTITIONS)}")
        _require(self.alpha > 0.0, f"data.alpha={self.alpha} must be > 0 (Dirichlet concentration)")
        _require(all(name.strip() == name and name for name in self.label_names),
                 f"data.label_names {list(self.label_names)}: every name must be non-empty "
                 "without leading or trailing spaces")
        _require(len(set(self.label_names)) == len(self.label_names),
                 f"data.label_names must be distinct, got {list(self.label_names)}")


@dataclass(frozen=True)
class FederationSettings:
    """Rounds, client sampling and local training, shared by every method of a run.

    ``learning_rates`` maps a method name to its learning rate; methods not listed use ``lr``.
    Centralized training runs ``local_steps * clients_per_round`` steps per round so that every
    method makes the same number of gradient steps on the same examples.
    """

    rounds: int = 5
    clients_per_round: int = 4
    local_steps: int = 8
    batch_size: int = 8
    lr: float = 5e-4
    learning_rates: Mapping[str, float] = field(default_factory=dict)
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        _require(self.rounds >= 1, f"federation.rounds={self.rounds} must be >= 1")
        _require(self.clients_per_round >= 1, "federation.clients_per_round must be >= 1")
        _require(self.local_steps >= 1, "federation.local_steps must be >= 1")
        _require(self.batch_size >= 1, "federation.batch_size must be >= 1")
        _require(self.lr > 0.0, f"federation.lr={self.lr} must be > 0")
        for method, lr in self.learning_rates.items():
            _require(method in METHODS, f"federation.learning_rates has unknown method "
                     f"{method!r}; known: {', '.join(METHODS)}")
            _require(lr > 0.0, f"federation.learning_rates[{method!r}]={lr} must be > 0")

    def lr_for(self, method: str) -> float:
        return float(self.learning_rates.get(method, self.lr))


@dataclass(frozen=True)
class RunSettings:
    """What to run: methods, seeds, threads, and where the report goes."""

    methods: tuple[str, ...] = ("lp-fl", "lp-fl-no-soft", "fp-fl", "centralized", "zero-shot")
    seeds: tuple[int, ...] = (0,)
    threads: int = 1
    eval_batch_size: int = 32
    eval_every: int = 1
    """Evaluate the global model after every ``eval_every``-th round and always after the last
    (0: after the last only; evaluation is most of a CPU round's time)."""
    device: str = "cpu"
    """``cpu``, ``cuda`` or ``auto`` (cuda when available): where simulation computes."""

    def __post_init__(self) -> None:
        _require(len(self.methods) > 0, "run.methods is empty: name at least one method")
        for method in self.methods:
            _require(method in METHODS,
                     f"run.methods has unknown method {method!r}; known: {', '.join(METHODS)}")
        _require(len(self.seeds) > 0, "run.seeds is empty: give at least one seed")
        _require(self.threads >= 1, f"run.threads={self.threads} must be >= 1")
        _require(self.eval_batch_size >= 1, "run.eval_batch_size must be >= 1")
        _require(self.eval_every >= 0, f"run.eval_every={self.eval_every} must be >= 0")
        _require(self.device in ("cpu", "cuda", "auto"),
                 f"run.device={self.device!r}: use 'cpu', 'cuda' or 'auto'")


@dataclass(frozen=True)
class RunConfig:
    """A whole run: every stage's settings."""

    model: ModelSettings = field(default_factory=ModelSettings)
    prompt: PromptSettings = field(default_factory=PromptSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)
    soft_labels: SoftLabelSchedule = field(default_factory=SoftLabelSchedule)
    data: DataSettings = field(default_factory=DataSettings)
    federation: FederationSettings = field(default_factory=FederationSettings)
    run: RunSettings = field(default_factory=RunSettings)

    def __post_init__(self) -> None:
        _require(self.federation.clients_per_round <= self.data.num_clients,
                 f"federation.clients_per_round={self.federation.clients_per_round} exceeds "
                 f"data.num_clients={self.data.num_clients}: lower it or add clients")
        names, words = self.data.label_names, self.prompt.label_words
        _require(not names or len(names) == len(words),
                 f"data.label_names has {len(names)} names but prompt.label_words has "
                 f"{len(words)} words: give one name per label word, in the same order")

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON- and TOML-friendly dict of every setting."""
        plain: dict[str, Any] = _plain(dataclasses.asdict(self))
        return plain


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    return value


T = TypeVar("T")


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check ``value`` against a field annotation, converting lists to tuples and ints to floats."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:  # checked where it is used (e.g. a value for another setting)
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        choices = [member.value for member in annotation]
        if value not in choices:
            raise ConfigError(f"{where}={value!r}: use one of {', '.join(map(str, choices))}")
        return annotation(value)
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (Mapping, dict) or origin is typing.Mapping:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a table, got {value!r}")
        return {str(k): _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if isinstance(annotation, types.UnionType):
        raise ConfigError(f"{where}: unsupported union type in config schema")
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a table, got {value!r}")
        return build_section(typing.cast(type, annotation), value, where)
    raise ConfigError(f"{where}: unsupported config type {annotation!r}")


def build_section(cls: type[T], table: Mapping[str, Any], where: str) -> T:
    """Build dataclass ``cls`` from a TOML table, checking every key and value type."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for raw_key, value in table.items():
        key = raw_key.replace("-", "_")
        prefix = f"{where}." if where else ""
        if key not in names:
            known = ", ".join(sorted(n.replace("_", "-") for n in names))
            raise ConfigError(f"unknown key {prefix}{raw_key}; known: {known}")
        kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}")
    return cls(**kwargs)


def _set_path(table: dict[str, Any], dotted: str, value: Any) -> None:
    parts = [p.replace("-", "_") for p in dotted.split(".")]
    node = table
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {part} is not a table")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Parse one ``section.key=value`` override; the value is TOML (bare words become strings)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: write it as section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if "." not in key:
        raise ConfigError(f"--set {text!r}: the key needs a section, e.g. federation.rounds")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def config_from_dict(table: Mapping[str, Any], overrides: Sequence[str] = ()) -> RunConfig:
    """Build and validate a :class:`RunConfig` from a nested dict plus ``--set`` overrides."""
    merged: dict[str, Any] = {
        k.replace("-", "_"): dict(v) if isinstance(v, Mapping) else v for k, v in table.items()
    }
    for text in overrides:
        key, value = parse_override(text)
        _set_path(merged, key, value)
    return build_section(RunConfig, merged, "")


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file as a dict; a missing or malformed file is a ConfigError naming it."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None


def with_values(config: RunConfig, values: Mapping[str, Any]) -> RunConfig:
    """``config`` with ``{"section.key": value}`` replaced, validated like a run file."""
    table = config.to_dict()
    for dotted, value in values.items():
        if "." not in dotted:
            raise ConfigError(f"{dotted!r}: a key needs its section, e.g. federation.lr")
        _set_path(table, dotted, _plain(value))
    return config_from_dict(table)


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> RunConfig:
    """Load a TOML run file (or the defaults when ``path`` is None) and apply overrides."""
    table = read_toml(path) if path is not None else {}
    table.pop("server", None)  # read by `lpfl server` (lpfl.transport), not by a run
    table.pop("field", None)  # read by `lpfl field` (lpfl.fleet), not by a run
    try:
        return config_from_dict(table, overrides)
    except ConfigError as exc:
        where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}{exc}") from None
