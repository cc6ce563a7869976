"""xt-baichuan as a plugin: registrations, configs, template, tokenizer, Llama export, CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from click.testing import CliRunner
from xt.errors import XtError


def _registry():
    from xt.plugins import get_registry

    return get_registry()


def test_conformance_kit():
    from xt.testing import check_plugin

    report = check_plugin("xt_baichuan")
    assert "baichuan2-chat" in report.names("templates")
    assert "baichuan-llama" in report.names("exporters")


def test_plugin_import_does_not_import_torch():
    code = ("import sys, xt_baichuan.plugin, xt_baichuan; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def test_list_models_shows_registrations():
    from xt.cli import cli

    result = CliRunner().invoke(cli, ["list", "models"])
    assert result.exit_code == 0, result.output
    for name in ("baichuan2-7b", "baichuan2-7b-chat", "baichuan2-13b", "baichuan2-13b-chat", "baichuan2-tiny",
                 "baichuan2-tiny-13b"):
        assert name in result.output


def test_model_specs():
    registry = _registry()
    expected = {
        "baichuan2-7b": ("baichuan-inc/Baichuan2-7B-Base", None, "baichuan2-7b-base"),
        "baichuan2-7b-chat": ("baichuan-inc/Baichuan2-7B-Chat", "baichuan2-chat", None),
        "baichuan2-13b": ("baichuan-inc/Baichuan2-13B-Base", None, "baichuan2-13b-base"),
        "baichuan2-13b-chat": ("baichuan-inc/Baichuan2-13B-Chat", "baichuan2-chat", None),
    }
    for name, (hub_id, template, alias) in expected.items():
        spec = registry.get("models", name)
        assert spec.source == hub_id and spec.default_template == template and spec.kind == "causal-lm"
        assert tuple(spec.lora_targets) == ("W_pack", "o_proj", "gate_proj", "up_proj", "down_proj")
        if alias:
            assert registry.get("models", alias) is spec
    assert registry.get("models", "baichuan2-tiny-7b") is registry.get("models", "baichuan2-tiny")
    assert registry.get("models", "baichuan2-tiny").default_template is None


@pytest.mark.parametrize("name,params,variant", [("baichuan2-7b", 7.506e9, "rope"), ("baichuan2-13b", 13.896e9, "alibi")])
def test_real_config_counts_parameters_on_meta(name, params, variant):
    from xt_baichuan.remote_code.modeling_baichuan import BaichuanForCausalLM

    config = _registry().get("models", name).config()
    assert config.model_type == "baichuan" and config.position_embedding == variant
    assert config.vocab_size == 125696 and config.model_max_length == 4096
    with torch.device("meta"):
        model = BaichuanForCausalLM(config)
    count = sum(p.numel() for p in model.parameters())
    assert count == pytest.approx(params, rel=2e-3)
    assert all(p.device.type == "meta" for p in model.parameters())


def test_real_loader_accepts_a_local_folder_and_rejects_missing_ones(tmp_path, baichuan_checkpoint):
    spec = _registry().get("models", "baichuan2-7b")
    folder = baichuan_checkpoint("tiny-7b-rope")
    model = spec.load_model(str(folder), dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16 and model.config.position_embedding == "rope"
    assert model.config.hidden_size == json.loads((folder / "config.json").read_text())["hidden_size"]
    with pytest.raises(XtError, match="does not exist"):
        spec.load_model(str(tmp_path / "missing"))
    with pytest.raises(XtError, match="config.json"):
        spec.load_model(str(tmp_path))


def test_chat_template_matches_official_framing():
    from xt.template import IGNORE_INDEX
    from xt_baichuan.loaders import tiny_tokenizer

    template = _registry().get("templates", "baichuan2-chat")
    tok = tiny_tokenizer()
    conv = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                         {"role": "assistant", "content": "ok"}, {"role": "user", "content": "more"},
                         {"role": "assistant", "content": "fine"}]}
    sample = template.encode(conv, tok)
    enc = lambda text: tok.encode(text, add_special_tokens=False)  # noqa: E731
    expected_ids = (enc("Be brief.") + [195] + enc("hi") + [196] + enc("ok") + [2]
                    + [195] + enc("more") + [196] + enc("fine") + [2])
    assert sample["input_ids"] == expected_ids
    trained = [i for i, lab in zip(sample["input_ids"], sample["labels"]) if lab != IGNORE_INDEX]
    assert trained == enc("ok") + [2] + enc("fine") + [2]  # loss on replies + EOS only, never on 195/196
    prompt = template.encode_prompt(conv["messages"][:2], tok)
    assert prompt == enc("Be brief.") + [195] + enc("hi") + [196]
    assert template.stop_token_ids(tok) == [2]


def test_tokenizer_official_special_tokens(tmp_path, sp_tokenizer_dir):
    shutil.copy(sp_tokenizer_dir / "tokenizer.model", tmp_path / "tokenizer.model")
    spec = _registry().get("models", "baichuan2-7b-chat")
    tok = spec.load_tokenizer(str(tmp_path))
    assert (tok.pad_token, tok.pad_token_id) == ("<unk>", 0)
    assert (tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (1, 2, 0)
    ids = tok("Hello world").input_ids
    assert ids and ids[0] != 1 and ids[-1] != 2  # add_bos_token / add_eos_token are False, as officially
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
    assert ids == sp.encode("Hello world")
    assert tok.decode(ids) == "Hello world"
    assert tok("a", "b").input_ids == sp.encode("a") + sp.encode("b")
    batch = tok(["a b", "hello there friend"], padding=True)
    assert batch.input_ids[0][-1] == 0 and batch.attention_mask[0][-1] == 0
    tok.save_pretrained(tmp_path / "saved")
    again = spec.load_tokenizer(str(tmp_path / "saved"))
    assert again("Hello world").input_ids == ids and again.add_bos_token is False
    (tmp_path / "empty").mkdir()
    with pytest.raises(XtError, match="tokenizer.model"):
        spec.load_tokenizer(str(tmp_path / "empty"))


_LLAMA_CHECK = textwrap.dedent("""
    import json, sys, torch
    from transformers import AutoModelForCausalLM, LlamaForCausalLM
    out, ref = sys.argv[1], sys.argv[2]
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(model) is LlamaForCausalLM, type(model)
    worst = 0.0
    for seq in json.load(open(ref)):
        with torch.no_grad():
            logits = model(torch.tensor([seq["input_ids"]])).logits[0]
        worst = max(worst, (logits - torch.tensor(seq["logits"])).abs().max().item())
    print(json.dumps({"worst": worst, "xt_imported": any(m.startswith("xt") for m in sys.modules)}))
