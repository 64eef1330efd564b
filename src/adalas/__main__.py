"""`python -m adalas ...` (what `torchrun -m adalas train ...` runs)."""
import sys

from .cli import main

sys.exit(main())
