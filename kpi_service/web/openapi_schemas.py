"""For the OpenAPI document only: the response bodies as marshmallow schemas, and the security
schemes and errors every path shares. The service builds its bodies in serving/responses.py;
tests/test_openapi_conformance.py checks real ones against these."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from kpi_service.db.targets import WINDOW_LENGTHS
from kpi_service.serving.responses import KpiValuesSchema
from kpi_service.serving.windows import COMPARISONS, INTERVALS

BEARER = "bearerAuth"
TICKET = "streamTicket"

# The error responses every path shares: status -> (component name, description).
ERRORS = {
    "400": ("BadRequest", "Bad parameters: unknown, repeated or malformed, `from` after `to`, unknown zone."),
    "401": ("Unauthorized", "Missing, malformed, expired or badly signed token."),
    "404": ("NotFound", "Unknown route."),
    "500": ("InternalError", "Unexpected failure; never a stack trace."),
    "503": (
        "Unavailable",
        "Nothing is cached for the window and the database cannot compute it: unreachable, busy (every "
        "pooled connection in use; `Retry-After` says when to ask again) or not initialized (no KPI schema). "
        "The dashboard then falls back to its own calculation.",
    ),
}


class WindowSchema(Schema):
    from_ = fields.Date(data_key="from", required=True, allow_none=True)
    to = fields.Date(required=True, allow_none=True)
    tz = fields.String(required=True)
    aged_days = fields.Integer(required=True)
    interval = fields.String(validate=validate.OneOf(INTERVALS), metadata={"description": "History only."})
    compare = fields.String(validate=validate.OneOf(COMPARISONS), metadata={"description": "When asked for."})


# The response schemas document the bodies (OpenAPI); every key the service always sends is
# required so that a conformance check of real responses means something.
class MetaSchema(Schema):
    computed_at = fields.DateTime(required=True, metadata={"description": "When the SQL ran (UTC)."})
    cached = fields.Boolean(required=True, metadata={"description": "The response came from the cache."})
    stale = fields.Boolean(
        required=True, metadata={"description": "Older than the TTL; served because the database failed."}
    )
    duration_ms = fields.Float(required=True, metadata={"description": "How long the SQL took."})
    window = fields.Nested(WindowSchema, required=True)
    pending_changes = fields.Integer(
        required=True,
        validate=validate.Range(min=0),
        metadata={
            "description": "Rows of the database's change log that the summaries had not taken in when the "
            "value was computed: 0 when it includes every write committed before `computed_at`. A value "
            "with rows pending is fresh for about one applier interval, and replaced once they are applied."
        },
    )
    includes_commits_before = fields.DateTime(
        required=True,
        allow_none=True,
        metadata={
            "description": "Every write committed before this instant (UTC) is in the numbers: `computed_at` "
            "when nothing was pending, else when the applier last found the change log empty; null while that "
            "is not known (no applier has reported since Redis was emptied or the process started)."
        },
    )
    source = fields.String(
        validate=validate.OneOf(("replica", "primary")),
        metadata={
            "description": "Which database computed the value; only when a read replica is configured "
            "(DATABASE_READ_URL): `primary` while the replica is down or lags."
        },
    )


class ChangeSchema(Schema):
    absolute = fields.Float(
        required=True, metadata={"description": "The window's number less the compared window's (exact)."}
    )
    percent = fields.Float(
        required=True,
        allow_none=True,
        metadata={
            "description": "`absolute` in percent of the compared number's size, 2 decimals; null where it is 0."
        },
    )


# Per KPI, its change against the compared window: one field per KPI of KpiValuesSchema.
ChangesSchema = Schema.from_dict(
    {name: fields.Nested(ChangeSchema, required=True) for name in KpiValuesSchema().fields}, name="ChangesSchema"
)


class ComparisonSchema(Schema):
    compare = fields.String(required=True, validate=validate.OneOf(COMPARISONS))
    from_ = fields.Date(data_key="from", required=True, metadata={"description": "First compared day (inclusive)."})
    to = fields.Date(required=True, metadata={"description": "Last compared day (inclusive)."})
    metrics = fields.Nested(KpiValuesSchema, required=True)
    change = fields.Nested(ChangesSchema, required=True)


class TargetSchema(Schema):
    value = fields.Float(required=True, metadata={"description": "The owner's target (kpi-service target set)."})
    window = fields.String(
        required=True,
        validate=validate.OneOf(WINDOW_LENGTHS),
        metadata={"description": "The window length it was set for: `any`, `daily` or `monthly`."},
    )
    met = fields.Boolean(
        required=True,
        metadata={"description": "The window's number is at least the target, or at most it where lower is better."},
    )


class KpiResponseSchema(Schema):
    metrics = fields.Nested(KpiValuesSchema, required=True)
    targets = fields.Dict(
        required=True,
        keys=fields.String(validate=validate.OneOf(tuple(KpiValuesSchema().fields))),
        values=fields.Nested(TargetSchema),
        metadata={
            "description": 'The owner\'s target of each KPI that has one for this window (docs/kpis.md, "Targets"); '
            "an empty object when none is set. Put in as the value is served: a target change computes nothing."
        },
    )
    comparison = fields.Nested(
        ComparisonSchema,
        metadata={
            "description": "Only with `compare`: the compared window, its KPIs and each KPI's change "
            '(docs/kpis.md, "Comparison").'
        },
    )
    success = fields.Boolean(required=True)
    message = fields.String(required=True, allow_none=True)
    meta = fields.Nested(MetaSchema, required=True)


class BucketSchema(Schema):
    start = fields.Date(required=True, metadata={"description": "First day of the bucket (inclusive)."})
    end = fields.Date(required=True, metadata={"description": "Last day of the bucket (inclusive)."})
    metrics = fields.Nested(KpiValuesSchema, required=True)


class HistoryResponseSchema(Schema):
    series = fields.List(fields.Nested(BucketSchema), required=True)
    success = fields.Boolean(required=True)
    message = fields.String(required=True, allow_none=True)
    meta = fields.Nested(MetaSchema, required=True)


class ErrorSchema(Schema):
    metrics = fields.Raw(required=True, allow_none=True, metadata={"description": "Always null."})
    success = fields.Boolean(required=True, metadata={"description": "Always false."})
    message = fields.String(required=True, metadata={"description": "Human-readable reason."})
    errors = fields.Dict(
        keys=fields.String(),
        values=fields.List(fields.String()),
        metadata={"description": "Per-parameter problems, only where there are any."},
    )


class StreamTicketSchema(Schema):
    ticket = fields.String(
        required=True, metadata={"description": "Opaque; opens one GET /api/kpi/stream as its `ticket` parameter."}
    )
    expires_in = fields.Integer(
        required=True, metadata={"description": "Seconds the ticket is valid: 30, less when the token expires sooner."}
    )
