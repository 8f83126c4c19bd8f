"""`python -m console ...` is `canary-console ...` (for `python -X importtime -m console ... rollback`)."""

import sys

from console.commands.cli import main

sys.exit(main())
