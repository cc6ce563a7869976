"""TrainConfig: YAML + flags + --set precedence, validation messages, stage defaults, round trip."""

from __future__ import annotations

import pytest
import yaml
from xt.config import TrainConfig, from_dict, parse_overrides, resolve_config
from xt.errors import XtError


def test_unknown_key_names_the_nearest(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: m\ndataset: d\nlearning_rat: 0.1\n")
    with pytest.raises(XtError, match=r"unknown key 'learning_rat'"):
        resolve_config(path)
    with pytest.raises(XtError, match=r"unknown key 'micro_batchsize'.*Did you mean 'micro_batch_size'"):
        resolve_config(None, {"model": "m", "dataset": "d"}, ["micro_batchsize=2"])


def test_wrong_types_fail_clearly():
    with pytest.raises(XtError, match=r"'lr' must be float, got 'fast'"):
        from_dict({"lr": "fast"})
    with pytest.raises(XtError, match=r"'method' must be 'lora' \| 'qlora' \| 'full'"):
        from_dict({"method": "dora"})
    with pytest.raises(XtError, match="micro_batch_size must be at least 1"):
        from_dict({"micro_batch_size": 0})
    assert from_dict({"lr": "1e-4"}).lr == pytest.approx(1e-4)  # YAML reads 1e-4 as a string


def test_precedence_yaml_then_flags_then_set(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": "a", "dataset": "d", "lr": 0.1, "lora_r": 4, "method": "full",
                                    "model_args": {"x": 1, "y": 2}}))
    cfg = resolve_config(path, {"model": "b", "method": "lora", "template": None},
                         ["lr=0.3", "model_args.y=5", "lora_targets=[q_proj, v_proj]"])
    assert (cfg.model, cfg.method, cfg.lr, cfg.lora_r) == ("b", "lora", 0.3, 4)
    assert cfg.model_args == {"x": 1, "y": 5}
    assert cfg.lora_targets == ["q_proj", "v_proj"]
    with pytest.raises(XtError, match="'lr' is not a mapping"):
        parse_overrides(["lr.x=1"])


def test_resolved_config_round_trips(tmp_path):
    cfg = resolve_config(None, {"model": "m", "dataset": "d"}, ["eval_prompts=[hi, there]", "zero_stage=3"])
    cfg.save(tmp_path / "config.yaml")
    again = resolve_config(tmp_path / "config.yaml")
    assert again == cfg and isinstance(again, TrainConfig)


def test_stage_defaults_apply_below_user_keys():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_train_support import MODEL, register_test_plugin

    register_test_plugin(Path("/nonexistent-model-dir"))
    cfg = resolve_config(None, {"model": MODEL, "dataset": "d"}, ["stage=warm", "max_steps=7"])
    assert cfg.lr == 0.005 and cfg.max_steps == 7
    with pytest.raises(XtError, match="has no training stage 'warn'.*Did you mean 'warm'"):
        resolve_config(None, {"model": MODEL, "dataset": "d"}, ["stage=warn"])


def test_duplicate_yaml_keys_and_syntax_errors_name_their_lines(tmp_path):
    from xt.config import read_yaml

    dup = tmp_path / "dup.yaml"
    dup.write_text("model: m\nlr: 1e-4\ndataset: d\nlr: 2e-4\n")
    with pytest.raises(XtError, match=r"line 4, column 1: key 'lr' is given twice \(lines 2 and 4\)"):
        read_yaml(dup)
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: m\n  dataset: d\n")
    with pytest.raises(XtError, match="line 2, column 10"):
        read_yaml(bad)


@pytest.mark.parametrize(("override", "message"), [
    ("lr=nan", "lr must be a finite number, got nan"),
    ("epochs=inf", "epochs must be a finite number, got inf"),
    ("lerning_rate=1e-4", "unknown key 'lerning_rate'. Did you mean 'lr'?"),
    ("num_train_epochs=2", "Did you mean 'epochs'?"),
])
def test_bad_values_and_near_miss_keys_are_one_sentence(override, message):
    with pytest.raises(XtError) as caught:
        resolve_config(None, {"model": "m", "dataset": "d"}, [override])
    assert message in str(caught.value)


def test_set_values_parse_as_yaml_scalars_everywhere():
    from xt.config import parse_key_values

    assert parse_key_values(["a=1e-4", "b=true", "c=3", "d=bf16", "e=[x, y]", "f="]) == [
        ("a", 1e-4), ("b", True), ("c", 3), ("d", "bf16"), ("e", ["x", "y"]), ("f", "")]
    with pytest.raises(XtError, match="is not key=value"):
        parse_key_values(["novalue"])


def test_model_path_must_be_a_folder(tmp_path):
    with pytest.raises(XtError, match="is not a folder"):
        resolve_config(None, {"model": "m", "dataset": "d", "model_path": str(tmp_path / "missing")})
