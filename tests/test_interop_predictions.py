"""`import-predictions`: predictions computed elsewhere become an `external` run, used
everywhere runs are (Dashboard, Disagreements, queue, report, predictions.csv)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.support.synthetic_runs import add_run
from tests.test_pages_analysis import DESIGN_A, DESIGN_B, _answer, _app
from workbench.cli import main
from workbench.store.db import session_scope
from workbench.store.demo_memes import write_sample_memes
from workbench.store.ingest import scan_folder
from workbench.store.labels import consensus_labels
from workbench.store.schema import AuditEntry, Image, ModelRun, Prediction


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def memes(settings) -> list[tuple[int, str, str]]:
    """8 sample memes: (id, path, sha256) sorted by id."""
    write_sample_memes(settings.memes_dir, n=8, seed=3, size=(96, 96))
    with session_scope(settings.db_url) as session:
        scan_folder(session, settings.memes_dir)
        return [tuple(r) for r in session.execute(select(Image.id, Image.path, Image.sha256).order_by(Image.id))]


def test_class_words_are_the_vlm_prompts() -> None:
    from workbench.predictors.vlm_prompt import DEFAULT_NON_TOXIC_WORD, DEFAULT_TOXIC_WORD
    from workbench.store.interop.common import class_of

    assert class_of(DEFAULT_TOXIC_WORD.upper()) == "toxic" and class_of(DEFAULT_NON_TOXIC_WORD) == "non_toxic"


def test_bad_rows_are_refused_per_line_and_nothing_is_stored(settings, memes, capsys, tmp_path: Path) -> None:
    (a, path_a, _), (b, _, sha_b), (c, _, _), (d, _, _) = memes[:4]
    bad = tmp_path / "theirs.csv"
    bad.write_text(
        "image,label,prob_toxic,explanation\n"
        f"{path_a},toxic,0.9,looks rude\n"            # 2 ok: by path
        f"{sha_b},нейтральный,,\n"                     # 3 ok: by sha256, the prompt's class word
        "no/such.png,toxic,0.5,\n"                     # 4 unknown image
        f"{c},maybe,0.5,\n"                            # 5 bad label
        f"{d},toxic,1.5,\n"                            # 6 probability outside [0, 1]
        f"{d},toxic,nan,\n"                            # 7 NaN
        f"{a},toxic,0.2,\n"                            # 8 duplicate image
        f"{c},toxic,0.7,=HYPERLINK(\"x\")\n",          # 9 formula-looking text
        encoding="utf-8")
    code, out, err = run(capsys, "import-predictions", str(bad), "--name", "their model")
    assert code == 1 and "NOT applied" in out
    problems = {int(line.split(":")[0].split()[1]): line for line in err.strip().splitlines()}
    assert sorted(problems) == [4, 5, 6, 7, 8, 9]
    assert "unknown image" in problems[4] and "bad label" in problems[5] and "outside [0, 1]" in problems[6]
    assert "outside [0, 1]" in problems[7] and "duplicate image (already on line 2)" in problems[8]
    assert "formula" in problems[9]
    with session_scope(settings.db_url) as session:
        assert session.scalar(select(ModelRun.id)) is None
        assert session.scalars(select(AuditEntry.action)).all()[-1] == "import predictions"

    code, out, _ = run(capsys, "import-predictions", str(bad), "--name", "their model", "--partial")
    assert code == 1 and "2 predictions imported" in out
    with session_scope(settings.db_url) as session:
        run_row = session.scalar(select(ModelRun))
        assert (run_row.kind, run_row.name, run_row.model_id) == ("external", "their model", "their model")
        assert run_row.params["file_sha256"] and run_row.params["name"] == "their model"
        got = {p.image_id: (p.label, p.prob_toxic, p.explanation) for p in session.scalars(select(Prediction))}
        assert got == {a: ("toxic", 0.9, "looks rude"), b: ("non_toxic", None, None)}
    code, out, _ = run(capsys, "import-predictions", str(bad), "--partial")
    assert code == 0 and "already imported" in out
    with session_scope(settings.db_url) as session:
        assert session.query(ModelRun).count() == 1 and session.query(Prediction).count() == 2


def test_jsonl_by_id_and_malformed_json_names_the_line(settings, memes, capsys, tmp_path: Path) -> None:
    good = tmp_path / "p.jsonl"
    good.write_text("\n".join(json.dumps({"image": i, "label": "toxic", "prob_toxic": 0.6}) for i, _, _ in memes[:3])
                    + "\n", encoding="utf-8")
    broken = tmp_path / "broken.jsonl"
    broken.write_text(good.read_text(encoding="utf-8") + '{"image": 4, "label": \n', encoding="utf-8")
    code, _, err = run(capsys, "import-predictions", str(broken))
    assert code == 1 and "line 4: 'broken.jsonl': malformed JSON at column" in err
    code, out, _ = run(capsys, "import-predictions", str(good), "--model", "qwen-72b")
    assert code == 0 and "3 predictions imported" in out
    with session_scope(settings.db_url) as session:
        assert session.scalar(select(ModelRun.model_id)) == "qwen-72b"


def test_an_external_run_works_where_runs_work(settings, memes, capsys, tmp_path: Path, clear_streamlit_cache) -> None:
    """The Disagreements page test's design, with run A imported from a file instead of stored by a predictor."""
    with session_scope(settings.db_url) as session:
        truth = consensus_labels(session)
    ids = sorted(truth)
    rows = []
    for i, code in zip(ids, DESIGN_A):
        if (p := _answer(truth[i], code, 0.8, 0.6)) is not None and p.label != "unknown":
            rows.append({"image": i, "label": p.label, "prob_toxic": p.prob, "explanation": p.explanation})
    src = tmp_path / "a.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    assert run(capsys, "import-predictions", str(src), "--name", "A")[0] == 0
    with session_scope(settings.db_url) as session:
        run_a = session.scalar(select(ModelRun.id).where(ModelRun.kind == "external"))
        run_b = add_run(session, "clip", "B", {i: p for i, c in zip(ids, DESIGN_B)
                                               if (p := _answer(truth[i], c, 0.9, 0.7))})

    at = _app("6_Dashboard.py")
    assert not at.exception and run_a in at.multiselect(key="dash_runs").value
    table = at.dataframe[0].value
    assert table.loc[run_a, "missing"] == 1 and table.loc[run_a, "accuracy"].startswith(f"{5 / 7:.3f} [")

    at = _app("7_Disagreements.py", dis_a=run_a, dis_b=run_b)
    assert not at.exception
    frame = next(d.value for d in at.dataframe if list(d.value.columns) == ["cell", "memes"])
    assert dict(zip(frame["cell"], frame["memes"]))["both right"] == 2

    code, out, _ = run(capsys, "queue", "--annotator", "alice", "--order", "unsure", "--run", str(run_a), "--json")
    assert code == 0 and len(json.loads(out)) == len(ids)
    html = tmp_path / "r.html"
    assert run(capsys, "report", str(html), "--n-boot", "50")[0] == 0
    assert f"#{run_a} external · A" in html.read_text(encoding="utf-8")
    out_csv = tmp_path / "p.csv"
    assert run(capsys, "export", "predictions", str(out_csv), "--run", str(run_a))[0] == 0
    assert out_csv.read_text(encoding="utf-8").count("\n") == 1 + len(rows)


