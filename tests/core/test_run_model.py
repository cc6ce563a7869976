"""Loading a run's result: a loader that ignores ``source`` is refused; presets built with
``build_preset`` are deterministic, so two exports of one LoRA run are identical."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from xt import hookimpl, plugins
from xt.cli import cli
from xt.specs import ModelSpec


def _config():
    from transformers import LlamaConfig
    from xt.tokenizers import tiny_tokenizer

    return LlamaConfig(vocab_size=len(tiny_tokenizer()), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)


def _preset(source, model_args=None, **kwargs):
    from transformers import LlamaForCausalLM
    from xt.api import build_preset, load_hf_causal_lm

    assert model_args in (None, {}), "the core passes the run's model_args apart from the loading keywords"
    if source is not None:
        return load_hf_causal_lm(source, **kwargs)
    return build_preset(_config(), LlamaForCausalLM, seed=7, **kwargs)


def _ignores_source(source, model_args=None, **kwargs):
    return _preset(None, **kwargs)


def _tokenizer(source, **kwargs):
    from xt.tokenizers import tiny_tokenizer

    return tiny_tokenizer()


class PresetPlugin:
    @hookimpl
    def model_loader(register):
        register(ModelSpec(name="run-preset", source=None, load_model=_preset, load_tokenizer=_tokenizer,
                           config=_config))
        register(ModelSpec(name="run-ignores-source", source=None, load_model=_ignores_source,
                           load_tokenizer=_tokenizer, config=_config))


@pytest.fixture(autouse=True)
def _plugin():
    plugins.register_plugin(plugins.get_plugin_manager(), PresetPlugin, "run-preset", "xt-run-preset", "1.0")


def _run(tmp_path: Path, model: str, adapter: bool) -> Path:
    """A finished run of ``model``: LoRA (random non-zero adapter) or full (weights trained away from the preset)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from xt.run import RunInfo
    from xt.tokenizers import tiny_tokenizer

    run_dir = tmp_path / f"{model}-{'lora' if adapter else 'full'}"
    trained = _preset(None, dtype=torch.float32)
    if adapter:
        trained = get_peft_model(trained, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    else:
        with torch.no_grad():
            for param in trained.parameters():
                param.add_(0.01)
    trained.save_pretrained(str(run_dir / "final"), safe_serialization=True)
    tiny_tokenizer().save_pretrained(str(run_dir / "final"))
    RunInfo(model=model, model_source=None, template="default", method="lora" if adapter else "full",
            final_dir="final", adapter=adapter, status="finished").save(run_dir)
    return run_dir


def _tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_a_full_run_loader_that_ignores_source_is_refused_by_chat_and_export(tmp_path):
    run_dir = _run(tmp_path, "run-ignores-source", adapter=False)
    out = tmp_path / "out"
    exported = CliRunner().invoke(cli, ["export", str(run_dir), "--to", "hf", "--out", str(out)])
    assert exported.exit_code != 0
    assert "did not load the weights saved in" in exported.output and "run-ignores-source" in exported.output
    assert not out.exists()
    chatted = CliRunner().invoke(cli, ["chat", str(run_dir), "--prompt", "hello", "--max-new-tokens", "2"])
    assert chatted.exit_code != 0
    assert "did not load the weights saved in" in chatted.output


def test_a_full_run_loader_that_loads_source_is_accepted(tmp_path):
    import torch
    from xt.api import load_run_model

    run_dir = _run(tmp_path, "run-preset", adapter=False)
    model = load_run_model(run_dir)
    saved = _tensors(run_dir / "final")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())


def test_two_exports_of_one_lora_run_are_identical(tmp_path):
    import torch

    run_dir = _run(tmp_path, "run-preset", adapter=True)
    for name in ("a", "b"):
        result = CliRunner().invoke(cli, ["export", str(run_dir), "--to", "hf", "--out", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
    first, second = _tensors(tmp_path / "a"), _tensors(tmp_path / "b")
    assert first.keys() == second.keys() and len(first) > 5
    assert all(torch.equal(first[k], second[k]) for k in first)
    base = _preset(None, dtype=torch.float32).state_dict()
    assert not torch.equal(first["model.layers.0.self_attn.q_proj.weight"], base["model.layers.0.self_attn.q_proj.weight"])


def test_build_preset_is_deterministic_and_leaves_the_callers_random_state_alone():
    import torch
    from transformers import LlamaForCausalLM
    from xt.api import build_preset

    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = build_preset(_config(), LlamaForCausalLM, seed=1)
    assert torch.equal(torch.rand(3), expected_next)
    b = build_preset(_config(), LlamaForCausalLM, seed=1, dtype="bfloat16")
    c = build_preset(_config(), LlamaForCausalLM, seed=2)
    wa, wb, wc = (m.state_dict()["model.layers.0.mlp.up_proj.weight"] for m in (a, b, c))
    assert wb.dtype == torch.bfloat16 and torch.equal(wa.to(torch.bfloat16), wb)
    assert not torch.equal(wa, wc)


def test_load_model_gets_model_args_apart_from_the_loading_keywords(tmp_path):
    from xt.config import resolve_config
    from xt.export import load_run_model
    from xt.model.setup import load_base_model
    from xt.run import RunInfo

    seen = []

    def recording_loader(source, model_args=None, **kwargs):
        seen.append((source, model_args, sorted(kwargs)))
        return _preset(None, **kwargs)

    spec = ModelSpec(name="recording", load_model=recording_loader, config=_config, plugin="xt-run-preset")
    cfg = resolve_config(None, {"model": "run-preset", "dataset": "conversation", "method": "full"},
                         ["model_args.depth=3"])
    load_base_model(cfg, spec, None, "fp32", "sdpa")
    assert seen[-1] == (None, {"depth": 3}, ["attn_implementation", "dtype"])

    run_dir = _run(tmp_path, "run-preset", adapter=True)
    info = json.loads((run_dir / "run.json").read_text())
    RunInfo(**{**info, "model_args": {"depth": 3}}).save(run_dir)
    plugins.get_registry().get("models", "run-preset").load_model = recording_loader
    load_run_model(run_dir, dtype="fp32")
    assert seen[-1] == (None, {"depth": 3}, ["dtype"])  # the run's model_args, as recorded in run.json
