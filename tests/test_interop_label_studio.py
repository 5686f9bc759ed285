"""Label Studio both ways against a real Label Studio server (a separate virtualenv, see
tests/support/label_studio.py): export tasks + config, import them through its REST API, check
the predictions, annotate as two people (one disagreeing, one skip), export its JSON and
import that back: labels, annotators, time spent and the conflict in the adjudication queue."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.support import label_studio as ls
from tests.support.ports import free_port
from tests.support.synthetic_runs import Pred, add_run
from workbench.cli import main
from workbench.config import load_settings
from workbench.store import db
from workbench.store.adjudication import conflicts
from workbench.store.db import session_scope
from workbench.store.demo_memes import write_sample_memes
from workbench.store.ingest import scan_folder
from workbench.store.labels import add_label, current_labels
from workbench.store.schema import Image, Label

ANN, BOB = ls.USERS[0][0], ls.USERS[1][0]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    why = ls.prepare()
    if why:
        pytest.skip(f"Label Studio cannot be installed here, so its round trip is not tested: {why}")
    root = tmp_path_factory.mktemp("ls-root")
    server = ls.LabelStudio(tmp_path_factory.mktemp("ls-work"), root, free_port())
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def workbench(server, tmp_path: Path, monkeypatch):
    """A workbench whose memes folder lies under the server's LOCAL_FILES_DOCUMENT_ROOT."""
    memes = server.document_root / "memes"  # the root is the memes folder's parent, as the README says
    memes.mkdir()
    monkeypatch.setenv("WORKBENCH_DB_URL", f"sqlite:///{tmp_path / 'wb.sqlite3'}")
    monkeypatch.setenv("WORKBENCH_MEMES_DIR", str(memes))
    monkeypatch.setenv("WORKBENCH_ARTEFACTS_DIR", str(tmp_path / "artefacts"))
    settings = load_settings()
    db.upgrade(settings.db_url)
    yield settings
    db.dispose_all()


def _choice(label: str) -> list[dict]:
    return [{"from_name": "toxicity", "to_name": "image", "type": "choices", "value": {"choices": [label]}}]


def test_round_trip_through_a_real_label_studio(server, workbench, tmp_path: Path, capsys) -> None:
    settings = workbench
    write_sample_memes(settings.memes_dir, n=4, seed=7, size=(64, 64))
    with session_scope(settings.db_url) as session:
        scan_folder(session, settings.memes_dir)
        ids = list(session.scalars(select(Image.id).order_by(Image.id)))
        run_id = add_run(session, "clip", "CLIP", {i: Pred("toxic", 0.25 + 0.1 * k) for k, i in enumerate(ids)})
        own = add_label(session, ids[0], "toxic", ANN).id
    out = tmp_path / "ls"
    assert main(["export", "label-studio", str(out), "--runs", str(run_id)]) == 0
    assert "wrote 4 tasks (4 predictions, 1 annotations)" in capsys.readouterr().out
    tasks = json.loads((out / "tasks.json").read_text(encoding="utf-8"))

    api = server.client(0)
    project = api.post("/api/projects", json={"title": "memes", "label_config": (out / "label_config.xml").read_text(
        encoding="utf-8")})
    assert project.status_code == 201, project.text
    pid = project.json()["id"]
    storage = api.post("/api/storages/localfiles", json={"project": pid, "path": str(settings.memes_dir),
                                                         "use_blob_urls": False, "title": "memes"})
    assert storage.status_code == 201, storage.text
    imported = api.post(f"/api/projects/{pid}/import", json=tasks)
    assert imported.status_code == 201, imported.text
    assert (imported.json()["task_count"], imported.json()["prediction_count"]) == (4, 4)

    listed = api.get("/api/tasks", params={"project": pid, "page_size": 100}).json()
    by_meme = {t["data"]["meme_id"]: t["id"] for t in listed["tasks"]}
    preds = api.get("/api/predictions", params={"task": by_meme[ids[1]]}).json()
    assert [(p["model_version"], p["score"], p["result"][0]["value"]["choices"]) for p in preds] == [
        (f"#{run_id} clip · CLIP", pytest.approx(0.35), ["Toxic"])]
    picture = api.get(tasks[1]["data"]["image"])
    assert picture.status_code == 200 and picture.content == (settings.memes_dir / _path(settings, ids[1])).read_bytes()

    bob = server.client(1)
    for client, meme, choice, extra in ((api, ids[1], "Toxic", {}), (bob, ids[1], "Neutral", {"lead_time": 4.5}),
                                        (bob, ids[2], "Toxic", {}), (bob, ids[3], None, {"was_cancelled": True})):
        body = {"result": _choice(choice) if choice else [], **extra}
        answer = client.post(f"/api/tasks/{by_meme[meme]}/annotations", json=body)
        assert answer.status_code == 201, answer.text
    export = _snapshot_export(api, pid)
    exported = tmp_path / "export.json"
    exported.write_bytes(export.content)

    wrong = tmp_path / "wrong.json"
    wrong.write_text(export.text.replace('"Neutral"', '"Maybe"'), encoding="utf-8")
    assert main(["import-annotations", "--format", "label-studio", str(wrong)]) == 1
    err = capsys.readouterr().err
    assert f"task {by_meme[ids[1]]}:" in err and "unknown choice 'Maybe'; map it with --map Maybe=toxic" in err
    with session_scope(settings.db_url) as session:
        assert session.query(Label).count() == 4 + 1  # the folder's and ann's own: nothing added

    assert main(["import-annotations", "--format", "label-studio", str(exported)]) == 0
    said = capsys.readouterr().out
    assert "3 labels imported, 1 unchanged" in said
    with session_scope(settings.db_url) as session:
        people = {(c.image_id, c.annotator): c.label for c in current_labels(session)
                  if c.annotator in (ANN, BOB)}
        assert people == {(ids[0], ANN): "toxic", (ids[1], ANN): "toxic", (ids[1], BOB): "non_toxic",
                          (ids[2], BOB): "toxic"}
        assert session.scalar(select(Label.id).where(Label.image_id == ids[0], Label.annotator == ANN)) == own
        timed = session.scalar(select(Label).where(Label.image_id == ids[1], Label.annotator == BOB))
        assert (timed.seconds_spent, timed.queue_order) == (4.5, "import")
        assert [c.image_id for c in conflicts(session, 1)] == [ids[1]]
    assert main(["import-annotations", "--format", "label-studio", str(exported)]) == 0
    assert "0 labels imported, 4 unchanged" in capsys.readouterr().out