""")


def test_llama_export_loads_in_plain_transformers(tmp_path, baichuan_checkpoint):
    """The export of an official-layout 7B folder, loaded by plain transformers, gives xt's Baichuan logits.
    (test_baichuan_fixtures checks xt's Baichuan against the official reference outputs.)"""
    from transformers import AutoModelForCausalLM
    from xt_baichuan.export import export_llama_layout

    folder = baichuan_checkpoint("tiny-7b-rope")
    baichuan = AutoModelForCausalLM.from_pretrained(folder).eval()
    gen = torch.Generator().manual_seed(4)
    reference = []
    for length in (7, 33, 100):
        ids = torch.randint(3, baichuan.config.vocab_size, (1, length), generator=gen)
        with torch.no_grad():
            reference.append({"input_ids": ids[0].tolist(), "logits": baichuan(ids).logits[0].tolist()})
    (tmp_path / "reference.json").write_text(json.dumps(reference))
    out = export_llama_layout(folder, tmp_path / "llama")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    assert config["tie_word_embeddings"] is False and config["rms_norm_eps"] == 1e-6
    assert (out / "generation_config.json").is_file()
    script = tmp_path / "check.py"
    script.write_text(_LLAMA_CHECK)
    run = subprocess.run([sys.executable, "-I", str(script), str(out), str(tmp_path / "reference.json")],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["xt_imported"] is False
    assert result["worst"] <= 1e-5


def test_llama_export_matches_a_loaded_model_and_refuses_alibi(tmp_path, baichuan_checkpoint):
    from transformers import LlamaForCausalLM
    from xt_baichuan.export import export_llama_layout

    spec = _registry().get("models", "baichuan2-tiny")
    model = spec.load_model(None).eval()
    out = export_llama_layout(model, tmp_path / "tiny")
    llama = LlamaForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(3, model.config.vocab_size, (2, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (llama(ids).logits - model(ids).logits).abs().max().item() <= 1e-5
    with pytest.raises(XtError, match="not empty"):
        export_llama_layout(model, out)
    alibi = _registry().get("models", "baichuan2-tiny-13b").load_model(None)
    with pytest.raises(XtError, match="ALiBi"):
        export_llama_layout(alibi, tmp_path / "alibi")
    with pytest.raises(XtError, match="ALiBi"):
        export_llama_layout(baichuan_checkpoint("tiny-13b-alibi"), tmp_path / "alibi13")
    assert not (tmp_path / "alibi13").exists()


def test_exporter_and_cli_accept_run_dirs_and_model_folders(tmp_path, baichuan_checkpoint):
    from xt.cli import cli
    from xt.run import RunInfo

    exporter = _registry().get("exporters", "baichuan-llama")
    run_dir = tmp_path / "run"
    shutil.copytree(baichuan_checkpoint("tiny-7b-rope"), run_dir / "final")
    RunInfo(model="baichuan2-tiny", model_source=None, template="default", method="full", final_dir="final",
            adapter=False, status="finished").save(run_dir)
    out = exporter.export(str(run_dir), str(tmp_path / "from-run"))
    assert (out / "config.json").is_file()
    result = CliRunner().invoke(cli, ["baichuan", "to-llama", str(run_dir / "final"), str(tmp_path / "from-cli")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "from-cli" / "config.json").is_file()
    bad = CliRunner().invoke(cli, ["baichuan", "to-llama", str(baichuan_checkpoint("tiny-13b-alibi")),
                                   str(tmp_path / "nope")])
    assert bad.exit_code == 2 and "ALiBi" in bad.output


def test_exporter_merges_a_lora_run(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM
    from xt.run import RunInfo

    spec = _registry().get("models", "baichuan2-tiny")
    model = get_peft_model(spec.load_model(None), LoraConfig(r=4, target_modules=list(spec.lora_targets)))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.05)
    run_dir = tmp_path / "run"
    model.save_pretrained(run_dir / "final")
    RunInfo(model="baichuan2-tiny", model_source=None, template="default", method="lora", final_dir="final",
            adapter=True, status="finished").save(run_dir)
    merged = model.merge_and_unload().eval()
    out = _registry().get("exporters", "baichuan-llama").export(str(run_dir), str(tmp_path / "llama"))
    llama = LlamaForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(3, merged.config.vocab_size, (1, 13), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (llama(ids).logits - merged(ids).logits).abs().max().item() <= 1e-5
    with pytest.raises(XtError, match="Unknown option"):
        _registry().get("exporters", "baichuan-llama").export(str(run_dir), str(tmp_path / "x"), dtype="bf16")
