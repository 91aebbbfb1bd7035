"""The README's first command: `hubd demo --once` does the real job and says what it did."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from daemon.sandbox.dataset import build_demo_dataset
from tests.conftest import REPO, child_env


def test_demo_once_summary_matches_the_sandbox_data(tmp_path: Path) -> None:
    """The summary's figures equal the data set's expected outcome, with document numbers."""
    result = subprocess.run(
        [sys.executable, "-m", "daemon", "demo", "--once", "--state-dir", str(tmp_path / "s")],
        capture_output=True, text=True, cwd=REPO, timeout=240, env=child_env(),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    expected = build_demo_dataset(n_items=300, seed=42).expected
    for donor in ("Бестужевых", "Контейнер"):
        count = sum(1 for o in expected.values() if o.takes.get(donor))
        units = sum(o.takes.get(donor, 0) for o in expected.values())
        line = re.search(rf"Moved from «{donor}»: (\d+) items, (\d+) units — .*№ (\S+)", out)
        assert line, out
        assert (int(line.group(1)), int(line.group(2))) == (count, units)
    external = [o for o in expected.values() if o.external]
    ordered = re.search(r"Ordered in МойСклад: (\d+) items, (\d+) units — .*№ (\d+)", out)
    assert ordered, out
    assert int(ordered.group(1)) == len(external)
    assert int(ordered.group(2)) == sum(o.external for o in external)
    unmapped = sum(1 for o in expected.values() if o.unmapped)
    assert f"Could not be ordered ({unmapped} items, no МойСклад product)" in out
    assert "Documents: 3 delivered." in out
    assert "300 items analysed" in out
    # nothing secret is written to the state directory (credentials are random per demo)
    config = (tmp_path / "s" / "config.toml").read_text(encoding="utf-8")
    assert "password" not in config and "token" not in config
