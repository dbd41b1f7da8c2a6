"""``python -m kdjax.report WORKDIR [WORKDIR ...]``."""
import sys

from kdjax.report import main

sys.exit(main())
