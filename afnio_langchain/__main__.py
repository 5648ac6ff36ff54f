"""``python -m afnio_langchain``: the ``afnio-langchain`` command line."""

import sys

from afnio_langchain.cli import main

if __name__ == "__main__":
    sys.exit(main())
