"""`python -m jobs ...` is `tide ...` (for environments where the console script is not installed)."""
import sys

from jobs.cli import main

sys.exit(main())
