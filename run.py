"""odelab entry point: ``python run.py experiment=<name> [overrides]`` (``--help`` lists them).

Exit status: 0 finished (or found finished in its output dir), 1 failed, 2 refused before any
work (unknown name, preflight), 130 Ctrl-C, 143 SIGTERM (a checkpoint was saved first).
"""

import sys

from odelab.train import main

if __name__ == "__main__":
    from odelab.utils.hints import unknown_choice_message

    unknown = unknown_choice_message(sys.argv[1:])
    if unknown:
        print(unknown, file=sys.stderr)
        sys.exit(2)
    try:
        main()
    except SystemExit as exit_:
        if exit_.code == 1:
            from odelab.utils.hints import unknown_key_hints

            for hint in unknown_key_hints(sys.argv[1:]):
                print(hint, file=sys.stderr)
        raise
