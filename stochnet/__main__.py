"""``python -m stochnet ...`` (also under ``torchrun -m stochnet``): the command-line driver."""
from stochnet.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
