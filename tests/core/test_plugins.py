"""The plugin manager and registry, with throwaway plugins registered in-process."""

from __future__ import annotations

import pytest
from xt import hookimpl, plugins
from xt.errors import PluginConflictError, UnknownNameError
from xt.specs import CollatorSpec, DatasetSpec, ModelSpec, TemplateSpec


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
    assert set(infos["xt.builtins"].hooks) == {"model_loader", "dataset_map", "prompt_template", "collate", "exporter",
                                               "objective"}
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


class ChatmlAgainPlugin:
    @hookimpl
    def prompt_template(register):
        register(TemplateSpec(name="chatml"))  # the core's name
        register(TemplateSpec(name="own-template", aliases=("plain",)))  # a core name as an alias
        register(TemplateSpec(name="fine-template"))


class TwiceByOnePlugin:
    @hookimpl
    def dataset_map(register):
        register(DatasetSpec(name="twice", map_row=_map))
        register(DatasetSpec(name="twice", map_row=_map))


class WrongTypePlugin:
    @hookimpl
    def collate(register):
        register({"name": "not-a-spec"})
        register(CollatorSpec(name="good-collator", factory=dict))


def test_malformed_registration_drops_only_itself_and_every_problem_is_reported():
    _add(MalformedPlugin, "malformed")
    _add(WrongTypePlugin, "wrongtype")
    reg = plugins.get_registry()
    assert "fine-model" in reg.names("models")  # registered by the same hook call as the bad spec
    assert "good-collator" in reg.names("collators")
    infos = {p.name: p for p in plugins.plugin_infos()}
    assert infos["malformed"].status == "broken"
    assert len(infos["malformed"].errors) == 1  # one bad spec, one error naming both of its problems
    assert "kind 'telepathic'" in infos["malformed"].error and "'Bad Name'" in infos["malformed"].error
    assert infos["wrongtype"].errors == ["collate registered a dict, expected a CollatorSpec; it was skipped"]


def test_reregistering_a_core_name_is_an_error_and_the_core_keeps_it(capsys):
    _add(ChatmlAgainPlugin, "again", "xt-again")
    reg = plugins.get_registry()
    assert reg.get("templates", "chatml").plugin == "xt-core"
    assert reg.get("templates", "plain").plugin == "xt-core"
    assert "own-template" not in reg.names("templates")
    assert reg.get("templates", "fine-template").plugin == "xt-again"
    info = {p.name: p for p in plugins.plugin_infos()}["again"]
    assert info.status == "broken" and len(info.errors) == 2
    assert "re-registers the core's template name 'chatml'" in info.errors[0]
    assert "re-registers the core's template name 'plain'" in info.errors[1]
    assert "'chatml'" in capsys.readouterr().err


def test_a_name_registered_twice_by_one_plugin_keeps_the_first():
    _add(TwiceByOnePlugin, "twice", "xt-twice")
    reg = plugins.get_registry()
    assert len([s for s in reg.all("datasets") if s.name == "twice"]) == 1
    assert reg.get("datasets", "twice").plugin == "xt-twice"
    info = {p.name: p for p in plugins.plugin_infos()}["twice"]
    assert info.errors == ["dataset name 'twice' is registered twice by xt-twice; the second one was skipped"]


def test_plugins_and_list_commands_show_every_error_and_conflict():
    import json

    from click.testing import CliRunner
    from xt.commands.info import list_command, plugins_command

    _add(GoodPlugin, "good", "xt-good")
    _add(SameNamePlugin, "same", "xt-same")
    _add(MalformedPlugin, "malformed", "xt-malformed")
    _add(ChatmlAgainPlugin, "again", "xt-again")
    result = CliRunner().invoke(plugins_command, [])
    assert result.exit_code == 0, result.output
    shown = {p["name"]: p for p in json.loads(result.stdout)}
    assert shown["good"]["status"] == "ok"
    assert shown["good"]["conflicts"] == [
        "dataset name 'qa-tiny' is also registered by xt-same; using it fails until one is uninstalled or "
        "disabled with XT_DISABLE_PLUGINS"]
    assert "xt-good" in shown["same"]["conflicts"][0]
    assert len(shown["again"]["errors"]) == 2 and shown["again"]["status"] == "broken"
    assert "telepathic" in shown["malformed"]["errors"][0]
    assert "conflicts" not in shown["xt.builtins"] and "errors" not in shown["xt.builtins"]

    table = CliRunner().invoke(list_command, ["datasets"]).stdout
    rows = [line for line in table.splitlines() if line.startswith("qa-tiny ")]
    assert len(rows) == 2 and all("DUPLICATE" in row for row in rows)
    assert "xt-same" in rows[0] + rows[1] and "xt-good" in rows[0] + rows[1]
    assert "DUPLICATE" not in "\n".join(line for line in table.splitlines() if not line.startswith("qa-tiny "))
    listed = json.loads(CliRunner().invoke(list_command, ["datasets", "--json"]).stdout)
    assert sorted(r["duplicate_of"] for r in listed if r["name"] == "qa-tiny") == [["xt-good"], ["xt-same"]]
    assert all(r["duplicate_of"] == [] for r in listed if r["name"] != "qa-tiny")


