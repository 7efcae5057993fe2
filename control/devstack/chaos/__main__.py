"""`python -m control.devstack.chaos` is `flotilla chaos`."""

import sys

from control.cli.main import main

sys.exit(main(["chaos", *sys.argv[1:]]))
