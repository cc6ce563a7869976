"""xt-llava: LLaVA-style vision-language models (vision encoder + projector + LLM) for xt."""
