"""`python -m workbench` core commands: the same library calls as the pages, exit codes, messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from workbench.cli import main

REPO_ROOT = Path(__file__).resolve().parent.parent


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_demo_ingest_stats_export_import(settings, capsys, tmp_path: Path) -> None:
    code, out, _ = run(capsys, "demo", "-n", "4")
    assert code == 0 and "generated 4 demo memes" in out and "4 added" in out
    code, out, _ = run(capsys, "ingest")
    assert code == 0 and "4 unchanged" in out
    code, out, _ = run(capsys, "stats", "--json")
    counts = json.loads(out)
    assert code == 0 and counts["images"] == 4 and counts["by_label"] == {"non_toxic": 2, "toxic": 2}
    target = tmp_path / "out" / "annotations.csv"
    code, out, _ = run(capsys, "export", "annotations", str(target))
    text = target.read_text(encoding="utf-8")
    assert code == 0 and "wrote 4 rows" in out and text.startswith("filename,label\n") and text.count("\n") == 5
    flipped = text.replace(",toxic", ",TMP").replace(",non_toxic", ",toxic").replace(",TMP", ",non_toxic")
    (tmp_path / "flipped.csv").write_text(flipped, encoding="utf-8")
    code, out, _ = run(capsys, "import-annotations", str(tmp_path / "flipped.csv"))
    # import labels tie with folder labels among system annotators: the most recent (import) wins
    assert code == 0 and "4 labels imported" in out
    run(capsys, "export", "annotations", str(target))
    assert target.read_text(encoding="utf-8") == flipped


BAD_INPUT = [
    (["import-annotations", "no/such.csv"], 2, "does not exist"),
    (["ingest", "/no/such/folder"], 2, "is not a folder"),
    (["ingest", "/tmp"], 2, "is outside the memes folder"),
]


@pytest.mark.parametrize(("argv", "code", "message"), BAD_INPUT, ids=[" ".join(a) for a, _, _ in BAD_INPUT])
def test_bad_input_exits_nonzero_with_message(settings, capsys, argv, code, message) -> None:
    got, out, err = run(capsys, *argv)
    assert got == code
    assert message in err and "Traceback" not in err


def test_import_with_problem_rows_reports_lines(settings, capsys, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("filename,label\nНегативно/x.png,toxic\nНейтрально/y.png,funny\n", encoding="utf-8")
    code, out, err = run(capsys, "import-annotations", str(bad))
    assert code == 1
    assert "line 2" in err and "no such file" in err
    assert "line 3" in err and "unknown label 'funny'" in err
    assert "NOT applied" in out


def test_unknown_command_and_no_command(settings, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
    assert main([]) == 2


def test_module_entry_point_runs_db_upgrade(settings) -> None:
    result = subprocess.run([sys.executable, "-m", "workbench", "db", "upgrade"], cwd=REPO_ROOT, env=os.environ.copy(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "database at revision" in result.stdout
