"""Schemathesis hooks of the API contract test (node/tests/e2e/api_contract.rs): WHIP and
WHEP take SDP offers, which are text; schemathesis knows no serializer for application/sdp."""
import schemathesis

schemathesis.serializer.alias("application/sdp", "text/plain")
