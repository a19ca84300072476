"""`python -m fastctc ...`: the same as the `fastctc` console script (see cli.py)."""
import sys

from .cli import main

sys.exit(main())
