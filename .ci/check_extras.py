"""Install each extra the wheel declares, then import every top-level module its requirements provide.

Run with the fresh venv's python: ``python check_extras.py mtlkit-X-py3-none-any.whl``. The extras
and their requirements are read from the wheel's own metadata, so a new extra is checked without
editing this file.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import re
import subprocess
import sys
import time
import zipfile
from email.parser import Parser
from pathlib import Path


def wheel_metadata(wheel: Path):
    """The METADATA of a wheel, parsed as the email-style headers it is."""
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        return Parser().parsestr(zf.read(name).decode())


def extras(wheel: Path) -> dict[str, list[str]]:
    """Extra name -> names of the distributions it adds."""
    meta = wheel_metadata(wheel)
    found: dict[str, list[str]] = {e: [] for e in meta.get_all("Provides-Extra") or []}
    for req in meta.get_all("Requires-Dist") or []:
        m = re.search(r"""extra\s*==\s*['"]([^'"]+)['"]""", req)
        if m:
            found.setdefault(m.group(1), []).append(re.match(r"[A-Za-z0-9._-]+", req).group(0))
    return found


def top_level_modules(dist: str) -> list[str]:
    """Public top-level modules that an installed distribution provides."""
    key = re.sub(r"[-_.]+", "-", dist).lower()
    mods = [
        mod
        for mod, dists in md.packages_distributions().items()
        if any(re.sub(r"[-_.]+", "-", d).lower() == key for d in dists)
    ]
    return sorted(m for m in mods if not m.startswith("_") and m.isidentifier())


def main() -> int:
    wheel = Path(sys.argv[1]).resolve()
    table = extras(wheel)
    if not table:
        print("the wheel declares no extras")
        return 0
    failed = []
    for extra, dists in table.items():
        t0 = time.time()
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-compile", f"mtlkit[{extra}] @ {wheel.as_uri()}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        noise = "WARNING: Location "  # this machine's pip config names local index folders that may be absent
        print(
            "".join(
                line for line in (proc.stdout + proc.stderr).splitlines(keepends=True) if not line.startswith(noise)
            ),
            end="",
        )
        if proc.returncode != 0:
            failed.append(f"[{extra}] pip install failed (exit {proc.returncode})")
            continue
        importlib.invalidate_caches()
        for dist in dists:
            mods = top_level_modules(dist)
            if not mods:
                failed.append(f"[{extra}] {dist}: installed no importable module")
            for mod in mods:
                try:
                    importlib.import_module(mod)
                except Exception as err:  # noqa: BLE001 - any import failure is the finding
                    failed.append(f"[{extra}] {dist}: import {mod}: {type(err).__name__}: {err}")
            print(f"[{extra}] {dist}: import {', '.join(mods) or '-'}")
        print(f"[{extra}] installed and imported in {time.time() - t0:.0f} s")
    for line in failed:
        print(f"FAILED {line}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
