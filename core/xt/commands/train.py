"""``xt train``: fine-tune a model (LoRA, QLoRA or full) with DeepSpeed."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from xt.errors import XtError

if TYPE_CHECKING:
    from xt.config import TrainConfig


@click.command("train")
@click.argument("config_file", required=False, type=click.Path(dir_okay=False))
@click.option("--config", "config_opt", type=click.Path(dir_okay=False), help="YAML config (e.g. RUN/config.yaml).")
@click.option("--model", help="Registered model name, hub id (org/name) or local folder.")
@click.option("--dataset", help="Registered dataset name (see 'xt list datasets').")
@click.option("--template", help="Chat template (default: the model's, else the dataset's).")
@click.option("--method", type=click.Choice(["lora", "qlora", "full"]), help="Fine-tuning method.")
@click.option("--objective", help="Training objective (default sft; see 'xt list objectives'), e.g. dpo.")
@click.option("--data-files", multiple=True, help="Local data files / globs for the dataset (repeatable).")
@click.option("--model-path", help="Local folder with the model's weights (overrides the spec's source).")
@click.option("--output", help="Run directory (default runs/MODEL-DATASET-METHOD).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override any config key (repeatable), e.g. --set lr=1e-4 --set model_args.rope_theta=1e6.")
@click.option("--resume", "resume", is_flag=False, flag_value="", default=None, metavar="[DIR]",
              help="Continue from the latest checkpoint of DIR (default: the output folder).")
@click.option("--nproc", type=int, default=None, help="Processes per node (re-launches through torchrun).")
@click.option("--hostfile", type=click.Path(), help="DeepSpeed hostfile for multi-node runs.")
@click.option("--node-rank", type=int, default=None,
              help="With --hostfile: start only this host's processes, without ssh (run once per host).")
@click.option("--master-addr", help="Address of the first host (multi-node; the same on every node).")
@click.option("--master-port", type=int, default=None, help="A free port on the first host (multi-node).")
@click.option("--stage", help="Training stage the model plugin defines (e.g. pretrain, finetune for llava-*).")
@click.option("--image-folder", type=click.Path(file_okay=False), help="Folder with the images rows refer to.")
@click.option("--dry-run", is_flag=True, help="Print the plan (parameters, memory, data, steps) and exit.")
@click.option("--overwrite", is_flag=True, help="Replace an existing run in the output folder.")
def train_command(config_file: str | None, config_opt: str | None, model: str | None, dataset: str | None,
                  template: str | None, method: str | None, objective: str | None, data_files: tuple[str, ...], model_path: str | None,
                  output: str | None, overrides: tuple[str, ...], resume: str | None, nproc: int | None,
                  hostfile: str | None, node_rank: int | None, master_addr: str | None, master_port: int | None,
                  stage: str | None, image_folder: str | None, dry_run: bool, overwrite: bool) -> None:
    """Fine-tune a model (LoRA, QLoRA or full) with DeepSpeed.

    \b
    Settings come from CONFIG_FILE (YAML), then the flags, then --set overrides;
    the resolved config is saved as RUN/config.yaml, so `xt train RUN/config.yaml` repeats a run.
    """
    from xt.config import resolve_config

    if nproc is not None and nproc < 1:
        raise XtError(f"--nproc must be at least 1, got {nproc}.")
    if config_file and config_opt:
        raise XtError("Pass the config file either as an argument or with --config, not both.")
    config_path = config_file or config_opt
    resume_value: str | bool | None = None
    if resume is not None:
        resume_value = resume if resume else True
        if isinstance(resume_value, str) and not config_path:
            run_config = Path(resume_value) / "config.yaml"
            if not run_config.is_file():  # a checkpoint folder: RUN/checkpoints/step-N
                run_config = Path(resume_value).parent.parent / "config.yaml"
            if not run_config.is_file():
                raise XtError(f"'{resume_value}' is not an xt run directory (no config.yaml); pass the run's "
                              f"--output folder to --resume.")
            config_path = str(run_config)
    cli_values = {"model": model, "dataset": dataset, "template": template, "method": method, "objective": objective,
                  "data_files": list(data_files) or None, "model_path": model_path, "output": output,
                  "stage": stage, "image_folder": image_folder}
    cfg = resolve_config(config_path, cli_values, overrides)
    if isinstance(resume_value, str) and not output:
        cfg.output = str(Path(resume_value)) if (Path(resume_value) / "config.yaml").is_file() \
            else str(Path(resume_value).parent.parent)
    if resume_value is not None:
        check_resume_settings(cfg)

    from xt.train.launch import already_launched, relaunch, use_per_env_extensions_dir

    world = nproc or int(os.environ.get("WORLD_SIZE", 1))  # launched ranks get no --nproc (stripped)
    if dry_run:
        from xt.train.plan import plan

        click.echo(plan(cfg, world=world))
        return
    if (nproc and nproc > 1 or hostfile or node_rank is not None) and not already_launched():
        use_per_env_extensions_dir()  # the launched processes inherit it
        sys.exit(relaunch(nproc or 1, hostfile, node_rank=node_rank, master_addr=master_addr,
                          master_port=master_port))
    from xt.train.loop import train

    previous = signal.signal(signal.SIGTERM, _interrupt)  # a stopped run is marked failed in run.json
    try:
        run_dir = train(cfg, resume=resume_value, overwrite=overwrite)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(str(run_dir / "final"))


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"by {signal.Signals(signum).name}")


def check_resume_settings(cfg: TrainConfig) -> None:
    """--resume continues the run's own settings: refuse any other, by name, instead of ignoring it."""
    from xt.config import from_dict, read_yaml

    saved_file = Path(cfg.output or Path("runs") / cfg.run_name) / "config.yaml"
    if not saved_file.is_file():
        return
    saved = from_dict(read_yaml(saved_file), where=str(saved_file)).to_dict()
    changed = [f"{key} ({saved[key]!r} in the run, {value!r} now)" for key, value in cfg.to_dict().items()
               if key != "output" and saved.get(key) != value]
    if changed:
        raise XtError(f"--resume continues the saved settings of '{saved_file.parent}', but these differ: "
                      f"{'; '.join(changed)}. Drop the changes, or start a new run with them (--overwrite or "
                      f"another --output).")
