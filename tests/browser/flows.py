"""The portal and the console as their users use them, in headless Chromium.

flows.py BASE ADMIN_KEY          a company made here through the API: portal upgrade, seats,
                                 cancel; tampered and cross-account links; console sign-in,
                                 refusals, invoice CSV.
flows.py --demo BASE ADMIN_KEY   `accrue demo`'s company: console MRR/NRR against the API, an
                                 invoice's lineage, and the screenshots.

Every page visited is checked with axe-core (ACCRUE_AXE): no serious or critical violation.
Amounts are compared as decimals between what a page shows and what the API answers.
"""

import csv
import io
import json
import os
import re
import sys
import urllib.error
import urllib.request
from decimal import Decimal

from playwright.sync_api import sync_playwright

AXE = open(os.environ["ACCRUE_AXE"], encoding="utf-8").read()
SHOTS = os.environ.get("ACCRUE_SCREENSHOTS", "target/screenshots")
CHROMIUM = os.environ.get("ACCRUE_CHROMIUM", "/usr/bin/chromium")


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def api(base, key, method, path, body=None, expect=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {key}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    if expect is not None and status != expect:
        fail(f"{method} {path} answered {status}, expected {expect}: {raw[:400]!r}")
    return status, (json.loads(raw) if raw else None)


def amount(text):
    """`$1,234.50` or `−$12.00` as a Decimal."""
    t = text.strip().replace(",", "").replace("\u2212", "-")
    m = re.fullmatch(r"(-?)[$€£¥]?(\d+(?:\.\d+)?)(?: [A-Z]{3})?", t)
    check(m is not None, f"not an amount: {text!r}")
    return Decimal(m.group(1) + m.group(2))


def axe(page, what):
    page.add_script_tag(content=AXE)
    found = page.evaluate(
        """async () => {
            const r = await axe.run(document, {resultTypes: ['violations']});
            return r.violations
              .filter(v => v.impact === 'serious' || v.impact === 'critical')
              .map(v => ({id: v.id, impact: v.impact, help: v.help,
                          nodes: v.nodes.slice(0, 3).map(n => n.target.join(' '))}));
        }"""
    )
    check(not found, f"axe found serious/critical violations on {what}: {json.dumps(found, indent=1)}")


def new_context(browser, width=1280):
    # The pages allow no script; axe is injected by the test, so the context bypasses the CSP
    # (the CSP itself is asserted on the responses).
    return browser.new_context(viewport={"width": width, "height": 900}, bypass_csp=True)


def portal_link(base, key, account, expect=201):
    _, body = api(base, key, "POST", "/v1/portal-sessions",
                  {"account": account, "return_url": "https://app.example.com/billing"}, expect)
    return body


def company(base, admin):
    """A company made through the API: acme (Team, 5 seats, some usage) and globex."""
    api(base, admin, "PUT", "/v1/accounts/acme",
        {"name": "Acme Inc", "email": "billing@acme.test", "employees": 40, "industry": "software",
         "country": "DE", "crm_owner": None}, 201)
    api(base, admin, "POST", "/v1/accounts/acme/subscription", {"plan": "team", "seats": 5}, 201)
    api(base, admin, "PUT", "/v1/accounts/globex",
        {"name": "Globex Secret Corp", "email": "ap@globex.test", "employees": 300,
         "industry": "energy", "country": "US", "crm_owner": "dana"}, 201)
    api(base, admin, "POST", "/v1/accounts/globex/subscription", {"plan": "business", "seats": 12}, 201)
    events = [{"id": f"acme-{i}", "account": "acme", "type": "api.request", "properties": {}}
              for i in range(1234)]
    events.append({"id": "acme-storage", "account": "acme", "type": "storage.snapshot",
                   "properties": {"gb": 42}})
    for i in range(0, len(events), 1000):
        api(base, admin, "POST", "/v1/events", {"events": events[i:i + 1000]}, 200)


def quote_and_confirm(page, base, admin, button, what):
    """Clicks `button`, reads the quote page's amount, confirms, and returns (amount shown,
    the invoice the API issued for it or None)."""
    button.click()
    page.wait_for_url(re.compile(r"/portal/quotes/q_"))
    axe(page, f"the portal's quote page ({what})")
    shown = amount(page.locator("#amount-due").inner_text())
    page.get_by_role("button", name="Confirm").click()
    page.wait_for_url(re.compile(r"/portal\?done=changed"))
    check("Your subscription has changed." in page.content(), f"{what}: no confirmation shown")
    m = re.search(r"invoice=(\d+)", page.url)
    invoice = None
    if m:
        _, invoice = api(base, admin, "GET", f"/v1/invoices/{m.group(1)}", expect=200)
    return shown, invoice


def portal_flows(browser, base, admin):
    link = portal_link(base, admin, "acme")
    check(link["url"].startswith(base + "/portal/open/pls_"), f"unexpected portal URL {link['url']}")
    ctx = new_context(browser)
    page = ctx.new_page()
    res = page.goto(link["url"])
    check(res.ok and page.url == base + "/portal", f"opening the link landed on {page.url}")
    csp = res.headers.get("content-security-policy", "")
    check("default-src 'none'" in csp and "form-action 'self'" in csp, f"portal CSP: {csp!r}")
    cookie = next(c for c in ctx.cookies() if c["name"] == "accrue_portal")
    check(cookie["httpOnly"] and cookie["sameSite"] == "Lax", f"portal cookie flags: {cookie}")
    axe(page, "the portal")

    # Usage as the API counts it, shown against the plan's limit.
    _, sub = api(base, admin, "GET", "/v1/accounts/acme/subscription", expect=200)
    start, end = sub["current_period"]["start"], sub["current_period"]["end"]
    _, use = api(base, admin, "GET", f"/v1/accounts/acme/usage?from={start}&to={end}", expect=200)
    api_calls = next(m for m in use["meters"] if m["meter"] == "api_calls")
    check(api_calls["value"] == "1235" or api_calls["value"] == "1234",
          f"the API counts {api_calls['value']} api calls")
    usage_text = page.locator("#usage-h").locator("xpath=..").inner_text()
    want = f"{int(api_calls['value']):,} of 5,000,000"
    check(want in usage_text, f"portal usage shows no {want!r}: {usage_text!r}")
    check("42 of 500" in usage_text, f"portal usage shows no storage 42 of 500: {usage_text!r}")
    check("Hard limit" in usage_text and "Soft limit" in usage_text, "limit meanings not explained")
    # The upcoming invoice is the API's.
    _, upcoming = api(base, admin, "GET", "/v1/accounts/acme/upcoming-invoice", expect=200)
    check(amount(page.locator("#upcoming-total").inner_text()) == Decimal(upcoming["total"]),
          "the portal's next invoice differs from GET /upcoming-invoice")

    # A bigger plan: the amount shown is the change invoice's total, to the cent.
    shown, inv = quote_and_confirm(page, base, admin,
                                   page.get_by_role("button", name="Choose Business", exact=True),
                                   "upgrade to Business")
    _, sub = api(base, admin, "GET", "/v1/accounts/acme/subscription", expect=200)
    check(sub["plan"] == "business", f"after the upgrade the API shows plan {sub['plan']}")
    check(inv is not None and inv["kind"] == "change", f"the upgrade issued no change invoice: {inv}")
    check(Decimal(inv["total"]) == shown,
          f"the page showed {shown} due now, the change invoice totals {inv['total']}")
    check(shown > 0, f"an upgrade from Team to Business should cost something now, showed {shown}")
    print(f"upgrade: page showed {shown}, invoice #{inv['number']} totals {inv['total']}")

    # More seats.
    # Beyond the seats Business includes, so the change costs something now.
    want_seats = max(sub["seats"] + 3, 15)
    page.get_by_role("spinbutton", name="Number of seats").fill(str(want_seats))
    shown, inv = quote_and_confirm(page, base, admin,
                                   page.get_by_role("button", name="Review seat change"), "seats")
    _, after = api(base, admin, "GET", "/v1/accounts/acme/subscription", expect=200)
    check(after["seats"] == want_seats, f"seats are {after['seats']}, expected {want_seats}")
    check(inv is not None and Decimal(inv["total"]) == shown,
          f"seats: the page showed {shown}, the invoice is {inv and inv['total']}")
    print(f"seats: page showed {shown}, invoice #{inv['number']} totals {inv['total']}")

    # A printable invoice, the account's own.
    page.goto(f"{base}/portal/invoices/{inv['number']}")
    check(amount(page.locator("#invoice-total").inner_text()) == Decimal(inv["total"]),
          "the invoice page's total differs from the API's")
    axe(page, "the portal's invoice page")

    # Cancel: takes effect at the period end, nothing charged now.
    page.goto(base + "/portal")
    page.get_by_role("button", name="Cancel subscription").click()
    page.wait_for_url(re.compile(r"/portal/quotes/q_"))
    check(amount(page.locator("#amount-due").inner_text()) == 0, "a cancellation charges nothing now")
    page.get_by_role("button", name="Confirm").click()
    page.wait_for_url(re.compile(r"/portal\?done=changed"))
    _, sub = api(base, admin, "GET", "/v1/accounts/acme/subscription", expect=200)
    sc = sub["scheduled_change"]
    check(sc is not None and sc["cancel"] and sc["at"] == sub["current_period"]["end"],
          f"after cancelling, the scheduled change is {sc}")
    check("Your subscription ends on" in page.content(), "the portal does not say when it ends")
    axe(page, "the portal with a scheduled cancellation")

    # The session's cookie cannot post a form without the session's token.
    page.goto(base + "/portal")
    r = page.request.post(base + "/portal/quotes", form={"csrf": "forged", "seats": "40"})
    check(r.status == 403, f"a forged form token was answered {r.status}")
    r = page.request.post(base + "/portal/quotes", form={"seats": "40"})
    check(r.status in (400, 403), f"a form without a token was answered {r.status}")

    # Another account's invoice is not found from this session.
    _, globex_invoices = api(base, admin, "GET", "/v1/invoices?account=globex", expect=200)
    other = globex_invoices["data"][0]["number"]
    r = page.goto(f"{base}/portal/invoices/{other}")
    check(r.status == 404, f"acme's session opened globex's invoice: {r.status}")
    check("Globex" not in page.content() and "globex" not in page.content(),
          "acme's session shows something of globex")

    # Signing out ends the session.
    page.goto(base + "/portal")
    page.get_by_role("button", name="Sign out").click()
    r = page.goto(base + "/portal")
    check(r.status == 401 and "Acme" not in page.content(), "the portal still opens after signing out")
    ctx.close()

    # A link opens once; a tampered link shows nothing of any account.
    ctx = new_context(browser)
    page = ctx.new_page()
    link = portal_link(base, admin, "globex")
    tampered = link["url"][:-1] + ("0" if link["url"][-1] != "0" else "1")
    r = page.goto(tampered)
    check(r.status == 404, f"a tampered link answered {r.status}")
    body = page.content()
    check("Globex" not in body and "globex" not in body and "Acme" not in body,
          "a tampered link shows account data")
    axe(page, "the invalid-link page")
    r = page.goto(link["url"])
    check(r.ok and page.url == base + "/portal" and "Globex Secret Corp" in page.content(),
          "the real link does not open globex's portal")
    ctx.close()
    ctx = new_context(browser)
    r = ctx.new_page().goto(link["url"])
    check(r.status == 404, f"a link opened a second time answered {r.status}")
    ctx.close()

    ctx.close()


def scoped_key_refusals(base, admin, keys):
    """Portal links through the API: an account-scoped key reaches its own account only."""
    portal_link(base, keys["acme"], "globex", expect=404)
    portal_link(base, keys["acme"], "acme", expect=201)
    portal_link(base, keys["ingest"], "acme", expect=403)
    api(base, admin, "POST", "/v1/portal-sessions", {"account": "nobody"}, 404)
    api(base, admin, "POST", "/v1/portal-sessions",
        {"account": "acme", "return_url": "javascript:alert(1)"}, 422)


def console_sign_in(browser, base, key, expect_ok=True):
    ctx = new_context(browser)
    page = ctx.new_page()
    page.goto(base + "/console")
    check(page.url == base + "/console/sign-in", f"the console without a session went to {page.url}")
    axe(page, "the console's sign-in page")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    if expect_ok:
        check(page.url == base + "/console", f"signing in landed on {page.url}: {page.content()[:500]}")
        cookie = next(c for c in ctx.cookies() if c["name"] == "accrue_console")
        check(cookie["httpOnly"], f"console cookie flags: {cookie}")
    return ctx, page


def console_flows(browser, base, admin, keys):
    # Keys that may not open the console: billing only, bound to one account, unknown.
    for name in ("billing", "acme_finance", "unknown"):
        ctx, page = console_sign_in(browser, base, keys[name], expect_ok=False)
        check(page.url.endswith("/console/sign-in") and page.get_by_role("alert").count() == 1,
              f"the {name} key was not refused: {page.url}")
        page.goto(base + "/console/invoices")
        check(page.url.endswith("/console/sign-in"), f"the {name} key reached the invoices")
        ctx.close()
    ctx, page = console_sign_in(browser, base, keys["finance"])
    axe(page, "the console's revenue page")
    page.goto(base + "/console/invoices?account=acme")
    axe(page, "the console's invoices")
    _, listed = api(base, admin, "GET", "/v1/invoices?account=acme", expect=200)
    with page.expect_download() as d:
        page.get_by_role("link", name="Download CSV").click()
    rows = list(csv.DictReader(io.StringIO(open(d.value.path(), encoding="utf-8").read())))
    check([int(r["Number"]) for r in rows] == [i["number"] for i in listed["data"]],
          f"the CSV lists {[r['Number'] for r in rows]}, the API {[i['number'] for i in listed['data']]}")
    for r, i in zip(rows, listed["data"]):
        check(Decimal(r["Total"]) == Decimal(i["total"]) and r["Account"] == "acme",
              f"CSV row {r} differs from the API's invoice {i}")
    # Revoking the key ends its console session.
    _, listed_keys = api(base, admin, "GET", "/v1/keys?limit=100", expect=200)
    fid = next(k["id"] for k in listed_keys["data"] if k["name"] == "browser-finance")
    api(base, admin, "DELETE", f"/v1/keys/{fid}", expect=200)
    import time
    for _ in range(30):
        page.goto(base + "/console/invoices")
        if page.url.endswith("/console/sign-in"):
            break
        time.sleep(0.2)
    check(page.url.endswith("/console/sign-in"), "a revoked key's console session goes on")
    ctx.close()


def main_company(base, admin, keys):
    company(base, admin)
    scoped_key_refusals(base, admin, keys)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        portal_flows(browser, base, admin)
        console_flows(browser, base, admin, keys)
        browser.close()


def pct(v):
    return None if v is None else (Decimal(v) * 100).quantize(Decimal("0.1"))


def demo(base, admin):
    """`accrue demo`'s company: what finance sees equals the API's reports; screenshots."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        ctx, page = console_sign_in(browser, base, admin)
        # The range the page shows by default, asked of the API by the same months.
        rows_el = page.locator("table tbody tr")
        months = [rows_el.nth(i).locator("td").first.inner_text() for i in range(rows_el.count())]
        check(len(months) >= 5, f"the revenue table has {len(months)} months")
        first, last = months[0], months[-1]
        y, m = map(int, last.split("-"))
        end = f"{y + (m == 12)}-{1 if m == 12 else m + 1:02d}-01T00:00:00Z"
        _, nrr = api(base, admin, "GET",
                     f"/v1/reports/nrr?from={first}-01T00:00:00Z&to={end}&by=month", expect=200)
        windows = {w["from"][:7]: w for w in nrr["windows"] if w["currency"] == "USD"}
        for i in range(rows_el.count()):
            cells = [c.inner_text() for c in rows_el.nth(i).locator("td").all()]
            w = windows.get(cells[0])
            check(w is not None, f"the API has no window for {cells[0]}")
            check(amount(cells[1]) == Decimal(w["starting_mrr"]),
                  f"{cells[0]}: starting MRR {cells[1]} on the page, {w['starting_mrr']} in the API")
            for col, field in ((8, "nrr"), (9, "grr")):
                shown = None if cells[col] == "n/a" else Decimal(cells[col].rstrip(" %"))
                check(shown == pct(w[field]),
                      f"{cells[0]}: {field} {cells[col]} on the page, {w[field]} in the API")
            if i + 1 < rows_el.count():
                nxt = rows_el.nth(i + 1).locator("td").nth(1).inner_text()
                check(amount(cells[7]) == amount(nxt), f"{cells[0]} ends at {cells[7]}, the next month starts at {nxt}")
        latest = windows[months[-1]]
        check(pct(latest["nrr"]) == (None if page.locator("#nrr-latest").inner_text() == "n/a"
                                     else Decimal(page.locator("#nrr-latest").inner_text().rstrip(" %"))),
              "the NRR card differs from the API's")
        with page.expect_download() as d:
            page.get_by_role("link", name="Download CSV").click()
        rows = list(csv.DictReader(io.StringIO(open(d.value.path(), encoding="utf-8").read())))
        check([r["Month"] for r in rows] == months, "the revenue CSV has other months than the page")
        for r in rows:
            check(Decimal(r["Starting MRR"]) == Decimal(windows[r["Month"]]["starting_mrr"]),
                  f"revenue CSV row {r} differs from the API")
        axe(page, "the console's revenue page (demo)")
        page.screenshot(path=f"{SHOTS}/console-revenue.png", full_page=True)

        # An invoice's lineage down to the events, as the API gives it.
        invoices, after = [], ""
        while True:
            _, got = api(base, admin, "GET", f"/v1/invoices?limit=500{after}", expect=200)
            invoices += got["data"]
            if not got.get("next_cursor"):
                break
            after = f"&after={got['next_cursor']}"
        chosen = None
        for inv in reversed(invoices):
            if inv["kind"] != "period":
                continue
            _, lin = api(base, admin, "GET", f"/v1/invoices/{inv['number']}/lineage?limit=50", expect=200)
            if any(l["events"] for l in lin["lines"]):
                chosen = (inv, lin)
                break
        check(chosen is not None, "the demo has no period invoice with events")
        inv, lin = chosen
        page.goto(f"{base}/console/invoices?account={inv['account']}")
        page.get_by_role("link", name=str(inv["number"]), exact=True).click()
        page.wait_for_url(f"{base}/console/invoices/{inv['number']}")
        check(amount(page.locator("#invoice-total").inner_text()) == Decimal(inv["total"]),
              "the console's invoice total differs from the API's")
        text = page.content()
        for line in lin["lines"]:
            for e in line["events"]:
                check(e["id"] in text, f"event {e['id']} of line {line['line_no']} is not on the lineage page")
        axe(page, "the console's invoice lineage")
        page.screenshot(path=f"{SHOTS}/console-lineage.png", full_page=False)
        with page.expect_download() as d:
            page.get_by_role("link", name="Download events CSV").click()
        rows = list(csv.DictReader(io.StringIO(open(d.value.path(), encoding="utf-8").read())))
        # The CSV carries as many events as the API gives (1,000 a line) and says when there are more.
        _, full = api(base, admin, "GET", f"/v1/invoices/{inv['number']}/lineage?limit=1000", expect=200)
        listed = [r for r in rows if not r["Event id"].startswith("(more")]
        check(sorted(r["Event id"] for r in listed) == sorted(e["id"] for l in full["lines"] for e in l["events"]),
              "the lineage events CSV differs from the API's lineage")
        more = {r["Line"] for r in rows if r["Event id"].startswith("(more")}
        want = {str(l["line_no"]) for l in full["lines"]
                if l["events_truncated"] or (l["event_count"] or 0) > len(l["events"])}
        check(more == want, f"lines said to have more events: {more}, the API's: {want}")

        # The PQL queue is the API's, in its order; every other page passes axe.
        page.goto(base + "/console/pql")
        _, hot = api(base, admin, "GET", "/v1/pql?tier=hot&limit=500", expect=200)
        shown = [c.inner_text() for c in page.locator("table tbody tr td:first-child").all()]
        check(shown == [r["account"] for r in hot["data"]], f"the PQL page lists {shown[:5]}…, the API {hot['data'][:2]}…")
        check(len(shown) > 0, "the demo has no hot PQLs to show")
        axe(page, "the console's PQL queue")
        page.screenshot(path=f"{SHOTS}/console-pql.png", full_page=False)
        for path in ("/console/reconciliation", "/console/dunning", "/console/governance",
                     "/console/plans", "/console/plans/team", "/console/plans/team?from=1&to=2",
                     "/console/webhooks"):
            r = page.goto(base + path)
            check(r.status == 200, f"{path} answered {r.status}")
            axe(page, f"the console's {path}")
        ctx.close()

        # The portal of a paying demo account, on a laptop and on a phone.
        account = inv["account"]
        link = portal_link(base, admin, account)
        for width, name in ((1280, "portal"), (390, "portal-phone")):
            ctx = new_context(browser, width)
            page = ctx.new_page()
            if name == "portal-phone":
                link = portal_link(base, admin, account)
            page.goto(link["url"])
            check(page.url == base + "/portal", f"the demo portal link landed on {page.url}")
            axe(page, f"the portal at {width}px")
            page.screenshot(path=f"{SHOTS}/{name}.png", full_page=(width > 400))
            ctx.close()
        browser.close()


if __name__ == "__main__":
    if sys.argv[1] == "--demo":
        demo(sys.argv[2], sys.argv[3])
    else:
        main_company(sys.argv[1], sys.argv[2], json.loads(os.environ["ACCRUE_BROWSER_KEYS"]))
    print("ok")
