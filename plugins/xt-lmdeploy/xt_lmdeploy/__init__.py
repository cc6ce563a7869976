"""xt-lmdeploy: export xt runs for serving with LMDeploy (TurboMind / PyTorch engine).

lmdeploy itself is optional: without it the exporter routes with a built-in copy of LMDeploy 0.18's
support tables, and ``xt chat --backend lmdeploy`` says plainly that it needs lmdeploy and CUDA.
"""
