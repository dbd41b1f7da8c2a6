"""``python -m kdjax.plan --config=... --topology=...`` (see :mod:`kdjax.plan._main`)."""
import sys

from kdjax.plan._main import main

if __name__ == "__main__":
  sys.exit(main())
