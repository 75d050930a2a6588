"""`python -m kpi_service.cli`: the kpi-service command without its installed script."""

import sys

from kpi_service.cli import main

sys.exit(main())
