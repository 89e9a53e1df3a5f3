from pathlib import Path

import pytest

from lpfl.config import RunConfig, SoftTarget, config_from_dict, load_config
from lpfl.errors import ConfigError


def test_defaults_are_valid() -> None:
    config = RunConfig()
    assert config.prompt.num_classes == 2
    assert config.federation.lr_for("fp-fl") == config.federation.lr


def test_toml_with_dashes_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('[federation]\nlocal-steps = 3\nlearning-rates = { "fp-fl" = 1e-5 }\n'
                    '[run]\nmethods = ["lp-fl", "fp-fl"]\n')
    config = load_config(path, ["federation.rounds=7", "lora.target_modules=['q_proj']"])
    assert config.federation.local_steps == 3
    assert config.federation.rounds == 7
    assert config.federation.lr_for("fp-fl") == 1e-5
    assert config.lora.target_modules == ("q_proj",)
    assert config.run.methods == ("lp-fl", "fp-fl")


@pytest.mark.parametrize(("override", "fragment"), [
    ("federation.rounds=0", "federation.rounds=0 must be >= 1"),
    ("federation.rounds='x'", "federation.rounds must be an integer"),
    ("run.methods=['lp-fl', 'fedprox']", "unknown method 'fedprox'"),
    ("data.partition='zipf'", "use one of iid, dirichlet, domain"),
    ("lora.colour=3", "unknown key lora.colour"),
    ("prompt.pattern='no placeholder'", "must contain {text} exactly once"),
    ("soft_labels.threshold=1.5", "must be between 0 and 1"),
    ("soft_labels.gold_share=-0.1", "soft_labels.gold_share=-0.1 must be between 0 and 1"),
    ("soft_labels.temperature=0", "soft_labels.temperature=0.0 must be > 0"),
    ("soft_labels.target='kl'", "soft_labels.target='kl': use one of distribution, argmax"),
    ("soft_labels.loss='kl'", "unknown key soft_labels.loss"),
    ("soft_labels.teacher_patterns=['no text']", "teacher_patterns: every pattern must contain"),
    ("run.eval_every=-1", "run.eval_every=-1 must be >= 0"),
    ("federation.clients_per_round=9", "exceeds data.num_clients=4"),
    ("rounds=3", "needs a section"),
    ("data.label_names=['neg']", "data.label_names has 1 names but prompt.label_words has 2"),
    ("data.label_names=['neg', 'neg']", "data.label_names must be distinct"),
    ("data.label_names=['neg', ' pos']", "without leading or trailing spaces"),
])
def test_bad_values_say_what_to_change(override: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        load_config(None, [override])
    assert fragment in str(info.value)


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_soft_label_teacher_settings_load_and_round_trip() -> None:
    config = load_config(None, ["soft_labels.target='argmax'", "soft_labels.gold_share=0.5",
                                "soft_labels.teacher_patterns=['A: {text} B:']"])
    assert config.soft_labels.target is SoftTarget.ARGMAX
    assert config.soft_labels.teacher_patterns == ("A: {text} B:",)
    plain = config.to_dict()
    assert plain["soft_labels"]["target"] == "argmax"
    assert config_from_dict(plain) == config


def test_soft_label_budget_grows_then_caps() -> None:
    schedule = RunConfig().soft_labels.__class__(growth=10, max_per_client=25, start_round=2)
    assert [schedule.budget(r) for r in range(1, 6)] == [0, 10, 20, 25, 25]


def test_configs_in_repo_load() -> None:
    run_files = list(Path(__file__).parents[1].glob("configs/*.toml"))
    assert len(run_files) >= 2
    for path in run_files:
        load_config(path)
