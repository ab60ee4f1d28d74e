"""`python -m finlora`, which is what `torchrun -m finlora` runs."""

from finlora.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
