"""`python -m appliance.cli`: the same as `rdr`."""

import sys

from .app import main

sys.exit(main())
