"""odelab entry point: ``python run.py experiment=<name> [overrides]`` (``--help`` lists them)."""

import sys

from odelab.train import main

if __name__ == "__main__":
    try:
        main()
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            from odelab.utils.config import unknown_key_hints

            for hint in unknown_key_hints(sys.argv[1:]):
                print(hint, file=sys.stderr)
        raise
