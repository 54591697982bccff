"""`python -m mtlkit ...` and `torchrun -m mtlkit ...` entry point."""

from mtlkit.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
