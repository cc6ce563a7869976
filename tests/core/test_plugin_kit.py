"""The conformance kit v2 on throwaway plugins, each with one defect users would otherwise meet later."""

from __future__ import annotations

from pathlib import Path

import pytest
from xt import hookimpl
from xt.specs import CollatorSpec, ExporterSpec, ModelSpec, TemplateSpec
from xt.testing import check_plugin_object


def _tiny_config():
    from transformers import LlamaConfig
    from xt.tokenizers import tiny_tokenizer

    return LlamaConfig(vocab_size=len(tiny_tokenizer()), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)


def _tiny_llama(source, seed=0, **kwargs):
    import torch
    from transformers import LlamaForCausalLM

    if seed is not None:
        torch.manual_seed(seed)
    return LlamaForCausalLM(_tiny_config())


def _unseeded_llama(source, **kwargs):
    return _tiny_llama(source, seed=None)


def _tiny_tokenizer(source, **kwargs):
    from xt.tokenizers import tiny_tokenizer

    return tiny_tokenizer()


def _default_collator(**options):
    from xt.data.collate import make_default_collator

    return make_default_collator(**options)


def _write_readme(run_dir, out_dir, **options):
    Path(out_dir).mkdir(parents=True)
    (Path(out_dir) / "README.md").write_text(f"exported from {run_dir}\n")


class GoodKitPlugin:
    @hookimpl
    def model_loader(register):
        register(ModelSpec(name="kit-tiny", source=None, load_model=_tiny_llama, load_tokenizer=_tiny_tokenizer,
                           config=_tiny_config, default_template="default"))

    @hookimpl
    def collate(register):
        register(CollatorSpec(name="kit-collator", factory=_default_collator))

    @hookimpl
    def exporter(register):
        register(ExporterSpec(name="kit-readme", export=_write_readme))


def _raise():
    raise RuntimeError("the config is on a server")


class ConfigRaises:
    @hookimpl
    def model_loader(register):
        register(ModelSpec(name="kit-no-config", source="org/model", config=_raise))


class TokenizerNone:
    @hookimpl
    def model_loader(register):
        register(ModelSpec(name="kit-no-tokenizer", source=None, load_model=_tiny_llama,
                           load_tokenizer=lambda source, **kwargs: None, config=_tiny_config))


class UnseededPreset:
    @hookimpl
    def model_loader(register):
        register(ModelSpec(name="kit-unseeded", source=None, load_model=_unseeded_llama,
                           load_tokenizer=_tiny_tokenizer, config=_tiny_config))


class CollatorWrongSignature:
    @hookimpl
    def collate(register):
        register(CollatorSpec(name="kit-bad-collator", factory=lambda pad_id: (lambda samples: {})))


class CollatorThatFails:
    @hookimpl
    def collate(register):
        register(CollatorSpec(name="kit-failing-collator", factory=lambda **options: (lambda samples: samples[9])))


class ExporterWrongSignature:
    @hookimpl
    def exporter(register):
        register(ExporterSpec(name="kit-bad-exporter", export=lambda run_dir: None))


class ExporterWritesNothing:
    @hookimpl
    def exporter(register):
        register(ExporterSpec(name="kit-lazy-exporter", export=lambda run_dir, out_dir, **options: None))


class ChatmlAgain:
    @hookimpl
    def prompt_template(register):
        register(TemplateSpec(name="chatml", user="<u>{content}", assistant="{content}"))


def _problems(plugin) -> list[str]:
    return check_plugin_object(plugin, plugin.__name__, raise_on_problems=False).problems


def test_a_plugin_without_defects_passes_every_check():
    report = check_plugin_object(GoodKitPlugin, "good-kit")
    assert report.problems == [] and report.warnings == []
    assert report.names("models") == ["kit-tiny"]


@pytest.mark.parametrize(("plugin", "expected"), [
    (ConfigRaises, "model 'kit-no-config': config() raised RuntimeError: the config is on a server"),
    (TokenizerNone, "model 'kit-no-tokenizer': its tokenizer loader returned NoneType, not a tokenizer"),
    (UnseededPreset, "model 'kit-unseeded': two builds of the preset have different weights"),
    (CollatorWrongSignature, "collator 'kit-bad-collator': calling its factory as the core does raised TypeError"),
    (CollatorThatFails, "collator 'kit-failing-collator': collating samples of dataset 'conversation' with "
                        "template 'default' raised IndexError"),
    (ExporterWrongSignature, "exporter 'kit-bad-exporter': exporting a tiny finished run raised TypeError"),
    (ExporterWritesNothing, "exporter 'kit-lazy-exporter': exporting a tiny finished run wrote nothing"),
    (ChatmlAgain, "template 'chatml' re-registers the core's template name 'chatml'"),
])
def test_each_defect_is_caught_with_a_message_naming_it(plugin, expected):
    problems = _problems(plugin)
    assert len(problems) == 1, problems
    assert problems[0].startswith(expected), problems


def test_a_name_another_plugin_registers_is_a_warning(monkeypatch):
    from xt import plugins

    plugins.register_plugin(plugins.get_plugin_manager(), GoodKitPlugin, "good-kit", "xt-good-kit", "1.0")

    class SameCollatorName:
        @hookimpl
        def collate(register):
            register(CollatorSpec(name="kit-collator", factory=_default_collator))

    with pytest.warns(UserWarning, match="collator name 'kit-collator' is also registered by xt-good-kit"):
        report = check_plugin_object(SameCollatorName, "same-name", distribution="xt-same-name")
    assert report.problems == []
