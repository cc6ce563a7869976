"""Every hook: a registration made through it is really used by the core (datasette style)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from test_train_support import DATASET, MODEL, make_model_dir, register_test_plugin  # noqa: E402
from xt import hookimpl  # noqa: E402
from xt.cli import cli  # noqa: E402
from xt.plugins import get_plugin_manager  # noqa: E402
from xt.specs import EOS, CollatorSpec, DatasetSpec, ExporterSpec, ModelSpec, TemplateSpec  # noqa: E402

CALLS: dict[str, int] = {}


def _count(name: str) -> None:
    CALLS[name] = CALLS.get(name, 0) + 1


def _tokenizer(source):
    from xt.tokenizers import tiny_tokenizer

    _count("load_tokenizer")
    return tiny_tokenizer()


def _map(row):
    _count("map_row")
    return {"messages": [{"role": "user", "content": row["q"]}, {"role": "assistant", "content": row["a"]}]}


def _collator(**options):
    from xt.data.collate import make_default_collator

    inner = make_default_collator(**options)

    def collate(samples):
        _count("collate")
        return inner(samples)

    return collate


def _export(run_dir, out_dir, **options):
    _count("export")
    Path(out_dir).mkdir(parents=True)
    (Path(out_dir) / "exported.json").write_text(json.dumps({"run": str(run_dir), **options}))


class HookPlugin:
    @hookimpl
    def model_loader(register):
        register(ModelSpec(name="hooked-model", load_tokenizer=_tokenizer))

    @hookimpl
    def dataset_map(register):
        register(DatasetSpec(name="hooked-set", map_row=_map,
                             generate=lambda split, seed: [{"q": "ping", "a": "pong"}] * 3))

    @hookimpl
    def prompt_template(register):
        register(TemplateSpec(name="hooked-template", user="QQ: {content} AA: ", assistant="{content}",
                              assistant_end=(EOS,)))

    @hookimpl
    def collate(register):
        register(CollatorSpec(name="counting", factory=_collator))

    @hookimpl
    def exporter(register):
        register(ExporterSpec(name="hooked-export", export=_export))


def _register():
    CALLS.clear()
    get_plugin_manager().register(HookPlugin, name="hook-plugin")


def test_model_dataset_and_template_registrations_are_used_by_data_preview(tmp_path):
    _register()
    result = CliRunner().invoke(cli, ["data", "preview", "--model", "hooked-model", "--dataset", "hooked-set",
                                      "--template", "hooked-template", "-n", "1"],
                                env={"XT_CACHE_DIR": str(tmp_path)})
    assert result.exit_code == 0, result.output
    assert "QQ:" in result.output and "pong" in result.output
    assert CALLS["load_tokenizer"] >= 1 and CALLS["map_row"] >= 1


def test_collator_registration_is_used_by_the_training_loop(tmp_path):
    from xt.config import from_dict
    from xt.train.loop import train

    _register()
    register_test_plugin(make_model_dir(tmp_path / "model"))
    run_dir = train(from_dict(dict(model=MODEL, dataset=DATASET, collator="counting", max_steps=2, micro_batch_size=2,
                                   max_length=64, save_steps=0, output=str(tmp_path / "run"),
                                   data_cache_dir=str(tmp_path / "cache"))), overwrite=True)
    assert CALLS["collate"] >= 2
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"


def test_exporter_registration_is_used_by_xt_export(tmp_path):
    from xt.run import RunInfo

    _register()
    run = tmp_path / "run"
    run.mkdir()
    RunInfo(model="hooked-model", model_source=None, template="hooked-template", status="finished",
            final_dir="final").save(run)
    result = CliRunner().invoke(cli, ["export", str(run), "--to", "hooked-export", "--out", str(tmp_path / "out"),
                                      "--set", "flavour=plain"])
    assert result.exit_code == 0, result.output
    assert CALLS["export"] == 1
    assert json.loads((tmp_path / "out" / "exported.json").read_text())["flavour"] == "plain"
