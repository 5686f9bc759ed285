"""annotations.csv import/export and the consensus rule (workbench.store.labels)."""

from __future__ import annotations

import pytest

from workbench.store.annotations import export_annotations, import_annotations
from workbench.store.demo_memes import render_meme, write_sample_memes
from workbench.store.ingest import scan_folder
from workbench.store.labels import add_label, consensus_labels, undo_last


@pytest.fixture
def unlabeled(session, settings) -> list[str]:
    """Six ingested memes without any label; returns their relative paths, sorted."""
    write_sample_memes(settings.memes_dir, n=6, size=(64, 64), into_label_folders=False)
    report = scan_folder(session, settings.memes_dir)
    return sorted(f.name for f in report.files)


def test_import_export_round_trip_is_byte_for_byte(session, settings, unlabeled) -> None:
    lines = ["filename,label"] + [f"{p},{'toxic' if i % 2 else 'non_toxic'}" for i, p in enumerate(unlabeled[:5])]
    original = ("\n".join(lines) + "\n").encode("utf-8")
    report = import_annotations(session, settings.memes_dir, original)
    assert report.applied and report.imported == 5 and not report.issues
    assert export_annotations(session).encode("utf-8") == original
    # Importing the same file again changes nothing.
    again = import_annotations(session, settings.memes_dir, original)
    assert again.applied and again.imported == 0 and again.unchanged == 5


def test_import_all_or_nothing_versus_valid_rows(session, settings, unlabeled) -> None:
    data = "\n".join([
        "filename,label",
        f"{unlabeled[0]},toxic",
        f"{unlabeled[1]},maybe",          # bad label
        "../outside.png,toxic",           # escapes the memes dir
        "unlabeled/nope.png,toxic",       # no such file
        f"{unlabeled[2]},non_toxic",
    ]).encode()
    strict = import_annotations(session, settings.memes_dir, data)
    assert not strict.applied and consensus_labels(session) == {}
    assert [i.line for i in strict.issues] == [3, 4, 5]
    assert "unknown label" in strict.issues[0].problem
    assert "outside" in strict.issues[1].problem
    assert "no such file" in strict.issues[2].problem
    partial = import_annotations(session, settings.memes_dir, data, all_or_nothing=False)
    assert partial.applied and partial.imported == 2 and len(partial.issues) == 3
    assert sorted(consensus_labels(session).values()) == ["non_toxic", "toxic"]


def test_import_accepts_cp1251_semicolons_and_reports_bad_header(session, settings, unlabeled) -> None:
    data = f"filename;label\r\n{unlabeled[0]};toxic\r\n".encode("cp1251")
    assert import_annotations(session, settings.memes_dir, data).imported == 1
    bad = import_annotations(session, settings.memes_dir, b"name,class\nx.png,toxic\n")
    assert not bad.applied and "filename and label" in bad.issues[0].problem


# Each case: label events in order as (annotator, label) or ("undo", annotator); expected consensus.
CONSENSUS_CASES = [
    ("folder only", [("folder", "toxic")], "toxic"),
    ("a person outranks the folder", [("folder", "toxic"), ("alice", "non_toxic")], "non_toxic"),
    ("a person outranks import", [("alice", "toxic"), ("import", "non_toxic")], "toxic"),
    ("majority of people", [("alice", "toxic"), ("bob", "non_toxic"), ("carol", "toxic")], "toxic"),
    ("majority beats recency", [("alice", "toxic"), ("carol", "toxic"), ("bob", "non_toxic")], "toxic"),
    ("tie -> most recent", [("alice", "toxic"), ("bob", "non_toxic")], "non_toxic"),
    ("tie -> most recent (other order)", [("bob", "non_toxic"), ("alice", "toxic")], "toxic"),
    ("relabel: latest per person counts", [("alice", "toxic"), ("alice", "non_toxic")], "non_toxic"),
    ("relabel ends a tie", [("alice", "toxic"), ("bob", "non_toxic"), ("alice", "non_toxic")], "non_toxic"),
    ("undo falls back to the folder", [("folder", "toxic"), ("alice", "non_toxic"), ("undo", "alice")], "toxic"),
    ("undo restores a relabel", [("alice", "toxic"), ("alice", "non_toxic"), ("undo", "alice")], "toxic"),
    ("system tie -> most recent", [("folder", "toxic"), ("import", "non_toxic")], "non_toxic"),
    ("all undone -> unlabeled", [("alice", "toxic"), ("undo", "alice")], None),
]