def test_dry_run_fails_on_an_ambiguous_dataset_name():
    from xt.config import resolve_config
    from xt.train.plan import plan

    _add(GoodPlugin, "good", "xt-good")
    _add(SameNamePlugin, "same", "xt-same")
    cfg = resolve_config(None, {"model": "hf", "dataset": "qa-tiny"}, ())
    with pytest.raises(PluginConflictError, match="xt-good and xt-same"):
        plan(cfg)


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

    report = check_plugin_object(xt.builtins, "xt.builtins", distribution="xt-core", module="xt.builtins")
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


def test_a_datasets_default_template_applies_to_hub_ids_and_folders(tmp_path):
    from xt.data.pipeline import choose_template

    class ChatmlData:
        @hookimpl
        def dataset_map(register):
            register(DatasetSpec(name="chatml-data", map_row=_map, default_template="chatml"))

    _add(ChatmlData, "chatml-data")
    reg = plugins.get_registry()
    dataset = reg.get("datasets", "chatml-data")
    for model in ("someorg/some-model", str(tmp_path)):
        assert choose_template(reg.resolve_model(model), dataset).name == "chatml"
    # no default from model or dataset: the tokenizer's own chat template (``auto``)
    assert choose_template(reg.resolve_model("someorg/some-model"), reg.get("datasets", "conversation")).name == "auto"


@pytest.mark.parametrize(("fields", "problem"), [
    ({"stages": {"pretrain": ["lr=1"]}}, "stages must map stage names to dicts of config defaults"),
    ({"collator": 3}, "collator must be a collator name"),
    ({"batch_sampler": "grouped"}, "batch_sampler must be callable"),
    ({"tokenizer_model_args": "yes"}, "tokenizer_model_args must be True or False"),
    ({"answer_image": 1}, "answer_image must be callable"),
])
def test_model_fields_the_core_reads_are_validated(fields, problem):
    assert ModelSpec(name="m", **fields).problems() == [problem]
    assert ModelSpec(name="m", stages={"pretrain": {"lr": 1e-3}}, collator="llava", batch_sampler=len,
                     tokenizer_model_args=True, answer_image=len).problems() == []


def test_dataset_map_gets_the_run_context_only_when_it_asks():
    from xt.specs import RunContext

    seen = []
    plain = DatasetSpec(name="plain", map_row=lambda row: seen.append(("plain", row)) or _map(row))
    wants = DatasetSpec(name="wants", pass_context=True,
                        map_row=lambda row, context: seen.append(("wants", context.image_folder)) or _map(row))
    row = {"q": "x", "a": "y"}
    plain.map(row, RunContext(image_folder="/img"))
    wants.map(row, RunContext(image_folder="/img"))
    wants.map(row)
    assert seen == [("plain", row), ("wants", "/img"), ("wants", None)]
    assert RunContext(image_folder="a").data_fingerprint() != RunContext(image_folder="b").data_fingerprint()
    assert RunContext(rank=1, run_dir="x").data_fingerprint() == RunContext().data_fingerprint()


def test_unknown_plugin_names_are_reported_and_builtins_can_be_disabled(monkeypatch, capsys):
    from xt.plugins import get_registry, plugin_infos, reset

    monkeypatch.setenv("XT_DISABLE_PLUGINS", "xt.builtins,xt-alpacca")
    reset()
    registry = get_registry()
    err = capsys.readouterr().err
    assert "XT_DISABLE_PLUGINS names 'xt-alpacca'" in err and "Did you mean 'xt-alpaca'?" in err
    assert "default" not in registry.names("collators")  # the core's collator came from xt.builtins
    assert {i.name: i.status for i in plugin_infos()}["xt.builtins"] == "disabled"
    monkeypatch.setenv("XT_LOAD_PLUGINS", "nothing-like-this")
    monkeypatch.delenv("XT_DISABLE_PLUGINS")
    reset()
    get_registry()
    assert "XT_LOAD_PLUGINS names 'nothing-like-this'" in capsys.readouterr().err
