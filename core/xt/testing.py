"""Plugin conformance kit: run it in a plugin's own test suite.

    from xt.testing import check_plugin

    def test_conformance():
        check_plugin("xt_myplugin")

It loads the plugin through its entry point (group ``xt``), checks that every hook it implements is
a real xt hook and every registration is well-formed, runs each dataset map on the plugin's own
sample rows and validates the conversations, renders each template with a small offline tokenizer
(and checks that the prompt used at inference is exactly the prefix used in training and that the
Jinja chat template saved with results tokenizes to exactly the training ids), checks that
model specs name known templates, that ``register_commands`` adds working click commands and that
importing the plugin does not import torch. Every problem is reported in one failure message.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from xt import hookspecs
from xt.specs import HOOK_OF_KIND, SPEC_KINDS, Spec, TemplateSpec, conversation_problems

_PROBE_CONVERSATION = {
    "messages": [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "What is two plus two?"},
        {"role": "assistant", "content": "Four."},
        {"role": "user", "content": "And three plus three?"},
        {"role": "assistant", "content": "Six."},
    ]
}


class PluginCheckError(AssertionError):
    """Raised by :func:`check_plugin` with every problem found, one per line."""


@dataclass
class PluginReport:
    """What the conformance kit found: registrations per kind and problems."""

    plugin: str
    distribution: str
    specs: dict[str, list[Spec]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def names(self, kind: str) -> list[str]:
        return [s.name for s in self.specs.get(kind, [])]


def _find_entry_point(plugin: str) -> metadata.EntryPoint | None:
    for ep in metadata.entry_points(group="xt"):
        module = ep.value.split(":")[0]
        dist = ep.dist.name if ep.dist else ""
        if plugin in (ep.name, dist, module) or module.split(".")[0] == plugin:
            return ep
    return None


def _check_templates(report: PluginReport, templates: list[TemplateSpec]) -> None:
    from xt.template import IGNORE_INDEX
    from xt.tokenizers import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    for t in templates:
        where = f"template '{t.name}'"
        try:
            sample = t.encode(_PROBE_CONVERSATION, tokenizer)
        except Exception as exc:
            report.problems.append(f"{where}: rendering a conversation raised {type(exc).__name__}: {exc}")
            continue
        ids, labels = sample["input_ids"], sample["labels"]
        if len(ids) != len(labels):
            report.problems.append(f"{where}: input_ids and labels differ in length")
        if not any(lab != IGNORE_INDEX for lab in labels):
            report.problems.append(f"{where}: no token carries loss")
        if labels and labels[0] != IGNORE_INDEX:
            report.problems.append(f"{where}: the first token carries loss (it should be prompt)")
        for turn in (1, 3):
            try:
                prompt = t.encode_prompt(_PROBE_CONVERSATION["messages"][: turn + 1], tokenizer)
            except Exception as exc:
                report.problems.append(f"{where}: building a prompt raised {type(exc).__name__}: {exc}")
                break
            if ids[: len(prompt)] != prompt:
                report.problems.append(
                    f"{where}: the inference prompt for turn {turn // 2 + 1} is not a prefix of the training "
                    f"sample, so chat would frame text differently from training")
                break
        _check_saved_chat_template(report, where, t, tokenizer, ids)
        try:
            if not t.stop_token_ids(tokenizer):
                report.problems.append(f"{where}: no stop token ids")
        except Exception as exc:
            report.problems.append(f"{where}: stop_token_ids raised {type(exc).__name__}: {exc}")


def _check_saved_chat_template(report: PluginReport, where: str, template: TemplateSpec, tokenizer: Any,
                               ids: list[int]) -> None:
    """The Jinja chat template saved with results must give exactly the training ids."""
    try:
        jinja = template.compile(tokenizer).jinja()
        rendered = tokenizer.apply_chat_template(_PROBE_CONVERSATION["messages"], chat_template=jinja, tokenize=True,
                                                 return_dict=False)
    except Exception as exc:
        report.problems.append(f"{where}: rendering its Jinja chat template raised {type(exc).__name__}: {exc}")
        return
    if list(rendered) != ids:
        report.problems.append(f"{where}: the saved chat template tokenizes to other ids than training, so plain "
                               f"transformers would frame text differently from xt")


def _check_datasets(report: PluginReport, datasets: list[Any], max_rows: int) -> None:
    for d in datasets:
        where = f"dataset '{d.name}'"
        rows = list(d.sample_rows)[:max_rows]
        if not rows and d.generate is not None:
            try:
                rows = list(d.generate(d.splits[0] if d.splits else "train", 0))[:max_rows]
            except Exception as exc:
                report.problems.append(f"{where}: generate() raised {type(exc).__name__}: {exc}")
                continue
        if not rows:
            report.problems.append(f"{where}: has neither sample_rows nor generate(); add a few sample rows "
                                   f"so the map can be checked offline")
            continue
        for i, row in enumerate(rows):
            try:
                conv = d.map_row(row)
            except Exception as exc:
                report.problems.append(f"{where}: map_row failed on sample row {i}: {type(exc).__name__}: {exc}")
                continue
            for p in conversation_problems(conv):
                report.problems.append(f"{where}: sample row {i} maps to an invalid conversation: {p}")


def _check_import_is_light(report: PluginReport, module: str) -> None:
    code = f"import sys, importlib; importlib.import_module({module!r}); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        report.problems.append(f"importing {module} failed: {out.stderr.strip().splitlines()[-1:]}")
    elif out.stdout.strip() == "True":
        report.problems.append(f"importing {module} imports torch; import heavy code inside the loader "
                               f"functions so 'xt --help' stays instant")


def check_plugin(plugin: str, *, max_rows: int = 5, check_import: bool = True, raise_on_problems: bool = True) -> PluginReport:
    """Check one installed plugin (entry-point name, distribution or package) and report all problems.

    Raises :class:`PluginCheckError` listing every problem unless ``raise_on_problems`` is False.
    """
    ep = _find_entry_point(plugin)
    if ep is None:
        known = sorted(e.name for e in metadata.entry_points(group="xt"))
        raise PluginCheckError(f"No entry point in group 'xt' matches '{plugin}'; is the plugin installed "
                               f"(pip install -e .)? Installed: {', '.join(known) or 'none'}.")
    try:
        obj = ep.load()
    except Exception as exc:
        raise PluginCheckError(f"Plugin '{ep.name}' failed to import: {type(exc).__name__}: {exc}") from exc
    return check_plugin_object(obj, ep.name, distribution=ep.dist.name if ep.dist else "?",
                               module=ep.value.split(":")[0] if check_import else None,
                               max_rows=max_rows, raise_on_problems=raise_on_problems)


def check_plugin_object(obj: Any, name: str, *, distribution: str = "?", module: str | None = None,
                        max_rows: int = 5, raise_on_problems: bool = True) -> PluginReport:
    """Check a plugin object (module or class with ``@hookimpl`` functions) without an entry point.

    ``module``, when given, is imported in a fresh interpreter to check it does not import torch.
    """
    report = PluginReport(plugin=name, distribution=distribution)
    ep_name = name
    from xt.plugins import _hook_names

    known_hooks = _hook_names()
    for attr in dir(obj):
        fn = getattr(obj, attr, None)
        if callable(fn) and hasattr(fn, "xt_impl") and attr not in known_hooks:
            import difflib

            near = difflib.get_close_matches(attr, known_hooks, n=1)
            report.problems.append(f"'{attr}' is marked @hookimpl but is not an xt hook"
                                   + (f" (did you mean '{near[0]}'?)" if near else ""))
    pm = pluggy.PluginManager("xt")
    pm.add_hookspecs(hookspecs)
    try:
        pm.register(obj, name=ep_name)
        pm.check_pending()
    except Exception as exc:
        report.problems.append(f"registering the plugin failed: {type(exc).__name__}: {exc}")

    for kind, hook in HOOK_OF_KIND.items():
        collected: list[Spec] = []
        impls = getattr(pm.hook, hook).get_hookimpls() if pm.is_registered(obj) else []
        for impl in impls:
            try:
                impl.function(register=collected.append)
            except Exception as exc:
                report.problems.append(f"hook {hook} raised {type(exc).__name__}: {exc}")
        seen: set[str] = set()
        for spec in collected:
            if not isinstance(spec, SPEC_KINDS[kind]):
                report.problems.append(f"{hook} registered a {type(spec).__name__}, expected {SPEC_KINDS[kind].__name__}")
                continue
            for p in spec.problems():
                report.problems.append(f"{kind[:-1]} '{spec.name}': {p}")
            for n in (spec.name, *spec.aliases):
                if n in seen:
                    report.problems.append(f"{kind[:-1]} name '{n}' is registered twice by this plugin")
                seen.add(n)
        report.specs[kind] = [s for s in collected if isinstance(s, SPEC_KINDS[kind])]

    _check_datasets(report, report.specs["datasets"], max_rows)
    _check_templates(report, report.specs["templates"])

    from xt.plugins import get_registry

    registry = get_registry()
    own_templates = set()
    for t in report.specs["templates"]:
        own_templates.update((t.name, *t.aliases))
    for spec in report.specs["models"] + report.specs["datasets"]:
        tmpl = spec.default_template
        if tmpl and tmpl not in own_templates and tmpl not in registry.names("templates"):
            report.problems.append(f"{type(spec).__name__} '{spec.name}' names default_template '{tmpl}', "
                                   f"which no loaded plugin registers")

    if pm.is_registered(obj) and pm.hook.register_commands.get_hookimpls():
        import click

        group = click.Group("xt")
        try:
            pm.hook.register_commands(cli=group)
        except Exception as exc:
            report.problems.append(f"register_commands raised {type(exc).__name__}: {exc}")
        for name in group.commands:
            from click.testing import CliRunner

            result = CliRunner().invoke(group, [name, "--help"])
            if result.exit_code != 0:
                report.problems.append(f"command '{name} --help' exited {result.exit_code}: {result.output.strip()}")

    if module:
        _check_import_is_light(report, module)

    if report.problems and raise_on_problems:
        lines = "\n".join(f"  - {p}" for p in report.problems)
        raise PluginCheckError(f"Plugin '{name}' ({report.distribution}) has {len(report.problems)} "
                               f"problem(s):\n{lines}")
    return report
