"""``XtLM``: an lm-eval model that frames every request with the run's chat template.

The context of a request becomes the user turn (``template.encode_prompt``, the same prompt ids as
``xt chat`` and the in-training eval); a continuation is scored as the reply. Generation goes
through ``xt.generation.generate_batch`` (batched, greedy, stopping at the template's end).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from lm_eval.api.model import LM
from xt.api import XtError


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class XtLM(LM):
    def __init__(self, chat_model: Any, *, batch_size: int, max_new_tokens: int) -> None:
        super().__init__()
        self.model = chat_model.model
        self.tokenizer = chat_model.tokenizer
        self.template = chat_model.template
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self._prompts: dict[str, list[int]] = {}

    def prompt_ids(self, context: str) -> list[int]:
        if context not in self._prompts:
            messages = [{"role": "user", "content": context}]
            self._prompts[context] = self.template.encode_prompt(messages, self.tokenizer)
        return self._prompts[context]

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [(self.prompt_ids(context), self.tokenizer.encode(continuation, add_special_tokens=False))
                 for context, continuation in (request.args for request in requests)]
        results: list[tuple[float, bool]] = []
        for batch in chunks(pairs, self.batch_size):
            results += self.score(batch)
        return results

    def score(self, batch: Sequence[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """Sum of log-probabilities of each continuation after its prompt, and whether it is the greedy one."""
        import torch
        from xt.api import preserved_training_state

        rows = [prompt + continuation for prompt, continuation in batch]
        width = max(len(row) for row in rows)
        pad = self.tokenizer.pad_token_id or 0
        device = next(self.model.parameters()).device
        input_ids = torch.tensor([row + [pad] * (width - len(row)) for row in rows], device=device)
        attention_mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows], device=device)
        with preserved_training_state(self.model):
            logprobs = torch.log_softmax(self.model(input_ids=input_ids, attention_mask=attention_mask).logits.float(), -1)
        results = []
        for i, (prompt, continuation) in enumerate(batch):
            positions = torch.arange(len(prompt) - 1, len(prompt) + len(continuation) - 1, device=device)
            target = torch.tensor(continuation, device=device)
            picked = logprobs[i, positions]
            results.append((float(picked.gather(-1, target[:, None]).sum()), bool((picked.argmax(-1) == target).all())))
        return results

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        raise XtError("xt eval frames every request with a chat template, so perplexity (loglikelihood_rolling) "
                      "tasks such as wikitext are not supported; choose multiple-choice or generation tasks.")

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        from xt.api import generate_batch

        replies: list[str | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for index, request in enumerate(requests):
            kwargs = request.args[1]
            until = kwargs.get("until") or []
            key = (tuple([until] if isinstance(until, str) else until), int(kwargs.get("max_gen_toks", self.max_new_tokens)))
            groups.setdefault(key, []).append(index)
        for (until, max_new_tokens), indices in groups.items():
            for batch in chunks(indices, self.batch_size):
                conversations = [[{"role": "user", "content": requests[i].args[0]}] for i in batch]
                texts = generate_batch(self.model, self.tokenizer, self.template, conversations,
                                       max_new_tokens=max_new_tokens, stop_words=until)
                for i, text in zip(batch, texts):
                    replies[i] = text
        return [reply or "" for reply in replies]
