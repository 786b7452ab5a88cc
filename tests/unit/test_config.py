"""Config: defaults, YAML + --set overrides, one-line errors for unknown keys and bad values."""

from pathlib import Path

import pytest

from seal.config import RunConfig, describe_fields, load_config
from seal.errors import ConfigError

CONFIGS = sorted(Path(__file__).resolve().parents[2].joinpath("configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_opens_with_its_command(path):
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)
    first = path.read_text().splitlines()[0]
    assert first.startswith("#")
    assert f"seal run configs/{path.name}" in path.read_text()


def test_paper_knowledge_config_matches_design():
    cfg = load_config(Path(CONFIGS[0]).parent / "squad-qwen2.5-7b.yaml")
    assert cfg.model.base == "Qwen/Qwen2.5-7B"
    assert (cfg.sampling.temperature, cfg.sampling.top_p, cfg.edits_per_context) == (1.0, 0.95, 5)
    assert (cfg.inner.rank, cfg.inner.alpha, cfg.inner.dropout) == (32, 64, 0.0)
    assert cfg.inner.target_modules == ["q_proj", "v_proj"]
    assert (cfg.inner.lr, cfg.inner.epochs, cfg.inner.batch_size, cfg.inner.fits) == (1e-3, 10, 1, 3)
    assert (cfg.contexts_per_round, cfg.rounds, cfg.filter.rule) == (50, 2, "top1_always")
    assert (cfg.mstep.rank, cfg.mstep.alpha, cfg.mstep.lr, cfg.mstep.epochs) == (64, 128, 3e-4, 2)
    assert cfg.mstep.batch_size * cfg.mstep.accumulate == 10  # the paper's effective batch
    assert (cfg.inner.lr_schedule, cfg.mstep.lr_schedule) == ("linear", "linear")
    assert len(cfg.mstep.target_modules) == 7
    assert cfg.task.answer_tokens == 64
    assert (cfg.task.answer_prompt, cfg.task.answer_scope, cfg.task.grader) == ("paper", "whole", "judge")
    assert cfg.sampling.max_new_tokens == 8192 and cfg.task.exclude


def test_overrides_parse_yaml_scalars_and_lists():
    cfg = load_config(None, ["rounds=1", "inner.lr=3e-4", "inner.target_modules=[q_proj, k_proj]",
                             "task.train_on_passage=false"])
    assert cfg.rounds == 1 and cfg.inner.lr == 3e-4
    assert cfg.inner.target_modules == ["q_proj", "k_proj"]
    assert cfg.task.train_on_passage is False


@pytest.mark.parametrize(
    "override, needle",
    [
        ("inner.lrr=1", "unknown config key 'inner.lrr': allowed keys here are alpha"),
        ("bogus=1", "unknown config key 'bogus'"),
        ("filter.rule=best", "'filter.rule': Input should be 'top1', 'top1_always', 'improved' or 'threshold'"),
        ("rounds=0", "'rounds': Input should be greater than or equal to 1"),
        ("sampling.top_p=1.5", "'sampling.top_p'"),
        ("run_id=has space", "'run_id'"),
        ("rounds", "must look like key=value"),
    ],
)
def test_bad_keys_and_values_name_the_key(override, needle):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert needle in str(err.value)
    assert "\n" not in str(err.value)
    assert err.value.exit_code == 2


def test_bad_yaml_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "typo.yaml").write_text("inner:\n  rnak: 3\n")
    with pytest.raises(ConfigError, match="inner.rnak"):
        load_config(tmp_path / "typo.yaml")


def test_every_field_is_documented():
    lines = describe_fields()
    assert len(lines) > 40
    assert all(not line.endswith(": None") for line in lines), [x for x in lines if x.endswith(": None")]


def test_fingerprint_ignores_rounds_and_store_only():
    a = load_config(None, [])
    assert a.fingerprint() == load_config(None, ["rounds=5", "store=s3://b/x"]).fingerprint()
    assert a.fingerprint() != load_config(None, ["inner.lr=0.5"]).fingerprint()
