"""Production entry point: gunicorn wsgi:app"""

import sys

from kpi_service import ConfigError, create_app

try:
    app = create_app()
except ConfigError as error:
    sys.exit(f"kpi-service: {error}")
