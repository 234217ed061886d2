"""`python -m tide ...` is `tide ...` (for environments where the console script is not installed)."""
import sys

from tide.cli import main

sys.exit(main())
