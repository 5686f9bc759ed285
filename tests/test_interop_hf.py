"""Hugging Face datasets both ways, with the real `datasets` library: the export loads with
its features and splits, keeps near-copies on one side, and round-trips into an empty workbench."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest
import yaml
from sqlalchemy import select

from tests.support.synthetic_runs import Pred, add_run
from workbench.cli import main
from workbench.store import db
from workbench.store.db import session_scope
from workbench.store.demo_memes import write_sample_memes
from workbench.store.ingest import scan_folder
from workbench.store.labels import add_label, consensus_labels
from workbench.store.schema import AuditEntry, DuplicateGroup, DuplicateMember, Image


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def study(settings) -> dict:
    """20 sample memes (folder labels), a person's label, two near-duplicate groups and a run."""
    write_sample_memes(settings.memes_dir, n=20, seed=5, size=(64, 64))
    with session_scope(settings.db_url) as session:
        scan_folder(session, settings.memes_dir)
        ids = list(session.scalars(select(Image.id).order_by(Image.id)))
        add_label(session, ids[0], "toxic", "anna@example.org")
        groups = [ids[0:3], ids[3:5]]
        for members in groups:
            group = DuplicateGroup(status="active", params={})
            session.add(group)
            session.flush()
            session.add_all(DuplicateMember(group_id=group.id, image_id=i) for i in members)
        run_id = add_run(session, "clip", "CLIP base", {i: Pred("toxic", 0.7) for i in ids[:10]})
    return {"ids": ids, "groups": groups, "run": run_id}


def _by_sha(settings) -> dict[str, str | None]:
    with session_scope(settings.db_url) as session:
        labels = consensus_labels(session)
        return {sha: labels.get(i) for i, sha in session.execute(select(Image.id, Image.sha256))}