@pytest.mark.parametrize(("case", "events", "expected"), CONSENSUS_CASES, ids=[c[0] for c in CONSENSUS_CASES])
def test_consensus_rule(session, unlabeled, case, events, expected) -> None:
    image_id, other_id = 1, 2
    add_label(session, other_id, "toxic", "zoe")  # another image's labels must not interfere
    before = consensus_labels(session)  # fills the cache, which later label changes must invalidate
    assert image_id not in before
    for who, what in events:
        if who == "undo":
            undo_last(session, what, image_id)
        else:
            add_label(session, image_id, what, who)
    session.commit()
    full = consensus_labels(session)
    assert full.get(image_id) == expected
    assert consensus_labels(session, [image_id]).get(image_id) == expected
    assert full[other_id] == "toxic"


def test_export_lists_consensus_and_skips_unlabeled(session, settings, unlabeled) -> None:
    add_label(session, 1, "toxic", "folder")
    add_label(session, 1, "non_toxic", "alice")
    add_label(session, 3, "toxic", "bob")
    session.commit()
    paths = {i + 1: p for i, p in enumerate(sorted(unlabeled))}  # ids follow scan order (sorted paths)
    assert export_annotations(session) == f"filename,label\n{paths[1]},non_toxic\n{paths[3]},toxic\n"


def test_formula_guarded_file_names_survive_export_then_import(session, settings, tmp_path) -> None:
    """A root-level file named like a formula is exported as '-… / '=… (spreadsheet-safe),
    and importing that export into a fresh catalogue maps it back to the real file."""
    from workbench.store.demo_memes import render_meme

    for name in ("-minus.png", "=sum.png", "+plus.png", "@at.png"):
        render_meme("мем", seed=len(name), size=(64, 64)).save(settings.memes_dir / name)
    scan_folder(session, settings.memes_dir)
    ids = sorted(consensus_labels(session) or [])
    assert ids == []  # root files carry no folder label
    from sqlalchemy import select

    from workbench.store.schema import Image

    for i, image_id in enumerate(session.scalars(select(Image.id).order_by(Image.path))):
        add_label(session, image_id, "toxic" if i % 2 else "non_toxic", "ann")
    session.commit()
    exported = export_annotations(session)
    assert "'-minus.png" in exported and "'=sum.png" in exported
    # Same files, fresh labels: the exported file imports cleanly and reproduces itself.
    for image_id in list(session.scalars(select(Image.id))):
        undo_last(session, "ann", image_id)
    session.commit()
    report = import_annotations(session, settings.memes_dir, exported.encode("utf-8"))
    assert report.applied and not report.issues and report.imported == 4
    assert export_annotations(session) == exported


def test_semicolon_cp1251_file_with_cyrillic_names_and_commas_imports(session, settings, unlabeled) -> None:
    """Russian-locale Excel: Windows-1251, semicolons, names that hold commas; one row with a
    stray semicolon is blamed on its own line and the rest can still go in."""
    render_meme("мем", seed=1, size=(64, 64)).save(settings.memes_dir / "кот, смешной.png")
    rows = ["filename;label", "кот, смешной.png;toxic", f"{unlabeled[0]};non_toxic", f"stray;{unlabeled[1]};toxic"]
    data = "\r\n".join(rows).encode("cp1251")
    strict = import_annotations(session, settings.memes_dir, data)
    assert not strict.applied and [i.line for i in strict.issues] == [4]
    partial = import_annotations(session, settings.memes_dir, data, all_or_nothing=False)
    assert partial.applied and (partial.imported, partial.ingested) == (2, 1) and len(partial.issues) == 1
    assert "кот, смешной.png,toxic" in export_annotations(session).replace('"', "")


@pytest.mark.parametrize(("text", "imported"), [
    ("filename\tlabel\n{0}\ttoxic\n", 1),  # tab-separated
    ('"filename","label"\n"{0}","toxic"\n', 1),  # quoted everything
    ("filename;label;note, with comma\n{0};toxic;ok\n", 1),  # both delimiters in the header
])
def test_import_guesses_the_delimiter(session, settings, unlabeled, text, imported) -> None:
    report = import_annotations(session, settings.memes_dir, text.format(unlabeled[0]).encode())
    assert report.applied and not report.issues and report.imported == imported


@pytest.mark.parametrize("text", ["filename\n{0}\n", "", "\n\n"])
def test_a_file_without_a_delimiter_is_read_as_commas_and_refused(session, settings, unlabeled, text) -> None:
    report = import_annotations(session, settings.memes_dir, text.format(unlabeled[0]).encode())
    assert not report.applied and "filename and label" in report.issues[0].problem
