"""Production entry point: gunicorn wsgi:app"""

import sys

from kpi_service.app import create_app
from kpi_service.config import ConfigError

try:
    app = create_app()
except ConfigError as error:
    sys.exit(f"kpi-service: {error}")