def test_every_import_needs_an_admin_and_is_audited(settings, session, memes, tmp_path: Path, monkeypatch) -> None:
    from workbench.errors import PermissionDenied
    from workbench.store import users
    from workbench.store.interop.hf_dataset import export_hf_dataset, import_hf_dataset
    from workbench.store.interop.label_studio import import_label_studio
    from workbench.store.interop.predictions import import_predictions

    users.add_user(session, "boss@lab.org", "admin")
    users.add_user(session, "ann@lab.org", "annotator")
    export_hf_dataset(session, settings.memes_dir, tmp_path / "ds", test_size=None)
    session.commit()
    preds = tmp_path / "p.csv"
    preds.write_text(f"image,label\n{memes[0][0]},toxic\n", encoding="utf-8")
    ls_export = tmp_path / "ls.json"
    ls_export.write_text("[]", encoding="utf-8")
    imports = {
        "import predictions": lambda actor: import_predictions(session, preds, actor=actor),
        "import hf-dataset": lambda actor: import_hf_dataset(session, settings.memes_dir, tmp_path / "ds",
                                                             actor=actor),
        "import label-studio": lambda actor: import_label_studio(session, ls_export, actor=actor),
    }
    monkeypatch.setenv("WORKBENCH_AUTH", "oidc")
    for action, call in imports.items():
        with pytest.raises(PermissionDenied):
            call("ann@lab.org")
        session.rollback()
        call("boss@lab.org")
        session.commit()
        assert session.scalar(select(AuditEntry.actor).where(AuditEntry.action == action)) == "boss@lab.org"
