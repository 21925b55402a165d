#!/usr/bin/env python3
"""The reference page (`/docs`) renders in headless Chromium from what accrue serves alone:
the page's Content-Security-Policy lets it load nothing from elsewhere, and every operation of
`/openapi.json` shows as a section of the rendered page.

Usage: docs_in_browser.py BASE_URL (a running server)."""
import json
import os
import re
import signal
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
# Its own session, so a timeout kills the renderer and zygote children too.
proc = subprocess.Popen(
    [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
     "--virtual-time-budget=30000", "--dump-dom", f"{base}/docs"],
    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
)
try:
    dom, _ = proc.communicate(timeout=120)
except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    sys.exit("chromium did not render /docs within 120 s")
assert proc.returncode == 0, f"chromium exited {proc.returncode}"
rendered = set(re.findall(r'data-section-id="operation/([^"]+)"', dom))
missing = sorted(operations - rendered)
assert not missing, f"operations not rendered: {missing}"
title = re.search(r"<h1[^>]*>([^<]*)", dom)
assert title and title.group(1).startswith("accrue"), "the document's title is the page's"
print(f"/docs renders all {len(operations)} operations in Chromium, fenced by its CSP")
