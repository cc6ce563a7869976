"""``python -m xt.train.torchrun``: torchrun, with one line instead of a traceback when a worker fails.

The workers print their own one-line error; this names the rank that failed first and its exit code.
"""

from __future__ import annotations

import sys


def main() -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    try:
        run(get_args_parser().parse_args())
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        print(f"xt train: process rank {rank} stopped first (exit code {failure.exitcode}); the other processes "
              f"were ended. Its message is above.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
