"""``python -m xt_alpaca.demo_prompt [SEED [INDEX]]``: print one held-out prompt of alpaca-demo."""

from __future__ import annotations

import sys

from xt_alpaca.demo import DEFAULT_SEED, heldout_prompt


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    seed = int(args[0]) if args else DEFAULT_SEED
    index = int(args[1]) if len(args) > 1 else 0
    print(heldout_prompt(seed, index))


if __name__ == "__main__":
    main()