def test_export_loads_with_features_splits_and_card(settings, study, capsys, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    code, said, _ = run(capsys, "export", "hf-dataset", str(out), "--runs", str(study["run"]), "--seed", "1")
    assert code == 0 and "README.md" in said
    loaded = datasets.load_dataset(str(out))
    assert set(loaded) == {"train", "test"} and len(loaded["train"]) + len(loaded["test"]) == 20
    assert 2 <= len(loaded["test"]) <= 6
    features = loaded["train"].features
    assert isinstance(features["image"], datasets.Image)
    assert isinstance(features["label"], datasets.ClassLabel) and features["label"].names == ["non_toxic", "toxic"]
    slug = f"{study['run']}_clip_base"
    assert features[f"pred_{slug}"].dtype == "string" and features[f"prob_{slug}"].dtype == "float64"
    first = loaded["train"].cast_column("image", datasets.Image(decode=False))[0]
    assert first["image"]["bytes"][:4] in (b"\x89PNG", b"\xff\xd8\xff\xe0", b"GIF8", b"RIFF")
    sides: dict[int, set[str]] = {}
    for side in loaded:
        for group in loaded[side]["duplicate_group"]:
            if group is not None:
                sides.setdefault(group, set()).add(side)
    assert len(sides) == 2 and all(len(s) == 1 for s in sides.values())
    people = [a for side in loaded for rows in loaded[side]["annotators"] for a in rows]
    assert people == [{"annotator": "anna@example.org", "label": "toxic"}]

    card = (out / "README.md").read_text(encoding="utf-8")
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["task_categories"] == ["image-classification"] and meta["language"] == ["ru"] and "license" in meta
    assert {s["name"]: s["num_examples"] for s in meta["dataset_info"]["splits"]} == {
        "train": len(loaded["train"]), "test": len(loaded["test"])}
    assert "Content warning" in card and "Labels per meme (k): 1" in card and "Krippendorff" in card

    code, _, _ = run(capsys, "export", "hf-dataset", str(out), "--no-split")
    assert code == 0 and set(datasets.load_dataset(str(out))) == {"train"}


def test_round_trip_into_an_empty_workbench(settings, study, capsys, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "ds"
    assert run(capsys, "export", "hf-dataset", str(out))[0] == 0
    before = _by_sha(settings)
    empty = tmp_path / "empty"
    (empty / "memes").mkdir(parents=True)
    monkeypatch.setenv("WORKBENCH_DB_URL", f"sqlite:///{empty / 'wb.sqlite3'}")
    monkeypatch.setenv("WORKBENCH_MEMES_DIR", str(empty / "memes"))
    from workbench.config import load_settings

    target = load_settings()
    db.upgrade(target.db_url)
    code, said, err = run(capsys, "import", "hf-dataset", str(out), "--name", "vlmemes")
    assert code == 0, err
    assert "20 labels imported" in said and "20 new files ingested" in said
    assert _by_sha(target) == before
    with session_scope(target.db_url) as session:
        assert session.scalar(select(AuditEntry.action).order_by(AuditEntry.id.desc())) == "import hf-dataset"
    code, said, _ = run(capsys, "import", "hf-dataset", str(out), "--name", "vlmemes")
    assert code == 0 and "0 labels imported, 20 unchanged" in said


def test_bad_datasets_are_refused_with_the_place(settings, capsys, tmp_path: Path) -> None:
    write_sample_memes(tmp_path / "src", n=2, seed=1, size=(48, 48))
    pictures = sorted((tmp_path / "src").rglob("*.png"))
    folder = tmp_path / "theirs"
    folder.mkdir()
    (folder / "ok.png").write_bytes(pictures[0].read_bytes())
    (tmp_path / "outside.png").write_bytes(pictures[1].read_bytes())
    datasets.Dataset.from_dict({"img": ["ok.png", "../outside.png", "ok.png"], "verdict": ["bad", "good", "meh"]}
                               ).to_parquet(str(folder / "x.parquet"))
    code, _, err = run(capsys, "import", "hf-dataset", str(folder), "--image-column", "img", "--label-column", "verdict",
                       "--map", "bad=toxic")
    assert code == 1
    assert "row 2: 'outside.png': image path '../outside.png' escapes the dataset's folder" in err
    assert "row 1" not in err and "unknown label 'good'; map it with --map good=toxic" not in err  # row 2: the path
    assert "row 3: 'ok.png': unknown label 'meh'; map it with --map meh=toxic" in err
    with session_scope(settings.db_url) as session:
        assert session.scalar(select(Image.id)) is None
    assert not any(settings.memes_dir.rglob("*.png"))

    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 this is not parquet")
    code, _, err = run(capsys, "import", "hf-dataset", str(broken))
    assert code == 2 and "broken.parquet: not a readable Parquet file" in err and "Traceback" not in err


def test_a_damaged_parquet_page_names_the_file_and_row(settings, capsys, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    damaged = tmp_path / "damaged.parquet"
    pq.write_table(pa.table({"image": [{"bytes": b"x" * 5000, "path": "a.png"}] * 3, "label": ["toxic"] * 3}),
                   damaged, compression="NONE")
    data = bytearray(damaged.read_bytes())
    data[4:40] = b"\xff" * 36  # the first page header: the footer still reads
    damaged.write_bytes(bytes(data))
    code, _, err = run(capsys, "import", "hf-dataset", str(damaged))
    assert code == 2 and f"{damaged}: cannot read row 1" in err and "Traceback" not in err
    with session_scope(settings.db_url) as session:
        assert session.scalar(select(Image.id)) is None


def test_a_save_to_disk_folder_with_its_own_label_names(settings, capsys, tmp_path: Path) -> None:
    pictures = write_sample_memes(tmp_path / "src", n=2, seed=4, size=(48, 48))
    features = datasets.Features({"img": datasets.Image(), "y": datasets.ClassLabel(names=["fine", "offensive"])})
    datasets.Dataset.from_dict({"img": [{"bytes": p.path.read_bytes(), "path": p.path.name} for p in pictures],
                                "y": [1, 0]}, features=features).save_to_disk(str(tmp_path / "saved"))
    args = ["import", "hf-dataset", str(tmp_path / "saved"), "--image-column", "img", "--label-column", "y"]
    code, _, err = run(capsys, *args)
    assert code == 1 and "unknown label 'offensive'; map it with --map offensive=toxic" in err
    code, said, _ = run(capsys, *args, "--map", "offensive=toxic", "--map", "fine=non_toxic", "--name", "theirs")
    assert code == 0 and "2 labels imported" in said
    with session_scope(settings.db_url) as session:
        labels = consensus_labels(session)
        got = {sha: labels[i] for i, sha in session.execute(select(Image.id, Image.sha256))}
    from workbench.store.images import sha256_file

    assert got == {sha256_file(pictures[0].path): "toxic", sha256_file(pictures[1].path): "non_toxic"}
