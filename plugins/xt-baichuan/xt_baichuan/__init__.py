"""xt-baichuan: Native Baichuan2 (7B RoPE, 13B ALiBi) models, tokenizer, presets and templates for xt."""
