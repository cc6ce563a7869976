"""Run lm-evaluation-harness on an xt run or model and write ``results.json``, ``results.md`` and samples.

Everything that can be checked without the model (output folder, custom sets, task names) is checked
before the model loads; results are written to a temporary sibling folder and renamed into place, so
a failed eval leaves no half-written folder.
"""

from __future__ import annotations

import difflib
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xt.api import XtError

METRIC_NAMES = ("acc", "acc_norm", "exact_match", "f1", "bleu", "mc1", "mc2")


@dataclass
class EvalRequest:
    target: str
    tasks: list[str] = field(default_factory=list)
    data_files: list[str] = field(default_factory=list)
    out_dir: str | None = None
    template: str | None = None
    batch_size: int = 8
    max_new_tokens: int = 64
    num_fewshot: int | None = None
    limit: int | None = None
    overwrite: bool = False
    trust_remote_code: bool = False


def output_folder(request: EvalRequest) -> Path:
    """``--out``, else ``RUN/eval-results`` for a run; a model that is not a run needs ``--out``."""
    from xt.api import EVAL_RESULTS_DIR, check_output_dir, is_run_dir

    if request.out_dir:
        out = Path(request.out_dir)
    elif is_run_dir(request.target):
        out = Path(request.target) / EVAL_RESULTS_DIR
    else:
        raise XtError(f"'{request.target}' is not a run directory, so there is no run folder for the results; "
                      f"pass --out DIR.")
    return check_output_dir(out, request.overwrite)


def check_task_names(names: list[str], task_manager: Any) -> None:
    known = set(task_manager.all_tasks)
    for name in names:
        if name not in known:
            near = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
            hint = f" Did you mean '{near[0]}'?" if near else ""
            raise XtError(f"Unknown lm-eval task '{name}'.{hint} Pass a custom set with --data FILE.jsonl, "
                          f"or see 'lm-eval ls tasks'.")


def summarize(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """``{task: {metric: value}}`` from lm-eval's results (filter suffixes such as ',none' dropped)."""
    summary: dict[str, dict[str, float]] = {}
    for task, values in results["results"].items():
        metrics = {}
        for key, value in values.items():
            metric, _, _ = key.partition(",")
            if isinstance(value, (int, float)) and not isinstance(value, bool) and not metric.endswith("_stderr"):
                metrics[metric] = float(value)
        summary[task] = metrics
    return summary


def results_table(summary: dict[str, dict[str, float]], counts: dict[str, int]) -> str:
    lines = ["| task | metric | value | n |", "|---|---|---:|---:|"]
    for task, metrics in summary.items():
        for metric, value in metrics.items():
            lines.append(f"| {task} | {metric} | {value:.4f} | {counts.get(task, '')} |")
    return "\n".join(lines)


def write_results(out: Path, record: dict[str, Any], table: str, samples: dict[str, list], overwrite: bool) -> None:
    from xt.api import staged_output

    with staged_output(out, overwrite=overwrite) as tmp:
        (tmp / "results.json").write_text(json.dumps(record, indent=2, ensure_ascii=False))
        (tmp / "results.md").write_text(table + "\n")
        for task, rows in samples.items():
            lines = [json.dumps({"doc": row.get("doc"), "target": row.get("target"),
                                 "responses": row.get("filtered_resps"),
                                 **{m: row[m] for m in METRIC_NAMES if m in row}}, ensure_ascii=False, default=str)
                     for row in rows]
            (tmp / f"samples-{task}.jsonl").write_text("".join(line + "\n" for line in lines))


def evaluate(request: EvalRequest) -> tuple[str, Path]:
    """Evaluate; returns the printed table and the results folder."""
    from xt_lmeval.custom import read_custom_set, task_config, write_rows

    if not request.tasks and not request.data_files:
        raise XtError("Nothing to evaluate; pass --tasks NAMES and/or --data FILE.jsonl.")
    out = output_folder(request)
    custom_sets = [read_custom_set(path) for path in request.data_files]
    import lm_eval
    from lm_eval.tasks import TaskManager

    task_manager = TaskManager()
    check_task_names(request.tasks, task_manager)
    from xt.api import ChatOptions, load_chat_model

    from xt_lmeval.model import XtLM

    chat_model = load_chat_model(ChatOptions(target=request.target, template=request.template,
                                             trust_remote_code=request.trust_remote_code))
    lm = XtLM(chat_model, batch_size=request.batch_size, max_new_tokens=request.max_new_tokens)
    with tempfile.TemporaryDirectory() as tmp:
        configs = [task_config(c, write_rows(c, Path(tmp)), request.max_new_tokens) for c in custom_sets]
        try:
            results = lm_eval.simple_evaluate(model=lm, tasks=[*request.tasks, *configs], task_manager=task_manager,
                                              num_fewshot=request.num_fewshot, limit=request.limit,
                                              bootstrap_iters=0, log_samples=True)
        except (ConnectionError, OSError, FileNotFoundError) as exc:
            raise XtError(f"A task's data could not be loaded ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
                          f"put it in the local datasets cache or allow hub access.") from exc
    summary = summarize(results)
    counts = {task: int(n.get("effective", n.get("original", 0))) for task, n in results.get("n-samples", {}).items()}
    record = {"model": request.target, "template": chat_model.template.name, "harness": "lm-eval",
              "harness_version": lm_eval.__version__ if hasattr(lm_eval, "__version__") else None,
              "num_fewshot": request.num_fewshot, "limit": request.limit, "results": summary, "n_samples": counts}
    table = results_table(summary, counts)
    write_results(out, record, table, results.get("samples", {}), request.overwrite)
    return table, out
