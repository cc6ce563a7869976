"""xt-lmdeploy: engine routing (installed lmdeploy tables and the built-in copy), the exported folder,
the chat template file, Baichuan2-7B via the Llama layout, Baichuan2-13B refused, conformance."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from xt.cli import cli
from xt.errors import XtError


def _lmdeploy_importable() -> bool:
    try:
        from xt_lmdeploy.routing import lmdeploy_tables

        lmdeploy_tables()
        return True
    except Exception:
        return False


HAS_LMDEPLOY = _lmdeploy_importable()
TABLES = [pytest.param("lmdeploy", marks=pytest.mark.skipif(not HAS_LMDEPLOY, reason="lmdeploy not importable")),
          "builtin"]


def tiny_tokenizer():
    from xt.tokenizers import tiny_tokenizer as make

    return make()


def _llama_config(vocab: int) -> dict:
    return dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def save_llama(path: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**_llama_config(len(tiny_tokenizer())))).save_pretrained(str(path))
    tiny_tokenizer().save_pretrained(str(path))
    return path


def save_llava(path: Path) -> Path:
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                              image_size=28, patch_size=14, projection_dim=16)
    config = LlavaConfig(vision_config=vision, text_config=LlamaConfig(**_llama_config(len(tiny_tokenizer()))),
                         image_token_index=150)
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(str(path))
    tiny_tokenizer().save_pretrained(str(path))
    return path


def make_run(run_dir: Path, model: str, final_from: Path, template: str, adapter: bool = False) -> Path:
    from xt.run import RunInfo

    run_dir.mkdir(parents=True)
    shutil.copytree(final_from, run_dir / "final")
    RunInfo(model=model, model_source=None if not Path(model).is_dir() else model, template=template,
            method="lora" if adapter else "full", final_dir="final", adapter=adapter, status="finished").save(run_dir)
    return run_dir


# --------------------------------------------------------------------------- routing


@pytest.mark.parametrize("table", TABLES)
def test_routing_decisions(table):
    from xt_lmdeploy.routing import route, support_tables

    tables = support_tables(table)
    assert tables.source == table
    assert route({"architectures": ["LlamaForCausalLM"]}, tables).backend == "turbomind"
    assert route({"architectures": ["LlavaForConditionalGeneration"]}, tables).backend == "pytorch"
    seven_b = route({"architectures": ["BaichuanForCausalLM"], "max_position_embeddings": 4096}, tables)
    assert (seven_b.backend, seven_b.convert, seven_b.served_architecture) == \
        ("turbomind", "baichuan-llama", "LlamaForCausalLM")
    with pytest.raises(XtError) as err:
        route({"architectures": ["BaichuanForCausalLM"], "model_max_length": 4096}, tables)
    message = str(err.value)
    assert "Baichuan2-13B" in message and "ALiBi" in message and "xt export RUN --to hf" in message
    assert "trust_remote_code=True" in message and "vLLM" not in message  # what is tested to work, only
    assert ". " not in message and message.endswith(".") and "\n" not in message  # one sentence
    with pytest.raises(XtError, match="dropped StarCoder2"):
        route({"architectures": ["Starcoder2ForCausalLM"]}, tables)
    with pytest.raises(XtError, match="No LMDeploy .* engine serves the architecture GPT2LMHeadModel"):
        route({"architectures": ["GPT2LMHeadModel"]}, tables)


@pytest.mark.skipif(not HAS_LMDEPLOY, reason="lmdeploy not importable")
def test_builtin_table_matches_the_installed_lmdeploy():
    from xt_lmdeploy.routing import BUILTIN_VERSION, builtin_tables, lmdeploy_tables

    installed, builtin = lmdeploy_tables(), builtin_tables()
    if installed.version != BUILTIN_VERSION:
        pytest.skip(f"installed lmdeploy {installed.version} differs from the built-in copy ({BUILTIN_VERSION})")
    assert (installed.turbomind, installed.pytorch, installed.removed) == \
        (builtin.turbomind, builtin.pytorch, builtin.removed)


def test_env_var_forces_the_builtin_table(monkeypatch):
    from xt_lmdeploy.routing import support_tables

    monkeypatch.setenv("XT_LMDEPLOY_TABLE", "builtin")
    assert support_tables().source == "builtin"
    monkeypatch.setenv("XT_LMDEPLOY_TABLE", "nonsense")
    with pytest.raises(XtError, match="Unknown LMDeploy table"):
        support_tables()


# --------------------------------------------------------------------------- chat template file


def _templates() -> list[str]:
    from xt.plugins import get_registry

    names = ["default", "chatml"]
    if "baichuan2-chat" in get_registry().names("templates"):
        names.append("baichuan2-chat")
    return names


def _xt_prompt_text(template, messages, tokenizer) -> str:
    """xt's prompt as text, rendered here independently from TemplateSpec's documented semantics
    (BOS omitted: LMDeploy's tokenizer adds it; token ids written as their token strings)."""
    from xt.specs import SpecialToken

    def text(part, **fields):
        pieces = [part] if isinstance(part, str) and not isinstance(part, SpecialToken) else list(part)
        out = ""
        for p in pieces:
            if isinstance(p, SpecialToken):
                out += "" if p == "bos" else tokenizer.eos_token
            elif isinstance(p, int):
                out += tokenizer.convert_ids_to_tokens(p)
            else:
                for k, v in fields.items():
                    p = p.replace("{" + k + "}", v)
                out += p
        return out

    system = template.default_system
    turns = list(messages)
    if turns[0]["role"] == "system":
        system, turns = turns[0]["content"], turns[1:]
    out = text(template.prefix) + (text(template.system, system=system) if system else "")
    for m in turns:
        if m["role"] == "user":
            out += text(template.user, content=m["content"])
        else:
            out += text(template.assistant, content=m["content"]) + text(template.assistant_end) + \
                text(template.turn_sep)
    return out + text(template.assistant, content="\x00").split("\x00")[0]


@pytest.mark.skipif(not HAS_LMDEPLOY, reason="lmdeploy not importable")
@pytest.mark.parametrize("system", [None, "Be brief."])
def test_chat_template_file_renders_the_training_prompt(system, tmp_path):
    """LMDeploy's own template class, fed our JSON, renders exactly xt's prompt."""
    from lmdeploy.model import ChatTemplateConfig
    from xt.plugins import get_registry
    from xt_lmdeploy.export import chat_template_config

    tokenizer = tiny_tokenizer()
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": "What is two plus two?"}, {"role": "assistant", "content": "Four."},
        {"role": "user", "content": "And three plus three?"}]
    for name in _templates():
        template = get_registry().get("templates", name)
        fields = chat_template_config(template, tokenizer)
        assert set(fields) >= {"meta_instruction", "system", "user", "assistant", "eosys", "eoh", "eoa",
                               "separator", "stop_words", "capability"}
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(fields))
        rendered = ChatTemplateConfig.from_json(str(path)).chat_template().messages2prompt(messages)
        expected = _xt_prompt_text(template, messages, tokenizer)
        if system and template.default_system is None:  # documented limitation: no system framing then
            framing = template.system if isinstance(template.system, str) else ""
            expected = expected.replace(framing.replace("{system}", system), system, 1)
        assert rendered == expected, name
        assert all(w in fields["stop_words"] for w in template.stop_words)


