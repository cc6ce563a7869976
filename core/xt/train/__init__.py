"""The training engine: DeepSpeed config, the loop, the loss, checkpoints, eval, metrics, launch, dry-run plan."""
