#!/usr/bin/env python3
"""Runs the README's commands as written, top to bottom, as a newcomer would, and fails when a
command fails or an answer's shape differs from the one the README shows.

Every ```sh block runs, in order, in one bash (`set -euo pipefail`, so a failing command or an
undefined variable stops it), from "Your first hour" (between `<!-- first-hour -->` and
`<!-- /first-hour -->`, which starts the server the later sections use) to the end. A block
right after a `<!-- readme-test: skip: <reason> -->` line is not run (the reason says why:
it needs Stripe, it is the test command itself, it takes minutes). It fails when a block
before the first hour's end is missing, so the walk cannot silently shrink. A ```json block right after an ```sh block is what that block prints: one JSON value per
line, compared with what it printed: the same keys, JSON types and list lengths, and the same
values, except ids (`clk_…`, `q_…`) and timestamps, which differ from run to run and are only
checked for their form (RFC 3339 UTC with milliseconds). Every `curl` fails its step on an
HTTP error answer (`--fail-with-body`: the answer is still printed).

Three things are the runner's own: the server listens on a free port (`localhost:8080` in the
commands becomes it), the database is a fresh one (the `export DATABASE_URL=` line is
replaced), dropped at the end, and files the commands write into the checkout (an export's
CSV) are removed at the end.

Usage: tests/readme/run.py [README.md]   (PostgreSQL from ACCRUE_TEST_PG or 127.0.0.1:5432)
"""
import json
import os
import re
import socket
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


SKIP = re.compile(r"<!-- readme-test: skip: [^>]+ -->\s*$")


def section(text):
    """The README from "Your first hour" on, and how many of its sh blocks belong to that hour."""
    m = re.search(r"<!-- first-hour -->(.*?)<!-- /first-hour -->", text, re.S)
    if not m:
        sys.exit("README: no <!-- first-hour --> ... <!-- /first-hour --> section")
    first = len(blocks(m.group(1)))
    return text[m.start():], first


def blocks(text):
    """[(sh text, shown json text or None)] in order, without those marked to skip."""
    fences = list(re.finditer(r"^```(\w*)\n(.*?)^```\s*$", text, re.S | re.M))
    out = []
    for i, f in enumerate(fences):
        if f.group(1) != "sh":
            continue
        if SKIP.search(text[:f.start()].rstrip("\n") + "\n"):
            continue
        shown = None
        if i + 1 < len(fences) and fences[i + 1].group(1) == "json":
            between = text[f.end():fences[i + 1].start()]
            if between.strip() == "":
                shown = fences[i + 1].group(2)
        out.append((f.group(2), shown))
    return out


def values(text):
    dec = json.JSONDecoder()
    vals, i = [], 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            return vals
        v, i = dec.raw_decode(text, i)
        vals.append(v)


ID = re.compile(r"^[a-z]{1,5}_[0-9a-f]{8,}$")
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def compare(want, got, path, diffs):
    """What differs between a shown value and a printed one (see the module docs)."""
    if shape(want) != shape(got) and not isinstance(want, (dict, list)):
        diffs.append(f"{path or '.'}: {json.dumps(got)} is not like {json.dumps(want)}")
    elif isinstance(want, dict):
        if set(want) != set(got if isinstance(got, dict) else {}):
            diffs.append(f"{path or '.'}: keys {sorted(got) if isinstance(got, dict) else got} "
                         f"instead of {sorted(want)}")
            return
        for k in want:
            compare(want[k], got[k], f"{path}.{k}", diffs)
    elif isinstance(want, list):
        if not isinstance(got, list) or len(want) != len(got):
            diffs.append(f"{path or '.'}: {len(got) if isinstance(got, list) else got} items "
                         f"instead of {len(want)}")
            return
        for i, (w, g) in enumerate(zip(want, got)):
            compare(w, g, f"{path}[{i}]", diffs)
    elif isinstance(want, str) and TIMESTAMP.match(want):
        if not TIMESTAMP.match(got):
            diffs.append(f"{path}: {got!r} is not an RFC 3339 UTC timestamp with milliseconds")
    elif isinstance(want, str) and ID.match(want):
        if not (isinstance(got, str) and got.split("_")[0] == want.split("_")[0]):
            diffs.append(f"{path}: {got!r} is not an id like {want!r}")
    elif want != got:
        diffs.append(f"{path}: {json.dumps(got)} instead of {json.dumps(want)}")