# --------------------------------------------------------------------------- exports


@pytest.mark.parametrize("table", TABLES)
def test_llama_lora_run_goes_to_turbomind(tmp_path, monkeypatch, table):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("XT_LMDEPLOY_TABLE", table)
    base = save_llama(tmp_path / "base")
    torch.manual_seed(1)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(base)),
                                LoraConfig(r=4, init_lora_weights=False, target_modules="all-linear"))
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    run = make_run(tmp_path / "run", str(base), tmp_path / "adapter", "chatml", adapter=True)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["export", str(run), "--to", "lmdeploy", "--out", str(out),
                                      "--set", "dtype=fp32"])
    assert result.exit_code == 0, result.output
    info = json.loads((out / "xt_lmdeploy.json").read_text())
    assert info["backend"] == "turbomind" and info["decided_by"].startswith(table)
    assert info["template"] == "chatml"
    template = json.loads((out / "chat_template.json").read_text())
    assert template["eoa"] == "<|im_end|>" and "<|im_end|>" in template["stop_words"]
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    ids = torch.tensor([[1, 5, 6, 7, 250]])
    with torch.no_grad():
        assert (merged(ids).logits - peft_model(ids).logits).abs().max() <= 1e-5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no scratch left behind


@pytest.mark.parametrize("table", TABLES)
def test_llava_goes_to_the_pytorch_engine(tmp_path, monkeypatch, table):
    monkeypatch.setenv("XT_LMDEPLOY_TABLE", table)
    llava = save_llava(tmp_path / "llava")
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["export", str(llava), "--to", "lmdeploy", "--out", str(out)])
    assert result.exit_code == 0, result.output
    info = json.loads((out / "xt_lmdeploy.json").read_text())
    assert info["backend"] == "pytorch" and info["architecture"] == "LlavaForConditionalGeneration"
    assert (out / "model.safetensors").is_file() and (out / "chat_template.json").is_file()


