"""Evaluates Tollgate features through the OpenFeature Python SDK and its OFREP provider,
as a product service would, and prints what it got as JSON (read by ofrep_with_the_openfeature_sdk.rs)."""
import json
import sys

from openfeature import api
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext

edge, account = sys.argv[1], sys.argv[2]
api.set_provider(OFREPProvider(base_url=edge))
client = api.get_client()
ctx = EvaluationContext(targeting_key=account)


def details(d):
    return {
        "value": d.value,
        "reason": str(d.reason.value if hasattr(d.reason, "value") else d.reason),
        "variant": d.variant,
        "error_code": str(d.error_code.value) if d.error_code else None,
        "metadata": dict(d.flag_metadata or {}),
    }


out = {
    "sso": details(client.get_boolean_details("sso", False, ctx)),
    "exports": details(client.get_boolean_details("exports", False, ctx)),
    "seats": details(client.get_integer_details("seats", -5, ctx)),
    "unknown_flag": details(client.get_boolean_details("teleport", False, ctx)),
    "no_targeting_key": details(client.get_boolean_details("sso", True, EvaluationContext())),
    "bad_targeting_key": details(client.get_boolean_details("sso", True, EvaluationContext(targeting_key="nope"))),
}
print(json.dumps(out))
