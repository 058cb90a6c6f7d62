"""`python -m provisioning`: see provisioning.cli."""

import sys

from .cli import main

sys.exit(main())