def _baichuan_folder(tmp_path: Path, baichuan_checkpoint, variant: str) -> Path:
    """A copy of an official-layout Baichuan2 folder (conftest's baichuan_checkpoint) with a tokenizer."""
    if importlib.util.find_spec("xt_baichuan") is None:
        pytest.skip("the xt-baichuan plugin, which builds the Baichuan2 checkpoint, is not installed")
    src = baichuan_checkpoint(variant)
    model = tmp_path / variant
    model.mkdir()
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copy(src / name, model / name)
    tiny_tokenizer().save_pretrained(str(model))
    return model


@pytest.mark.parametrize("table", TABLES)
def test_baichuan2_7b_is_exported_in_llama_layout_for_turbomind(tmp_path, monkeypatch, table, baichuan_checkpoint):
    if importlib.util.find_spec("xt_baichuan") is None or importlib.util.find_spec("xt_baichuan.export") is None:
        pytest.skip("the xt-baichuan plugin's Llama-layout export is not installed")
    import torch
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    monkeypatch.setenv("XT_LMDEPLOY_TABLE", table)
    model = _baichuan_folder(tmp_path, baichuan_checkpoint, "tiny-7b-rope")
    run = make_run(tmp_path / "run", "baichuan2-tiny", model, "baichuan2-chat")
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["export", str(run), "--to", "lmdeploy", "--out", str(out)])
    assert result.exit_code == 0, result.output
    info = json.loads((out / "xt_lmdeploy.json").read_text())
    assert (info["backend"], info["architecture"], info["conversion"]) == \
        ("turbomind", "BaichuanForCausalLM", "baichuan-llama")
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    template = json.loads((out / "chat_template.json").read_text())
    assert template["user"] == "<reserved_195>" and template["eoh"] == "<reserved_196>"  # ids 195 / 196

    baichuan = AutoModelForCausalLM.from_pretrained(str(model), dtype=torch.float32).eval()  # xt's native class
    ids = torch.randint(3, baichuan.config.vocab_size, (1, 7), generator=torch.Generator().manual_seed(0))
    llama = LlamaForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    with torch.no_grad():
        assert (llama(ids).logits - baichuan(ids).logits).abs().max().item() <= 1e-5


@pytest.mark.parametrize("table", TABLES)
def test_baichuan2_13b_is_refused_before_anything_is_written(tmp_path, monkeypatch, table, baichuan_checkpoint):
    monkeypatch.setenv("XT_LMDEPLOY_TABLE", table)
    model = _baichuan_folder(tmp_path, baichuan_checkpoint, "tiny-13b-alibi")
    run = make_run(tmp_path / "run", "baichuan2-tiny-13b", model, "default")
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["export", str(run), "--to", "lmdeploy", "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "Baichuan2-13B" in result.output and "ALiBi" in result.output and "--to hf" in result.output
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "tiny-13b-alibi"]


def test_unknown_option_and_non_empty_out(tmp_path):
    llama = save_llama(tmp_path / "llama")
    result = CliRunner().invoke(cli, ["export", str(llama), "--to", "lmdeploy", "--out", str(tmp_path / "o"),
                                      "--set", "backend=turbomind"])
    assert result.exit_code == 2 and "Unknown option(s) for exporter 'lmdeploy': backend" in result.output
    result = CliRunner().invoke(cli, ["export", str(llama), "--to", "lmdeploy", "--out", str(llama)])
    assert result.exit_code == 2 and "would replace" in result.output  # never the folder read from
    result = CliRunner().invoke(cli, ["export", str(llama), "--to", "lmdeploy", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "would replace" in result.output  # nor one above it


# --------------------------------------------------------------------------- chat backend, conformance


def test_chat_backend_needs_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    from xt_lmdeploy.chat import check_available

    with pytest.raises(XtError) as err:
        check_available()
    assert "CUDA" in str(err.value) and "--backend hf" in str(err.value)


def test_conformance():
    from xt.testing import check_plugin

    report = check_plugin("xt_lmdeploy")
    assert report.names("exporters") == ["lmdeploy"]


def test_plugin_import_does_not_need_lmdeploy():
    import subprocess
    import sys

    code = ("import sys; sys.modules['lmdeploy'] = None\n"
            "import xt_lmdeploy.plugin, xt_lmdeploy.routing, xt_lmdeploy.export\n"
            "from xt_lmdeploy.routing import support_tables, route\n"
            "t = support_tables()\n"
            "print(t.source, route({'architectures': ['LlamaForCausalLM']}, t).backend, 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["builtin", "turbomind", "False"]
