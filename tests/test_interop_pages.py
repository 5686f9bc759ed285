"""AppTest of the Data page's imports (predictions made elsewhere, a Hugging Face dataset) and
the Export page's Hugging Face dataset, with its progress bar and a guarded folder name."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
from sqlalchemy import select

from tests.test_pages_foundation import done, no_exception, open_page
from workbench.store.db import session_scope
from workbench.store.demo_memes import write_sample_memes
from workbench.store.ingest import scan_folder
from workbench.store.interop.hf_dataset import export_hf_dataset
from workbench.store.labels import current_labels
from workbench.store.schema import Image, ModelRun, Prediction


def _uploader(at, key: str):
    return next(u for u in at.get("file_uploader") if u.proto.id.endswith(key) or key in u.proto.id)


def test_data_page_imports_predictions_and_a_dataset(settings, tmp_path: Path, clear_streamlit_cache) -> None:
    write_sample_memes(settings.memes_dir, n=6, seed=2, size=(64, 64))
    with session_scope(settings.db_url) as session:
        scan_folder(session, settings.memes_dir)
        paths = list(session.scalars(select(Image.path).order_by(Image.id)))
        export_hf_dataset(session, settings.memes_dir, tmp_path / "ds", test_size=None)
    at = open_page("pages/3_Data.py")
    no_exception(at)
    rows = "image,label,prob_toxic\n" + "".join(f"{p},toxic,0.9\n" for p in paths[:3]) + "nowhere.png,toxic,0.5\n"
    _uploader(at, "data_pred_file").set_value([("theirs.csv", rows.encode(), "text/csv")])
    at.run()
    at.text_input(key="data_pred_name").set_value("their model")
    at.button(key="data_pred_import").click().run()
    no_exception(at)
    assert "0 predictions imported" in at.error[0].value and "1 problems" in at.error[0].value  # all or nothing
    assert at.dataframe[-1].value.to_dict("records")[0]["row"] == 5
    at.radio(key="data_pred_mode").set_value(at.radio(key="data_pred_mode").options[1])
    at.button(key="data_pred_import").click().run()
    no_exception(at)
    assert "3 predictions imported as run #1" in at.warning[0].value.replace("\\", "")
    with session_scope(settings.db_url) as session:
        assert session.scalar(select(ModelRun.name)) == "their model"
        assert session.query(Prediction).count() == 3

    at.text_input(key="data_hf_path").set_value(str(tmp_path / "ds"))
    at.text_input(key="data_hf_name").set_value("mirror").run()
    at.button(key="data_hf_import").click().run()
    no_exception(at)
    assert "6 labels imported" in at.success[-1].value
    with session_scope(settings.db_url) as session:
        assert sum(c.annotator == "import:mirror" for c in current_labels(session)) == 6


def test_export_page_writes_a_dataset_with_progress(settings, tmp_path: Path, clear_streamlit_cache) -> None:
    write_sample_memes(settings.memes_dir, n=6, seed=2, size=(64, 64))
    with session_scope(settings.db_url) as session:
        scan_folder(session, settings.memes_dir)
        done(session)
    at = open_page("pages/9_Export.py")
    no_exception(at)
    at.text_input(key="exp_hf_dir").set_value("../escape").run()
    at.button(key="exp_hf_write").click().run()
    assert "leaves the memes folder" in at.error[0].value
    at.text_input(key="exp_hf_dir").set_value("mine").run()
    at.button(key="exp_hf_write").click().run()
    no_exception(at)
    target = settings.artefacts_dir / "exports" / "mine"
    assert "Parquet shards" in at.success[0].value and str(target) in at.success[0].value.replace("\\", "")
    loaded = datasets.load_dataset(str(target))
    assert sum(len(loaded[s]) for s in loaded) == 6


def test_label_studio_export_and_import_on_the_pages(settings, clear_streamlit_cache) -> None:
    write_sample_memes(settings.memes_dir, n=3, seed=2, size=(64, 64))
    with session_scope(settings.db_url) as session:
        scan_folder(session, settings.memes_dir)
        ids = list(session.scalars(select(Image.id).order_by(Image.id)))
    at = open_page("pages/9_Export.py")
    at.text_input(key="exp_ls_prefix").set_value("https://memes.example.org/").run()
    at.button(key="exp_ls_write").click().run()
    no_exception(at)
    tasks = json.loads((settings.artefacts_dir / "exports" / "label-studio" / "tasks.json").read_text(encoding="utf-8"))
    assert [t["data"]["meme_id"] for t in tasks] == ids and tasks[0]["data"]["image"].startswith("https://memes.")

    choice = [{"type": "choices", "from_name": "toxicity", "to_name": "image", "value": {"choices": ["Оскорбление"]}}]
    tasks[0]["annotations"] = [{"result": choice, "completed_by": {"email": "eve@example.org"}, "lead_time": 3.0}]
    at = open_page("pages/3_Data.py")
    _uploader(at, "data_ls_file").set_value([("export.json", json.dumps(tasks).encode(), "application/json")])
    at.run()
    at.button(key="data_ls_import").click().run()
    assert "map it with --map Оскорбление=toxic" in at.dataframe[-1].value.to_dict("records")[0]["problem"]
    at.text_input(key="data_ls_map").set_value("Оскорбление=toxic").run()
    at.button(key="data_ls_import").click().run()
    no_exception(at)
    assert "1 labels imported" in at.success[-1].value
    with session_scope(settings.db_url) as session:
        assert [(c.image_id, c.label) for c in current_labels(session) if c.annotator == "eve@example.org"] == [
            (ids[0], "toxic")]
