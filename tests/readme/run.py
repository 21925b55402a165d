#!/usr/bin/env python3
"""Runs the README's "Your first hour" as written, as a newcomer would, and fails when a command
fails or an answer's shape differs from the one the README shows.

The section lies between `<!-- first-hour -->` and `<!-- /first-hour -->`. Its ```sh blocks run
in order in one bash (`set -euo pipefail`, so a failing command or an undefined variable stops
it). A ```json block right after an ```sh block is what that block prints: one JSON value per
line, compared with what it printed by shape (the same keys, the same JSON types, the same list
lengths), not by value (ids and times differ from run to run).

Two things are the runner's own: the server listens on a free port (`localhost:8080` in the
commands becomes it) and the database is a fresh one (the `export DATABASE_URL=` line is
replaced), dropped at the end.

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


def section(text):
    m = re.search(r"<!-- first-hour -->(.*?)<!-- /first-hour -->", text, re.S)
    if not m:
        sys.exit("README: no <!-- first-hour --> ... <!-- /first-hour --> section")
    return m.group(1)


def blocks(text):
    """[(sh text, shown json text or None)] in order."""
    fences = list(re.finditer(r"^```(\w*)\n(.*?)^```\s*$", text, re.S | re.M))
    out = []
    for i, f in enumerate(fences):
        if f.group(1) != "sh":
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
    steps = blocks(section(open(readme).read()))
    if not steps:
        sys.exit("README: the first-hour section has no ```sh blocks")
    pg = os.environ.get("ACCRUE_TEST_PG", "postgres://postgres@127.0.0.1:5432")
    db = f"accrue_readme_{os.getpid()}"
    port = free_port()
    work = tempfile.mkdtemp(prefix="accrue-readme-")
    script = [
        "set -euo pipefail",
        "trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null || true' EXIT",
        f"export ACCRUE_BIND=127.0.0.1:{port}",
    ]
    for n, (sh, _) in enumerate(steps):
        sh = sh.replace("localhost:8080", f"127.0.0.1:{port}")
        sh = re.sub(r"^export DATABASE_URL=\S+$", f"export DATABASE_URL={pg}/{db}", sh, flags=re.M)
        script.append(f"echo '=== README step {n + 1}' >&2")
        script.append(f"{{\n{sh}\n}} > {work}/{n}.out")
    path = os.path.join(work, "first-hour.sh")
    open(path, "w").write("\n".join(script) + "\n")
    log_path = os.path.join(work, "stderr.log")
    with open(log_path, "w") as log:
        run = subprocess.run(["bash", path], cwd=ROOT, stdout=log, stderr=log, timeout=1800)
    subprocess.run(["psql", f"{pg}/postgres", "-qc", f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'],
                   capture_output=True)
    problems = []
    log = open(log_path).read()
    if run.returncode != 0:
        done = re.findall(r"=== README step (\d+)", log)
        n = int(done[-1]) if done else 1
        problems.append(f"step {n} failed (exit {run.returncode}):\n{steps[n - 1][0]}")
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
            if shape(w) != shape(g):
                problems.append(
                    f"step {n + 1}: the answer differs in shape from the README's\n"
                    f"  README: {json.dumps(w)}\n  got:    {json.dumps(g)}")
    if problems:
        print("\n\n".join(problems))
        print(f"\n--- stderr of the run (also in {log_path}) ---\n{log[-6000:]}")
        sys.exit(1)
    print(f"README first hour: {len(steps)} steps ran, "
          f"{sum(1 for _, s in steps if s)} answers have the shapes shown")


if __name__ == "__main__":
    main()