def shape(v):
    if isinstance(v, dict):
        return {k: shape(x) for k, x in v.items()}
    if isinstance(v, list):
        return [shape(x) for x in v]
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    if v is None:
        return "null"
    return "string"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    readme = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "README.md")
    text, first_hour = section(open(readme).read())
    steps = blocks(text)
    if first_hour == 0:
        sys.exit("README: the first-hour section has no ```sh blocks")
    before = set(os.listdir(ROOT))
    pg = os.environ.get("ACCRUE_TEST_PG", "postgres://postgres@127.0.0.1:5432")
    db = f"accrue_readme_{os.getpid()}"
    port = free_port()
    work = tempfile.mkdtemp(prefix="accrue-readme-")
    script = [
        "set -euo pipefail",
        "trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null || true' EXIT",
        # An HTTP error answer fails the step (a command that already says -f keeps its -f).
        'curl() { case " $* " in *" -f "*|*" -sf "*|*" -fs "*) command curl "$@";; '
        '*) command curl --fail-with-body "$@";; esac; }',
        f"export ACCRUE_BIND=127.0.0.1:{port}",
    ]
    for n, (sh, _) in enumerate(steps):
        sh = sh.replace("localhost:8080", f"127.0.0.1:{port}")
        sh = re.sub(r"^export DATABASE_URL=\S+$", f"export DATABASE_URL={pg}/{db}", sh, flags=re.M)
        script.append(f"echo '=== README step {n + 1}' >&2")
        script.append(f"{{\n{sh}\n}} > {work}/{n}.out")
    path = os.path.join(work, "readme.sh")
    open(path, "w").write("\n".join(script) + "\n")
    log_path = os.path.join(work, "stderr.log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(["bash", path], cwd=ROOT, stdout=log, stderr=log,
                                start_new_session=True)
        try:
            returncode = proc.wait(timeout=900)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            returncode = "timeout (900 s)"
    subprocess.run(["psql", f"{pg}/postgres", "-qc", f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'],
                   capture_output=True)
    for name in set(os.listdir(ROOT)) - before:
        if os.path.isfile(os.path.join(ROOT, name)):
            os.remove(os.path.join(ROOT, name))
    problems = []
    log = open(log_path).read()
    if returncode != 0:
        done = re.findall(r"=== README step (\d+)", log)
        n = int(done[-1]) if done else 1
        problems.append(f"step {n} failed (exit {returncode}):\n{steps[n - 1][0]}")
    for n, (sh, shown) in enumerate(steps):
        out_path = os.path.join(work, f"{n}.out")
        if shown is None or not os.path.exists(out_path):
            continue
        got_text = open(out_path).read()
        try:
            want, got = values(shown), values(got_text)
        except json.JSONDecodeError as e:
            problems.append(f"step {n + 1}: its output is not the JSON shown ({e}):\n{got_text}")
            continue
        if len(want) != len(got):
            problems.append(f"step {n + 1}: printed {len(got)} JSON values, the README shows {len(want)}:\n{got_text}")
            continue
        for w, g in zip(want, got):
            diffs = []
            compare(w, g, "", diffs)
            if diffs:
                problems.append(
                    f"step {n + 1}: the answer differs from the README's ({'; '.join(diffs)})\n"
                    f"  README: {json.dumps(w)}\n  got:    {json.dumps(g)}")
    if problems:
        print("\n\n".join(problems))
        print(f"\n--- stderr of the run (also in {log_path}) ---\n{log[-6000:]}")
        sys.exit(1)
    print(f"README: {len(steps)} steps ran ({first_hour} of the first hour), "
          f"{sum(1 for _, s in steps if s)} answers are as shown")


if __name__ == "__main__":
    main()
