"""odelab entry point: ``python run.py experiment=<name> [overrides]`` (``--help`` lists them)."""

from odelab.train import main

if __name__ == "__main__":
    main()
