"""xt-lmeval: ``xt eval`` on lm-evaluation-harness, with the run's own chat template framing every prompt."""
