#!/usr/bin/env python3
"""The reference page (`/docs`) renders in headless Chromium from what accrue serves alone:
the page's Content-Security-Policy lets it load nothing from elsewhere, and every operation of
`/openapi.json` shows as a section of the rendered page.

Usage: docs_in_browser.py BASE_URL (a running server)."""
import json
import re
import shutil
import subprocess
import sys
import urllib.request

base = sys.argv[1].rstrip("/")
chromium = shutil.which("chromium") or shutil.which("chromium-browser")
if not chromium:
    sys.exit("chromium is needed (Debian: apt-get install chromium)")
with urllib.request.urlopen(f"{base}/docs") as res:
    csp = res.headers.get("Content-Security-Policy", "")
assert "default-src 'self'" in csp, f"the page is fenced to accrue: {csp!r}"
with urllib.request.urlopen(f"{base}/openapi.json") as res:
    doc = json.load(res)
operations = {
    op["operationId"]
    for item in doc["paths"].values()
    for method, op in item.items()
    if method in ("get", "post", "put", "patch", "delete")
}
dom = subprocess.run(
    [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=20000",
     "--dump-dom", f"{base}/docs"],
    capture_output=True, text=True, timeout=120, check=True,
).stdout
rendered = set(re.findall(r'data-section-id="operation/([^"]+)"', dom))
missing = sorted(operations - rendered)
assert not missing, f"operations not rendered: {missing}"
title = re.search(r"<h1[^>]*>([^<]*)", dom)
assert title and title.group(1).startswith("accrue"), "the document's title is the page's"
print(f"/docs renders all {len(operations)} operations in Chromium, fenced by its CSP")
