"""The backbone × mitigation matrix of the equivariance battery: which pairs pass, fail, or are refused by name.

Runs the backbones' test files (EGNN: tests/test_models.py, PaiNN, SEGNN, ClofNet) under pytest with a JUnit
report, then sorts every battery test by backbone and mitigation:

- equivariance in float64 (depth 2 and 9) and float32 (within tolerance): random rotations, reflections
  (ClofNet: proper rotations only, it is SE(3)), translations and permutations;
- batched equals unbatched (depth 2 and 9);
- forces equivariant.

A test's mitigation is the start of its variant id (``pairreg-dense-9`` → pairreg); a pair no battery test
covers but a refusal test names is "refused" (the model raises a ValueError naming backbone and mitigation).

Run:  .venv/bin/python benchmarks/equivariance_matrix.py [--junit FILE]   (about 2 minutes on one core)

Prints a markdown table; each cell is ``pass (n)`` with the number of battery tests, ``FAIL (k/n)``, or
``refused``. Exits 1 when any battery test failed.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = {"EGNN": "tests/test_models.py", "PaiNN": "tests/test_painn.py", "SEGNN": "tests/test_segnn.py",
         "ClofNet": "tests/test_clofnet.py"}
MITIGATIONS = ("none", "residual", "pairreg", "pairnorm", "g2", "noisynodes")
BATTERY = re.compile(r"^test_(equivariance_float(64|32)|batched_equals_unbatched|forces_are_equivariant)")
REFUSAL = "test_combinations_that_make_no_sense_are_refused_by_name"


def _mitigation(param_id: str) -> str | None:
    """``pairreg-dense-9`` → ``pairreg``; ``none+coords`` → ``none``; None for ids that name no mitigation."""
    head = re.split(r"[-+]", param_id, maxsplit=1)[0]
    return head if head in MITIGATIONS else None


def matrix_from_junit(xml_path: str | Path) -> dict[tuple[str, str], dict[str, int]]:
    """{(backbone, mitigation): {"passed": n, "failed": k, "refused": r}} from a pytest JUnit report."""
    by_module = {Path(f).stem: name for name, f in FILES.items()}
    cells: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: {"passed": 0, "failed": 0, "refused": 0})
    for case in ET.parse(xml_path).getroot().iter("testcase"):
        backbone = by_module.get(case.get("classname", "").split(".")[-1])
        match = re.fullmatch(r"(\w+)\[(.+)\]", case.get("name", ""))
        if backbone is None or match is None:
            continue
        if case.find("skipped") is not None:
            continue
        test, param_id = match.groups()
        bad = case.find("failure") is not None or case.find("error") is not None
        if test == REFUSAL:  # id: <backbone>-<mitigation>-<options>-<message>
            named_backbone, mitigation = param_id.split("-")[:2]
            key = (next(n for n in FILES if n.lower() == named_backbone), mitigation)
            cells[key]["failed" if bad else "refused"] += 1
        elif BATTERY.match(test) and (mitigation := _mitigation(param_id)) is not None:
            cells[(backbone, mitigation)]["failed" if bad else "passed"] += 1
    return dict(cells)


def run_pytest(files, xml_path: str | Path, cwd: str | Path = ROOT) -> None:
    """Run pytest on ``files`` and write its JUnit report to ``xml_path`` (failures are the report's to say)."""
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml_path}",
                    *map(str, files)], cwd=cwd, check=False)


def cell_text(counts: dict[str, int] | None) -> str:
    if not counts:
        return "–"
    n = counts["passed"] + counts["failed"]
    if counts["failed"]:
        return f"FAIL ({counts['failed']}/{n})"
    if counts["passed"]:
        return f"pass ({n})" + (" ¹" if counts["refused"] else "")
    return "refused"


def markdown(cells: dict[tuple[str, str], dict[str, int]]) -> str:
    lines = ["| backbone | " + " | ".join(MITIGATIONS) + " |", "|---" * (len(MITIGATIONS) + 1) + "|"]
    for backbone in FILES:
        lines.append(f"| {backbone} | " + " | ".join(cell_text(cells.get((backbone, m))) for m in MITIGATIONS) + " |")
    if any(c["passed"] and c["refused"] for c in cells.values()):
        lines.append("\n¹ passes the battery; some options are refused by name (e.g. coordinate updates or "
                     "PairReg's coordinate term on a backbone that keeps positions fixed).")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--junit", help="read this pytest JUnit report instead of running the tests")
    args = parser.parse_args(argv)
    xml_path = args.junit
    if xml_path is None:
        xml_path = str(Path(tempfile.mkdtemp()) / "backbones.xml")
        run_pytest(FILES.values(), xml_path)
    cells = matrix_from_junit(xml_path)
    print(markdown(cells))
    failed = sum(c["failed"] for c in cells.values())
    print(f"\nbattery tests: {sum(c['passed'] for c in cells.values())} passed, {failed} failed; "
          f"refusal tests passed: {sum(c['refused'] for c in cells.values())}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
