"""Issue 17: CI audits requirements.lock (``.ci/audit_deps.py``). The verdict on pip-audit's
JSON report (its documented ``-f json`` shape: dependencies with ``vulns`` or a
``skip_reason``): a known vulnerability fails unless a dated ignore names it, and an audit
that checked nothing never reads as clean."""

from __future__ import annotations

import datetime as dt
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("audit_deps", ROOT / ".ci" / "audit_deps.py")
assert spec is not None and spec.loader is not None
audit = importlib.util.module_from_spec(spec)
sys.modules["audit_deps"] = audit  # dataclasses look their module up there
spec.loader.exec_module(audit)

VULN = {"name": "aiohttp", "version": "3.9.0", "vulns": [{
    "id": "GHSA-5m98-qgg9-wh84", "aliases": ["CVE-2024-30251"], "fix_versions": ["3.9.4"],
    "description": "infinite loop on a malformed POST"}]}
CLEAN = {"name": "orjson", "version": "3.13.0", "vulns": []}
TODAY = dt.date(2026, 11, 22)


def _ignores(tmp_path: Path, body: str) -> tuple[dict[str, str], list[str]]:
    path = tmp_path / "ignore.toml"
    path.write_text(body)
    return audit.read_ignores(path, TODAY)


def test_a_known_vulnerability_fails_and_names_the_fix(tmp_path: Path) -> None:
    verdict = audit.judge({"dependencies": [VULN, CLEAN]}, {}, [], strict=False)
    assert not verdict.ok
    assert any("VULNERABLE aiohttp 3.9.0: GHSA-5m98-qgg9-wh84" in line and "3.9.4" in line
               for line in verdict.lines)


def test_a_dated_ignore_waives_it_by_alias_and_an_expired_one_does_not(tmp_path: Path) -> None:
    live = _ignores(tmp_path, '[[ignore]]\nid = "CVE-2024-30251"\nreason = "no server in '
                    'stackbot"\nuntil = 2027-01-31\n')
    assert audit.judge({"dependencies": [VULN]}, *live, strict=False).ok
    expired = _ignores(tmp_path, '[[ignore]]\nid = "CVE-2024-30251"\nreason = "r"\n'
                       'until = 2026-01-31\n')
    verdict = audit.judge({"dependencies": [VULN]}, *expired, strict=False)
    assert not verdict.ok and any("expired" in line for line in verdict.lines)
    undated = _ignores(tmp_path, '[[ignore]]\nid = "CVE-2024-30251"\nreason = "r"\n')
    assert not audit.judge({"dependencies": [VULN]}, *undated, strict=False).ok


def test_an_audit_that_checked_nothing_says_so_and_fails_when_strict() -> None:
    skipped = {"dependencies": [{"name": n, "skip_reason": f"Dependency not found on PyPI and "
                                 f"could not be audited: {n} (1.0)"} for n in ("a", "b")]}
    lenient = audit.judge(skipped, {}, [], strict=False)
    assert lenient.ok and any(line.startswith("NOTHING WAS AUDITED") for line in lenient.lines)
    assert not audit.judge(skipped, {}, [], strict=True).ok
    assert audit.judge({"dependencies": [CLEAN]}, {}, [], strict=True).ok


def test_the_lock_pins_every_runtime_dependency_with_hashes() -> None:
    import tomllib

    # torch and its CUDA runtime live in the CUDA image's lock (the CPU image takes torch's
    # CPU build by version): between them, the two locks pin every dependency
    lock = (ROOT / "requirements.lock").read_text() + \
        (ROOT / "requirements-cuda.lock").read_text()
    pinned = {line.split("==")[0].lower() for line in lock.splitlines()
              if "==" in line and not line.startswith((" ", "#"))}
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {d.split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower()
             for d in deps}
    assert names <= pinned, names - pinned
    assert lock.count("--hash=sha256:") >= len(pinned)
