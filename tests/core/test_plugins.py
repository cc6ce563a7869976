"""The plugin manager and registry, with throwaway plugins registered in-process."""

from __future__ import annotations

import pytest
from xt import hookimpl, plugins
from xt.errors import PluginConflictError, UnknownNameError
from xt.specs import DatasetSpec, ModelSpec, TemplateSpec


def _map(row):
    return {"messages": [{"role": "user", "content": row["q"]}, {"role": "assistant", "content": row["a"]}]}


class GoodPlugin:
    @hookimpl
    def dataset_map(register):
        register(DatasetSpec(name="qa-tiny", aliases=("qa",), map_row=_map, sample_rows=[{"q": "x", "a": "y"}]))


class SameNamePlugin:
    @hookimpl
    def dataset_map(register):
        register(DatasetSpec(name="qa-tiny", map_row=_map))


class RaisingPlugin:
    @hookimpl
    def dataset_map(register):
        raise RuntimeError("boom in hook")

    @hookimpl
    def prompt_template(register):
        register(TemplateSpec(name="raiser-template"))


class MisspelledPlugin:
    @hookimpl
    def dataset_mapp(register):  # not an xt hook
        pass


class MalformedPlugin:
    @hookimpl
    def model_loader(register):
        register(ModelSpec(name="Bad Name", kind="telepathic"))
        register(ModelSpec(name="fine-model"))


def _add(obj, name, dist=None):
    pm = plugins.get_plugin_manager()
    return plugins.register_plugin(pm, obj, name, dist or f"dist-{name}", "1.0")


def test_builtins_are_ordinary_plugins():
    infos = {p.name: p for p in plugins.plugin_infos()}
    assert infos["xt.builtins"].dist == "xt-core"
    assert set(infos["xt.builtins"].hooks) == {"model_loader", "dataset_map", "prompt_template", "collate", "exporter"}
    reg = plugins.get_registry()
    for kind, name in [("models", "hf"), ("datasets", "conversation"), ("templates", "default"),
                       ("collators", "default"), ("exporters", "hf")]:
        assert reg.get(kind, name).plugin == "xt-core"


def test_lookup_by_name_and_alias_and_owner():
    _add(GoodPlugin, "good")
    reg = plugins.get_registry()
    spec = reg.get("datasets", "qa")
    assert spec is reg.get("datasets", "qa-tiny")
    assert spec.plugin == "dist-good"


def test_unknown_name_lists_known_and_suggests():
    _add(GoodPlugin, "good")
    with pytest.raises(UnknownNameError) as err:
        plugins.get_registry().get("datasets", "qa-tiyn")
    msg = str(err.value)
    assert "Did you mean 'qa-tiny'?" in msg
    assert "conversation" in msg  # the list of known names


def test_duplicate_names_error_names_both_distributions_only_when_used():
    _add(GoodPlugin, "good", "xt-good")
    _add(SameNamePlugin, "same", "xt-same")
    reg = plugins.get_registry()
    reg.get("datasets", "qa")  # the alias is unique: still works
    reg.get("templates", "default")  # unrelated lookups keep working
    with pytest.raises(PluginConflictError) as err:
        reg.get("datasets", "qa-tiny")
    assert "xt-good" in str(err.value) and "xt-same" in str(err.value)


def test_raising_hook_is_isolated_and_reported(capsys):
    _add(GoodPlugin, "good")
    _add(RaisingPlugin, "raiser", "xt-raiser")
    reg = plugins.get_registry()
    assert reg.get("datasets", "qa-tiny")  # others keep working
    # its other hooks still work: only the failing hook's registrations are skipped
    assert reg.get("templates", "raiser-template").plugin == "xt-raiser"
    info = {p.name: p for p in plugins.plugin_infos()}["raiser"]
    assert info.status == "broken" and "boom in hook" in info.error
    err = capsys.readouterr().err
    assert err.count("boom in hook") == 1  # reported once
    plugins.get_registry()
    assert "boom in hook" not in capsys.readouterr().err


def test_misspelled_hookimpl_fails_loudly_with_suggestion(capsys):
    info = _add(MisspelledPlugin, "typo", "xt-typo")
    assert info.status == "broken"
    assert "dataset_mapp" in info.error and "did you mean 'dataset_map'" in info.error
    assert "xt-typo" in capsys.readouterr().err


def test_check_pending_catches_unknown_hook_without_marker_heuristics():
    # pluggy's own check: a hookimpl with a name that has no spec fails check_pending.
    import pluggy
    from xt import hookspecs

    pm = pluggy.PluginManager("xt")
    pm.add_hookspecs(hookspecs)
    pm.register(MisspelledPlugin, name="typo")
    with pytest.raises(pluggy.PluginValidationError):
        pm.check_pending()


def test_malformed_registration_is_reported_and_skipped():
    _add(MalformedPlugin, "malformed")
    reg = plugins.get_registry()
    assert "fine-model" not in reg.names("models")  # the hook failed as a whole
    info = {p.name: p for p in plugins.plugin_infos()}["malformed"]
    assert info.status == "broken" and "kind 'telepathic'" in info.error


def test_unregister_removes_registrations():
    pm = plugins.get_plugin_manager()
    _add(GoodPlugin, "good")
    assert "qa-tiny" in plugins.get_registry().names("datasets")
    pm.unregister(name="good")
    assert "qa-tiny" not in plugins.get_registry().names("datasets")


def test_resolve_model_falls_back_to_generic_hf(tmp_path):
    reg = plugins.get_registry()
    spec = reg.resolve_model("someorg/some-model")
    assert spec.source == "someorg/some-model" and spec.load_model is reg.get("models", "hf").load_model
    spec = reg.resolve_model(str(tmp_path))
    assert spec.source == str(tmp_path)
    with pytest.raises(UnknownNameError):
        reg.resolve_model("not-a-model")


def test_builtins_pass_the_conformance_kit_and_a_bad_template_fails_it():
    import xt.builtins
    from xt.testing import PluginCheckError, check_plugin_object

    report = check_plugin_object(xt.builtins, "xt.builtins", module="xt.builtins")
    assert report.names("templates") == ["default", "chatml", "auto", "llama3", "qwen2", "qwen2.5", "internlm2",
                                         "mistral", "gemma", "plain"]

    class Broken:
        @hookimpl
        def prompt_template(register):
            register(TemplateSpec(name="no-slot", user="Q:"))  # the user's text has nowhere to go

        @hookimpl
        def dataset_map(register):
            register(DatasetSpec(name="no-rows", map_row=_map))  # nothing to check offline

    with pytest.raises(PluginCheckError) as err:
        check_plugin_object(Broken, "broken")
    assert "user part must contain '{content}'" in str(err.value)
    assert "neither sample_rows nor generate" in str(err.value)  # every problem in one message
