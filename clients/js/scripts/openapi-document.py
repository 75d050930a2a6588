"""Print the service's OpenAPI document as JSON, as GET /api/openapi.json serves it with the
defaults of development settings (run by scripts/gen-types.mjs with the repository's venv)."""

import json
import sys

from kpi_service.config import Settings
from kpi_service.web.openapi import build_spec

document = build_spec(
    Settings.from_env({}, jwt_secret_key="x" * 32, database_url="postgresql://unused", env="development")
)
json.dump(document, sys.stdout, indent=1, sort_keys=True)
