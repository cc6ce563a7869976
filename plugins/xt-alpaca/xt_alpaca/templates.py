"""The templates of xt-alpaca: the Stanford Alpaca prompt and the demo's compact framing."""

from __future__ import annotations

from xt.api import BOS, EOS, TemplateSpec

from xt_alpaca.maps import PREAMBLE_NO_INPUT


def alpaca_template() -> TemplateSpec:
    """Stanford Alpaca: preamble, ``### Instruction:``, ``### Response:``; replies end with EOS.

    A conversation with no system message gets the no-input preamble; the Alpaca map puts the
    with-input preamble (and the ``### Input:`` section) in rows that have an input. Later turns
    repeat the instruction/response blocks, separated by a blank line.
    """
    return TemplateSpec(
        name="alpaca",
        aliases=("stanford-alpaca",),
        description="Stanford Alpaca prompt ('Below is an instruction that describes a task...', "
                    "### Instruction / ### Input / ### Response); works with any model.",
        prefix=(BOS,),
        system="{system}\n\n",
        user="### Instruction:\n{content}\n\n### Response:\n",
        assistant="{content}",
        assistant_end=(EOS,),
        turn_sep="\n\n",
        default_system=PREAMBLE_NO_INPUT,
    )


def demo_template() -> TemplateSpec:
    """The compact framing of the offline demo: a few tokens instead of a 30-word preamble."""
    return TemplateSpec(
        name="alpaca-demo",
        aliases=("alpaca-compact",),
        description="Compact Alpaca-style framing ('Instruction: ...' / 'Response:'), used by the alpaca-demo "
                    "dataset so a tiny model spends its compute on the task, not the preamble.",
        prefix=(BOS,),
        system="{system}\n",
        user="Instruction: {content}\nResponse:\n",
        assistant="{content}",
        assistant_end=(EOS,),
        turn_sep="\n",
    )