def _snapshot_export(api, pid: int):
    """Label Studio's JSON export as its Export dialog makes it: a snapshot whose annotations name
    their annotator by email (the quick GET /export gives only user ids)."""
    snapshot = api.post(f"/api/projects/{pid}/exports/", json={
        "serialization_options": {"annotations__completed_by": {"only_id": False}}})
    assert snapshot.status_code == 201, snapshot.text
    export_id = snapshot.json()["id"]
    for _ in range(60):
        if api.get(f"/api/projects/{pid}/exports/{export_id}").json().get("status") == "completed":
            break
        time.sleep(0.5)
    export = api.get(f"/api/projects/{pid}/exports/{export_id}/download", params={"exportType": "JSON"})
    assert export.status_code == 200, export.text
    return export


def _path(settings, image_id: int) -> str:
    with session_scope(settings.db_url) as session:
        return session.get(Image, image_id).path


def test_unmatched_tasks_and_malformed_json_are_refused(settings, tmp_path: Path, capsys) -> None:
    """No server needed: Label Studio's export format, written by hand."""
    write_sample_memes(settings.memes_dir, n=2, seed=1, size=(48, 48))
    with session_scope(settings.db_url) as session:
        scan_folder(session, settings.memes_dir)
        first, second = session.execute(select(Image.id, Image.path).order_by(Image.id)).all()
    ann = {"result": _choice("Toxic"), "completed_by": 7, "lead_time": 2.0}
    export = [
        {"id": 1, "data": {"image": f"/data/upload/3/1a2b3c4d-{Path(first[1]).name}"}, "annotations": [ann]},
        {"id": 2, "data": {"image": "/data/upload/3/deadbeef-nothing.png"}, "annotations": [ann]},
        {"id": 3, "data": {"meme_id": second[0], "image": "x"}, "annotations": [{**ann, "was_cancelled": True}]},
    ]
    root = tmp_path / "served"  # a copy of the second meme under another name, as another machine serves it
    (root / "elsewhere").mkdir(parents=True)
    (root / "elsewhere" / "renamed.png").write_bytes((settings.memes_dir / second[1]).read_bytes())
    export.append({"id": 4, "data": {"image": "/data/local-files/?d=elsewhere/renamed.png"},
                   "annotations": [{**ann, "completed_by": {"id": 8, "email": "Eve@Example.org"}}]})
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export), encoding="utf-8")
    assert main(["import-annotations", "--format", "label-studio", str(path)]) == 1
    err = capsys.readouterr().err
    assert "task 2: '/data/upload/3/deadbeef-nothing.png': no meme matches this task" in err
    assert "task 4" in err  # without the document root its local file is not found
    assert main(["import-annotations", "--format", "label-studio", str(path), "--partial",
                 "--document-root", str(root)]) == 1
    with session_scope(settings.db_url) as session:
        got = sorted((c.image_id, c.annotator, c.label) for c in current_labels(session) if c.annotator != "folder")
        assert got == [(first[0], "ls-user-7", "toxic"), (second[0], "eve@example.org", "toxic")]
    path.write_text('[{"id": 1, "data": {}\n  "annotations": []}]', encoding="utf-8")
    assert main(["import-annotations", "--format", "label-studio", str(path)]) == 2
    assert f"{path}: malformed JSON at line 2 column 3" in capsys.readouterr().err
