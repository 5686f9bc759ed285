"""annotations.csv imports that cannot take the app down (issue 22): a field far over csv's
128 KB default is a row problem, not a traceback, in both modes; a field past the upload cap
stops the import with its line; a file is read as a stream, and millions of bad rows keep
only the first problems in memory."""

from __future__ import annotations

import io

import pytest
from sqlalchemy import func, select

from workbench.store.annotations import MAX_LISTED_ISSUES, import_annotations
from workbench.store.demo_memes import render_meme
from workbench.store.ingest import scan_folder
from workbench.store.schema import Label


@pytest.fixture
def memes(session, settings):
    folder = settings.memes_dir / "batch"
    folder.mkdir(parents=True)
    for i in range(2):
        buf = io.BytesIO()
        render_meme("тест", seed=i, size=(48, 48)).save(buf, "PNG")
        (folder / f"{i}.png").write_bytes(buf.getvalue())
    scan_folder(session, settings.memes_dir)
    session.commit()
    return ["batch/0.png", "batch/1.png"]


@pytest.mark.parametrize("partial", [False, True])
def test_a_200_kb_field_is_a_row_problem(session, settings, memes, partial):
    data = f"filename,label\n{memes[0]},toxic\n{'x' * 200_000}.png,toxic\n".encode()
    report = import_annotations(session, settings.memes_dir, data, all_or_nothing=not partial)
    assert report.rows == 2 and report.problems == 1 and report.issues[0].line == 3
    assert report.applied == partial
    assert session.scalar(select(func.count()).select_from(Label).where(Label.annotator == "import")) == int(partial)


def test_a_field_past_the_upload_cap_stops_with_its_line(session, settings, memes, tmp_path, monkeypatch):
    import workbench.store.annotations as annotations

    monkeypatch.setattr(annotations, "MAX_UPLOAD_BYTES", 1 << 20)
    path = tmp_path / "big.csv"
    path.write_bytes(f'filename,label\n{memes[0]},toxic\n"{"y" * (2 << 20)}",toxic\n'.encode())
    report = import_annotations(session, settings.memes_dir, path)
    assert not report.applied and "unreadable row" in report.issues[-1].problem
    assert report.issues[-1].line >= 2


def test_many_bad_rows_keep_the_first_problems_and_count_the_rest(session, settings, memes, tmp_path):
    path = tmp_path / "bad.csv"
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("filename,label\n")
        for i in range(MAX_LISTED_ISSUES + 500):
            fh.write(f"nope/{i}.png,toxic\n")
    report = import_annotations(session, settings.memes_dir, path)
    assert len(report.issues) == MAX_LISTED_ISSUES and report.problems == MAX_LISTED_ISSUES + 500
    assert f"{MAX_LISTED_ISSUES + 500} problems" in report.summary()


def test_a_windows_1251_file_streams_like_before(session, settings, memes, tmp_path):
    path = tmp_path / "cp.csv"
    path.write_bytes(f"filename;label\r\n{memes[0]};toxic\r\n{memes[1]};non_toxic\r\n".encode("cp1251")
                     + "# комментарий\r\n".encode("cp1251"))
    report = import_annotations(session, settings.memes_dir, path, all_or_nothing=False)
    assert report.imported == 2
