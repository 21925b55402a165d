#!/usr/bin/env python3
"""Requests the README sends, each valid against its operation's request schema in the
document. (schemathesis takes a 422 to a schema-valid request as a business refusal, so a
request schema in a shape the server never takes would pass it: this catches that.)

Usage: requests_valid.py BASE_URL (a running server). Needs jsonschema_rs (schemathesis's)."""
import json
import sys
import urllib.request

import jsonschema_rs

base = sys.argv[1].rstrip("/")
with urllib.request.urlopen(f"{base}/openapi.json") as res:
    doc = json.load(res)

EVENT = {"id": "evt-1", "account": "acme", "type": "api.request",
         "timestamp": "2026-11-25T12:00:00Z", "properties": {"tokens": 1200}}
CLOUDEVENT = {"specversion": "1.0", "id": "ce-1", "source": "https://api.example.com",
              "type": "api.request", "subject": "acme", "time": "2026-11-25T12:00:00Z",
              "datacontenttype": "application/json", "data": {"tokens": 10}}
GOOD = [
    ("post", "/v1/events", "application/json", EVENT),
    ("post", "/v1/events", "application/json", {"id": "evt-2", "account": "acme", "type": "api.request"}),
    ("post", "/v1/events", "application/json", {"events": [EVENT, {"id": "x"}]}),
    ("post", "/v1/events", "application/cloudevents+json", CLOUDEVENT),
    ("post", "/v1/events", "application/cloudevents-batch+json", [CLOUDEVENT]),
    ("post", "/v1/integrations/segment", "application/json",
     {"type": "track", "messageId": "m-1", "event": "API Call", "context": {"groupId": "acme"},
      "properties": {"tokens": 3}, "timestamp": "2026-11-25T12:00:00Z", "userId": "u-1"}),
    ("post", "/v1/integrations/segment", "application/json", {"type": "identify", "userId": "u-1"}),
    ("put", "/v1/accounts/{account}", "application/json",
     {"name": "Acme", "email": "billing@acme.test", "employees": 40, "industry": "software",
      "country": "DE", "crm_owner": None}),
    ("patch", "/v1/accounts/{account}", "application/json", {"crm_owner": "dana"}),
    ("post", "/v1/accounts/{account}/subscription", "application/json", {"plan": "team", "seats": 5}),
    ("post", "/v1/accounts/{account}/subscription", "application/json", {"plan": "team@2", "trial": True}),
    ("post", "/v1/accounts/{account}/subscription/quotes", "application/json", {"seats": 8}),
    ("post", "/v1/accounts/{account}/subscription/quotes", "application/json",
     {"plan": "business", "effective": "period_end"}),
    ("post", "/v1/accounts/{account}/subscription/quotes", "application/json", {"cancel": True}),
    ("post", "/v1/accounts/{account}/check", "application/json", {"meter": "api_calls", "quantity": "5"}),
    ("post", "/v1/accounts/{account}/check", "application/json", {"meter": "api_calls", "quantity": 5}),
    ("post", "/v1/accounts/{account}/check", "application/json", {"feature": "sso"}),
    ("put", "/v1/accounts/{account}/payment-method", "application/json", {"payment_method": "pm_card_visa"}),
    ("post", "/v1/invoices/{number}/pay", "application/json",
     {"amount": "83.00", "paid_at": "2026-12-01T09:00:00Z", "reference": "BANK-1"}),
    ("post", "/v1/invoices/{number}/void", "application/json", {"reason": "duplicate"}),
    ("post", "/v1/test-clocks", "application/json", {"frozen_time": "2027-03-01T10:15:00Z", "name": "march"}),
    ("post", "/v1/test-clocks/{id}/advance", "application/json", {"frozen_time": "2027-04-20T00:00:00Z"}),
    ("post", "/v1/webhook-endpoints", "application/json",
     {"url": "https://hooks.example.com/accrue", "kinds": ["revenue.movement"]}),
    ("patch", "/v1/webhook-endpoints/{id}", "application/json", {"enabled": False}),
    ("post", "/v1/plans/publish", "application/json", {"files": {"team/v3.toml": "name = \"Team\""}}),
]

failures = []
for method, path, kind, body in GOOD:
    op = doc["paths"][path][method]
    schema = op["requestBody"]["content"][kind]["schema"]
    root = dict(schema)
    root["components"] = doc["components"]
    errors = [e.message for e in jsonschema_rs.validator_for(root).iter_errors(body)]
    if errors:
        failures.append(f"{method.upper()} {path} ({kind}) {json.dumps(body)[:120]}: {errors[:3]}")
if failures:
    sys.exit("requests the README sends do not fit the document:\n" + "\n".join(failures))
print(f"{len(GOOD)} known-good requests fit their operations' schemas")
