"""xt-lmdeploy: Export xt runs for serving with LMDeploy (TurboMind / PyTorch engine)."""
