"""`python -m clients.cli`: the same as the `agentgw` console script."""

import sys

from clients.cli import main

sys.exit(main())
