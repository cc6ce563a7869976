"""Fast checks of the one-line error paths that need no trained model (the rest: test_run_safety)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
import test_train_support  # noqa: E402,F401  (DeepSpeed's JIT ops build in the repository's own cache)
from xt.cli import cli, error_line
from xt.errors import PluginError, XtError, plugin_call
from xt.specs import CollatorSpec


def fake_adapter_run(folder, model: str):
    """A run folder whose run.json names ``model`` and whose final/ looks like a PEFT adapter."""
    from xt.run import RunInfo

    folder.mkdir()
    RunInfo(model=model, model_source=None, template="default", status="finished", final_dir="final").save(folder)
    (folder / "final").mkdir()
    (folder / "final" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    return folder


def test_merge_refuses_an_adapter_trained_on_another_base(tmp_path):
    from xt.export import check_adapter_base

    run = fake_adapter_run(tmp_path / "lora-run", "baichuan2-tiny")
    result = CliRunner().invoke(cli, ["merge", "baichuan2-tiny-13b", str(run), "--out", str(tmp_path / "merged")])
    assert result.exit_code == 2, result.output
    assert "was trained on 'baichuan2-tiny'" in result.output and "not 'baichuan2-tiny-13b'" in result.output
    assert not (tmp_path / "merged").exists()
    check_adapter_base("baichuan2-tiny", run / "final")  # the right base passes


def test_plugin_code_failures_name_spec_and_distribution():
    spec = CollatorSpec(name="packed", factory=lambda **kw: None)
    spec.plugin = "xt-example"
    with pytest.raises(PluginError) as caught, plugin_call(spec, "the collator factory"):
        raise KeyError("pad_token_id")
    message, code = error_line(caught.value)
    assert message.startswith("the collator factory of collator 'packed' (plugin xt-example) failed with KeyError")
    assert code == 1
    with pytest.raises(XtError, match="^plain$"), plugin_call(spec, "x"):  # xt's own errors pass unchanged
        raise XtError("plain")


def test_unexpected_errors_are_one_line_and_keyboard_interrupt_exits_130(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert error_line(RuntimeError("gloo: connection closed\nmore")) == (
        "[rank 1] RuntimeError: gloo: connection closed (an unexpected error inside xt; rerun with --debug for "
        "the traceback and report it).", 1)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert error_line(KeyboardInterrupt("by SIGTERM")) == ("interrupted by SIGTERM.", 130)


def test_a_partial_last_metrics_line_is_dropped_on_resume(tmp_path):
    from xt.train.metrics import MetricsLog

    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    log = MetricsLog(tmp_path, enabled=True, resume_step=2)
    log.close()
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n'


def test_a_resave_killed_between_its_renames_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    import os

    import deepspeed
    import torch
    from xt.train import checkpoint
    from xt.train.dist import init_distributed

    init_distributed()
    model = torch.nn.Linear(4, 4)
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters()),
                                      config={"train_batch_size": 1}, dist_init_required=False)
    root = tmp_path / "checkpoints"
    state = {"step": 4, "sampler": {}, "metrics": {}}
    checkpoint.save_checkpoint(engine, root, 4, state, rank=0, keep=3, exclude_frozen=False)
    saved = {p.name: p.read_bytes() for p in (root / "step-4").iterdir()}

    real_replace, calls = os.replace, []

    def killed_on_second_rename(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed between the renames")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", killed_on_second_rename)
    with torch.no_grad():
        model.weight.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint(engine, root, 4, state, rank=0, keep=3, exclude_frozen=False)
    monkeypatch.setattr(os, "replace", real_replace)
    assert not (root / "step-4").exists()  # the moment of the kill: the old copy is aside, whole
    assert checkpoint.latest_checkpoint(root) == root / "step-4"
    assert {p.name: p.read_bytes() for p in (root / "step-4").iterdir()} == saved


def test_resume_of_a_missing_run_says_there_is_nothing_to_resume(tmp_path):
    result = CliRunner().invoke(cli, ["train", "--model", "baichuan2-tiny", "--dataset", "alpaca-demo", "--resume",
                                      "--output", str(tmp_path / "never")])
    assert result.exit_code == 2 and "Nothing to resume" in result.output, result.output
    assert not (tmp_path / "never").exists()
