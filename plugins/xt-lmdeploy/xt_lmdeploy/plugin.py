"""The xt hooks of xt-lmdeploy (entry point ``lmdeploy``). Imports no torch and no lmdeploy."""

from __future__ import annotations

from typing import Any

from xt.api import ExporterSpec, hookimpl


def _export(run_dir: Any, out_dir: Any, **options: Any) -> Any:
    from xt_lmdeploy.export import export_lmdeploy

    return export_lmdeploy(run_dir, out_dir, **options)


def _chat(options: Any) -> Any:
    from xt_lmdeploy.chat import make_responder

    return make_responder(options)


@hookimpl
def exporter(register: Any) -> None:
    register(ExporterSpec(
        name="lmdeploy",
        description="Merged model + chat_template.json for LMDeploy (TurboMind for Llama-layout models, "
                    "PyTorch engine for LLaVA; Baichuan2-7B via the Llama layout; Baichuan2-13B refused).",
        export=_export,
        chat=_chat,
    ))
