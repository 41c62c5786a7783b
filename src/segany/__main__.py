"""``python -m segany``: the same command line as the ``segany`` script (also under ``torchrun -m segany``)."""

from segany.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
