"""Audit requirements.lock with pip-audit; a known vulnerability fails CI.

    python .ci/audit_deps.py [requirements.lock]

- A vulnerability fails, unless ``.ci/audit-ignore.toml`` names it (its id or an alias) with
  a reason and an ``until`` date that has not passed. An expired or reasonless entry fails.
- A dependency pip-audit could not check (its vulnerability service unreachable, as in a
  sandbox without the internet) is listed. When nothing at all could be checked, the audit
  says so in capitals and passes, unless ``STACKBOT_AUDIT_STRICT=1`` (then it fails): an
  audit that checked nothing must never read as a clean one.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IGNORES = ROOT / ".ci" / "audit-ignore.toml"


@dataclass(frozen=True)
class Verdict:
    ok: bool
    lines: tuple[str, ...]


def read_ignores(path: Path, today: dt.date) -> tuple[dict[str, str], list[str]]:
    """{advisory id: reason} of the live entries, and the problems with the others."""
    data = tomllib.loads(path.read_text()) if path.exists() else {}
    live, problems = {}, []
    for entry in data.get("ignore", []):
        vid, reason, until = entry.get("id"), entry.get("reason"), entry.get("until")
        if not vid or not reason or not isinstance(until, dt.date):
            problems.append(f"ignore entry {entry!r} needs id, reason and an until date")
        elif until < today:
            problems.append(f"ignore of {vid} expired on {until}: fix it or renew with a reason")
        else:
            live[vid] = reason
    return live, problems


def judge(report: dict, ignores: dict[str, str], problems: list[str], strict: bool) -> Verdict:
    """What pip-audit's JSON report (``-f json``) means for CI."""
    lines, found = list(problems), []
    deps = report.get("dependencies", [])
    skipped = [d for d in deps if d.get("skip_reason")]
    for dep in deps:
        for vuln in dep.get("vulns", []):
            ids = {vuln["id"], *vuln.get("aliases", [])}
            waived = sorted(ids & set(ignores))
            where = f"{dep['name']} {dep.get('version', '?')}: {vuln['id']}"
            if waived:
                lines.append(f"ignored  {where} ({ignores[waived[0]]})")
            else:
                fix = ", ".join(vuln.get("fix_versions", [])) or "no fixed release"
                found.append(f"VULNERABLE {where} (fixed in: {fix})")
    lines += found
    for dep in skipped:
        lines.append(f"not audited  {dep['name']}: {dep['skip_reason']}")
    audited = len(deps) - len(skipped)
    unaudited = bool(deps) and audited == 0
    if unaudited:
        lines.append(f"NOTHING WAS AUDITED: the vulnerability service answered for none of the "
                     f"{len(deps)} locked dependencies (no internet here?)")
    lines.append(f"{audited} of {len(deps)} dependencies audited, {len(found)} vulnerable")
    return Verdict(not found and not problems and not (strict and (unaudited or skipped)),
                   tuple(lines))


def main(argv: list[str]) -> int:
    lock = Path(argv[1]) if len(argv) > 1 else ROOT / "requirements.lock"
    proc = subprocess.run(
        [sys.executable, "-m", "pip_audit", "-r", str(lock), "--require-hashes",
         "--disable-pip", "-f", "json", "--progress-spinner", "off", "--timeout", "20"],
        capture_output=True, text=True)
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        print(f"pip-audit failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        return 2
    ignores, problems = read_ignores(IGNORES, dt.date.today())
    verdict = judge(report, ignores, problems, os.environ.get("STACKBOT_AUDIT_STRICT") == "1")
    print("\n".join(f"pip-audit: {line}" for line in verdict.lines))
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
