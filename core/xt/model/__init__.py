"""Model set-up: loading (attention backend, quantization), LoRA / QLoRA / full, saving results."""
