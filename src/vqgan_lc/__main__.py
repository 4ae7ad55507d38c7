"""`python -m vqgan_lc` is the `vqgan-lc` command."""
import sys

from .cli import main

sys.exit(main())
