"""Near-duplicate groups: real imagehash hashes through the job runner (incremental), planted
reposts of generated and real memes (re-encoded at ~70 %, cropped ~6 % + watermark) joining
their originals and nothing else, the indexed candidate search, CLIP cosine as a second signal,
"not duplicates" remembered, group labels with undo, corrupt and vanished files, the CLI and
the Duplicates page."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import imagehash
import numpy as np
import pytest
from sqlalchemy import select

from tests.support.variants import VARIANT_KINDS, make_variant, plant_reposts
from workbench.analysis import duplicates
from workbench.cli import main as cli_main
from workbench.features import near_duplicates as nd
from workbench.features.image_hashes import (
    CROP_LEVELS,
    WORK_SIDE,
    HashStep,
    ImageHashes,
    compute_hashes,
    load_hash_table,
    phash_bits,
    phash_grids,
    table_from_hashes,
    work_copy,
)
from workbench.runs.runner import run_step
from workbench.store.db import session_scope
from workbench.store.demo_memes import render_meme, write_sample_memes
from workbench.store.images import load_rgb
from workbench.store.ingest import scan_folder
from workbench.store.labels import add_label, consensus_labels, current_labels
from workbench.store.schema import DuplicateGroup, Image, ImageHash

PAGES = Path(__file__).resolve().parent.parent / "pages"


def _ingest(settings) -> dict[str, int]:
    """Scan the memes folder; file name -> image id."""
    with session_scope(settings.db_url) as session:
        scan_folder(session, settings.memes_dir)
        return {Path(p).name: i for i, p in session.execute(select(Image.id, Image.path))}


def _hash(settings, ids: list[int] | None = None, workers: int = 1):  # noqa: ANN202
    if ids is None:
        with session_scope(settings.db_url) as session:
            ids = list(session.scalars(select(Image.id).where(Image.missing.is_(False))))
    return run_step(settings.db_url, HashStep(), ids, memes_dir=settings.memes_dir, lock_dir=settings.artefacts_dir,
                    batch_size=8, workers=workers)


def _groups_by_name(settings, capsys) -> list[set[str]]:
    """`duplicates --json` as sets of file names (also checks the printed shape)."""
    assert cli_main(["duplicates", "--json", "--workers", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"groups"}
    out = []
    for group in report["groups"]:
        assert set(group) == {"id", "members"} and len(group["members"]) >= 2
        for m in group["members"]:
            assert {"image_id", "path", "label"} <= set(m) and m["label"] in ("toxic", "non_toxic", None)
            assert not Path(m["path"]).is_absolute() and (settings.memes_dir / m["path"]).exists()
        out.append({Path(m["path"]).name for m in group["members"]})
    return out


def _expected(reposts: dict[Path, Path]) -> list[set[str]]:
    return [{source.name, repost.name} for repost, source in reposts.items()]


# ------------------------------------------------------------------ hashes


def test_hashes_are_imagehash_phashes_of_the_whole_image_and_its_inner_crops() -> None:
    image = render_meme("КОГДА ПЯТНИЦА", seed=1, size=(300, 200))
    got = compute_hashes(image)
    assert got.short.shape == (len(CROP_LEVELS),) and got.long.shape == (len(CROP_LEVELS), 4) and not got.flat
    grey = image.convert("L")
    differing = []
    for level, words in zip(CROP_LEVELS, got.long):
        w, h = grey.size
        crop = grey.crop((round(w * level), round(h * level), w - round(w * level), h - round(h * level)))
        ref = imagehash.phash(crop, hash_size=16)
        bits = np.unpackbits(words.astype(">u8").view(np.uint8)).astype(bool).reshape(16, 16)
        differing.append(imagehash.ImageHash(bits) - ref)
    # Ours hashes a copy reduced to a short side of 64-127 px, scaled bilinearly: bits near the median may
    # differ from imagehash's full-resolution pHash of the crop (median 11 of 256 measured), far below the
    # 0.25 (64 bits) that joins a pair.
    assert max(differing) <= 32 and sum(differing) / len(differing) <= 16, differing
    round_trip = ImageHashes.from_blobs(*got.to_blobs(), got.flat)
    assert np.array_equal(round_trip.short, got.short) and np.array_equal(round_trip.long, got.long)
    from PIL import Image as PILImage

    assert compute_hashes(PILImage.new("RGB", (64, 64), (200, 30, 30))).flat  # no detail: never grouped


def _assert_imagehash_bits(images) -> None:  # noqa: ANN001
    from PIL import Image as PILImage

    for image in images:
        grids, _ = phash_grids(work_copy(image))
        for grid, ours in zip(grids, phash_bits(grids), strict=True):
            assert np.array_equal(ours, imagehash.phash(PILImage.fromarray(grid.astype(np.uint8)), hash_size=16).hash)


def test_batched_phash_is_imagehash_phash_bit_for_bit(tmp_path) -> None:
    """The five grids' pHashes are computed at once; each must be exactly imagehash's phash of that grid
    (here on generated memes, as PNG and as JPEGs decoded at reduced scale the way hashing decodes them)."""
    images = []
    for i in range(12):
        meme = render_meme(f"мем {i}", seed=i, size=(120 + 37 * i, 300 - 11 * i))
        meme.save(tmp_path / f"{i}.jpg", "JPEG", quality=85)
        images += [meme, load_rgb(tmp_path / f"{i}.jpg", min_side=WORK_SIDE)]
    _assert_imagehash_bits(images)


def test_batched_phash_is_imagehash_phash_on_real_memes(real_memes) -> None:
    _assert_imagehash_bits([load_rgb(path, min_side=WORK_SIDE) for path in sorted(real_memes.rglob("*.*"))])


def test_hashing_is_incremental_and_uses_both_cores(settings) -> None:
    write_sample_memes(settings.memes_dir, n=6, seed=2, size=(96, 96))
    _ingest(settings)
    first = _hash(settings, workers=2)
    assert (first.status, first.done, first.failed) == ("done", 6, 0)
    again = _hash(settings)
    assert (again.done, again.skipped) == (0, 6)  # nothing new: nothing hashed
    write_sample_memes(settings.memes_dir, n=2, seed=3, size=(96, 96))
    _ingest(settings)
    third = _hash(settings)
    assert (third.done, third.skipped) == (2, 6)
    with session_scope(settings.db_url) as session:
        assert len(load_hash_table(session)) == 8
        assert session.scalar(select(ImageHash.duration_ms).limit(1)) is not None


# ------------------------------------------------------------------ planted reposts


def test_reposts_of_generated_memes_join_their_originals_and_nothing_else(settings, capsys) -> None:
    memes = write_sample_memes(settings.memes_dir, n=14, seed=4, size=(256, 256))
    reposts = plant_reposts([m.path for m in memes[:8]])  # 4 re-encoded, 4 cropped + watermarked
    _ingest(settings)
    groups = _groups_by_name(settings, capsys)
    assert sorted(map(sorted, groups)) == sorted(map(sorted, _expected(reposts)))
    # labels come with the groups: a repost sits in its original's folder, so they agree
    with session_scope(settings.db_url) as session:
        views = duplicates.group_views(session)
        assert all(not v.conflict and len(v.consensus_labels) == 1 for v in views)
        assert {v.params["threshold"] for v in views} == {nd.DEFAULT_THRESHOLD}
        assert all(v.params["hash"].startswith("phash:") for v in views)


def test_reposts_of_real_memes_join_their_originals(settings, real_memes, capsys) -> None:
    sources = sorted(real_memes.rglob("*.png"))[::4][:12]  # a spread-out dozen of the 51
    for path in sources:
        target = settings.memes_dir / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    copied = sorted(settings.memes_dir.rglob("*.png"))
    reposts = plant_reposts(copied[:8], seed=7)
    _ingest(settings)
    assert sorted(map(sorted, _groups_by_name(settings, capsys))) == sorted(map(sorted, _expected(reposts)))


def test_candidate_search_is_indexed_and_the_check_separates_copies_from_different_memes() -> None:
    rng = random.Random(0)
    originals = [render_meme(f"мем номер {k}", seed=100 + k, size=(192, 192)) for k in range(40)]
    hashes, truth = [compute_hashes(im) for im in originals], {}
    for k, im in enumerate(originals[:10]):
        from io import BytesIO

        from PIL import Image as PILImage

        variant = PILImage.open(BytesIO(make_variant(VARIANT_KINDS[k % 2], im, rng))).convert("RGB")
        truth[len(hashes)] = k
        hashes.append(compute_hashes(variant))
    table = table_from_hashes(list(range(len(hashes))), hashes)
    pairs = nd.candidate_pairs(table.short)
    n = len(hashes)
    assert len(pairs) < n * (n - 1) // 2 / 10  # a small share of all pairs is ever compared
    found = {tuple(p) for p in pairs.tolist()}
    assert all((k, v) in found for v, k in truth.items())  # every repost is a candidate of its original
    dist = nd.pair_distances(table.long, pairs)
    same = np.array([truth.get(b) == a for a, b in pairs.tolist()])
    assert dist[same].max() < nd.DEFAULT_THRESHOLD < dist[~same].min()
    result = nd.find_groups(table, nd.GroupingParams())
    assert sorted(sorted(g.members) for g in result.groups) == sorted(sorted((k, v)) for v, k in truth.items())


def test_clip_cosine_vetoes_and_confirms(settings) -> None:
    base = [render_meme(f"картинка {k}", seed=200 + k, size=(160, 160)) for k in range(3)]
    rng = random.Random(1)
    from io import BytesIO

    from PIL import Image as PILImage

    copies = [PILImage.open(BytesIO(make_variant("reencode", im, rng))).convert("RGB") for im in base]
    table = table_from_hashes(list(range(6)), [compute_hashes(im) for im in base + copies])
    same = np.eye(8, dtype=np.float32)
    vectors = {0: same[0], 3: same[0] + 0.01, 1: same[1], 4: same[5]}  # pair (1, 4): CLIP says unrelated
    result = nd.find_groups(table, nd.GroupingParams(), vectors)
    assert sorted(sorted(g.members) for g in result.groups) == [[0, 3], [2, 5]]
    assert result.groups[0].members[0][1] == pytest.approx(1.0, abs=1e-3)  # the cosine is kept per member
    # a pair just past the hash threshold joins when CLIP agrees strongly (and only then)
    cropped = PILImage.open(BytesIO(make_variant("crop_watermark", base[0], rng))).convert("RGB")
    pair = table_from_hashes([0, 3], [compute_hashes(base[0]), compute_hashes(cropped)])
    d = float(nd.pair_distances(pair.long, np.array([[0, 1]]))[0])
    strict = nd.GroupingParams(threshold=round(max(0.02, d - 0.02), 3), slack=0.06)
    assert strict.threshold < d <= strict.threshold + strict.slack
    assert nd.find_groups(pair, strict).groups == []  # hashes alone: just too far
    assert [sorted(g.members) for g in nd.find_groups(pair, strict, {0: same[0], 3: same[0]}).groups] == [[0, 3]]
    assert nd.find_groups(pair, strict, {0: same[0], 3: same[2]}).groups == []


@pytest.mark.parametrize("kwargs,match", [({"threshold": 0.9}, "threshold must be between"),
                                          ({"threshold": 0.0}, "threshold must be between"),
                                          ({"veto_cosine": 1.5}, "cosine between -1 and 1"),
                                          ({"slack": 0.5}, "slack must be")])
def test_parameters_out_of_range_are_refused(kwargs, match) -> None:
    with pytest.raises(nd.GroupingError, match=match):
        nd.GroupingParams(**kwargs)


def test_cli_refuses_a_threshold_out_of_range(settings, capsys) -> None:
    assert cli_main(["duplicates", "--threshold", "0.9"]) == 2
    assert "threshold must be between 0.02 and 0.4" in capsys.readouterr().err


# ------------------------------------------------------------------ review, dismissal, history


def test_merge_never_joins_a_pair_marked_not_duplicates() -> None:
    edges = [(1, 2, 0.05, None), (2, 3, 0.06, None), (3, 4, 0.30, None)]
    assert [sorted(g.members) for g in nd.merge_pairs(edges)] == [[1, 2, 3, 4]]
    # 1 and 3 are different memes: 2 goes with 1 (closer); 3 and 4 stay together
    assert [sorted(g.members) for g in nd.merge_pairs(edges, {(1, 3)})] == [[1, 2], [3, 4]]


def test_group_label_dismissal_and_history(settings, capsys) -> None:
    memes = write_sample_memes(settings.memes_dir, n=6, seed=5, size=(192, 192), into_label_folders=False)
    reposts = plant_reposts([m.path for m in memes[:3]], seed=2)
    names = _ingest(settings)
    _groups_by_name(settings, capsys)
    repost_of = {source: repost for repost, source in reposts.items()}
    with session_scope(settings.db_url) as session:
        add_label(session, names[memes[0].path.name], "toxic", "bob")  # the original and its repost labeled
        add_label(session, names[repost_of[memes[0].path].name], "non_toxic", "carol")  # differently: a conflict
        views = duplicates.group_views(session)
    assert len(views) == 3
    conflicted = next(v for v in views if names[memes[0].path.name] in {m.image_id for m in v.members})
    second, third = sorted((v for v in views if v.id != conflicted.id), key=lambda v: v.id)
    assert views[0].id == conflicted.id and views[0].conflict  # conflicting groups come first
    with session_scope(settings.db_url) as session:
        label_ids = duplicates.apply_group_label(session, second.id, "toxic", "alice")
        assert len(label_ids) == 2
        labels = consensus_labels(session)
        assert all(labels[m.image_id] == "toxic" for m in second.members)
        assert duplicates.undo_group_label(session, second.id, "alice") == sorted(m.image_id for m in second.members)
        assert not {c.image_id for c in current_labels(session) if c.annotator == "alice"} & \
            {m.image_id for m in second.members}
        duplicates.apply_group_label(session, conflicted.id, "toxic", "alice")  # resolves the conflict
        assert not duplicates.group_views(session, group_ids=[conflicted.id])[0].conflict
        # near copies for the Label page
        (copy,) = duplicates.near_copies(session, names[memes[2].path.name])
        assert copy.path.endswith(repost_of[memes[2].path].name)
        assert duplicates.near_copies(session, names[memes[5].path.name]) == []
        assert nd.dismiss_group(session, third.id, "alice") == 1
    # a dismissed group is never regrouped; the others are kept with their ids
    assert cli_main(["duplicates", "--workers", "1"]) == 0
    capsys.readouterr()
    with session_scope(settings.db_url) as session:
        active = nd.active_groups(session)
        assert set(active) == {conflicted.id, second.id}
        assert session.get(DuplicateGroup, third.id).status == "dismissed"
        with pytest.raises(nd.GroupingError, match="no active"):
            nd.dismiss_group(session, third.id, "alice")


def test_a_group_dismissed_while_a_grouping_computes_is_not_stored_again(settings, capsys) -> None:
    """regroup reads, computes with no transaction open, then writes: a "not duplicates" given in between
    (another tab) must still keep those memes apart in what it stores."""
    from workbench.store.db import read_scope

    memes = write_sample_memes(settings.memes_dir, n=4, seed=9, size=(192, 192), into_label_folders=False)
    plant_reposts([m.path for m in memes[:2]], seed=3)
    _ingest(settings)
    assert len(_groups_by_name(settings, capsys)) == 2
    params = nd.GroupingParams()
    with read_scope(settings.db_url) as session:
        inputs = nd.grouping_inputs(session, params)
    result = nd.find_groups(inputs.table, params, inputs.vectors or None, inputs.cannot)  # no transaction open
    with session_scope(settings.db_url) as session:  # meanwhile, someone marks a group "not duplicates"
        gone = min(nd.active_groups(session))
        members = nd.active_groups(session)[gone]
        nd.dismiss_group(session, gone, "alice")
    assert any(set(g.members) == members for g in result.groups)  # the computed grouping still has it
    with session_scope(settings.db_url) as session:
        saved = nd.store_grouping(session, result, inputs.cannot)
        active = nd.active_groups(session)
    assert members not in active.values() and len(active) == 1 and saved.created == []


def test_corrupt_and_vanished_files_are_per_image_errors_and_groups_keep_history(settings, capsys) -> None:
    memes = write_sample_memes(settings.memes_dir, n=3, seed=6, size=(192, 192))
    (repost,) = plant_reposts([memes[0].path], kinds=("reencode",))
    names = _ingest(settings)
    assert len(_groups_by_name(settings, capsys)) == 1
    repost.unlink()  # the repost is deleted from disk; a rescan marks it missing
    later = write_sample_memes(settings.memes_dir, n=2, seed=61, size=(192, 192))
    names = _ingest(settings)
    later[0].path.write_bytes(later[0].path.read_bytes()[:300])  # corrupted after the scan
    later[1].path.unlink()  # vanished after the scan
    assert cli_main(["duplicates", "--json", "--workers", "1"]) == 1  # failed images: exit 1, groups still printed
    out = capsys.readouterr()
    assert "2 failed" in out.err and f"image {names[later[1].path.name]}: cannot read image: FileNotFoundError" in out.err
    (group,) = json.loads(out.out)["groups"]
    gone = next(m for m in group["members"] if m["image_id"] == names[repost.name])
    assert gone["missing"] is True  # the group keeps its history: the deleted member stays in it
    with session_scope(settings.db_url) as session:
        errors = dict(session.execute(select(ImageHash.image_id, ImageHash.error).where(ImageHash.error.is_not(None))).all())
    assert set(errors) == {names[later[0].path.name], names[later[1].path.name]}


# ------------------------------------------------------------------ pages


def test_duplicates_page_finds_groups_and_labels_a_whole_group(settings, clear_streamlit_cache) -> None:
    from streamlit.testing.v1 import AppTest

    memes = write_sample_memes(settings.memes_dir, n=4, seed=8, size=(192, 192), into_label_folders=False)
    plant_reposts([m.path for m in memes[:2]])
    _ingest(settings)
    at = AppTest.from_file(str(PAGES / "11_Duplicates.py"), default_timeout=120)
    at.session_state["annotator"] = "carol"
    at.run()
    assert not at.exception
    assert any("No near-duplicate groups yet" in i.value for i in at.info)
    # the empty state points at the button: the box that holds it is open (it was collapsed)
    assert _finder(at).proto.expanded
    at.button(key="dup_run").click().run()  # hash (job runner, both cores) and group
    assert not at.exception
    assert any("Grouped 6 memes" in s.value and "2 groups (2 new" in s.value for s in at.success)
    assert any("2 groups" in c.value for c in at.caption)
    with session_scope(settings.db_url) as session:
        gid = min(nd.active_groups(session))
        members = nd.active_groups(session)[gid]
    at.button(key=f"dup_{gid}_toxic").click().run()
    assert not at.exception
    with session_scope(settings.db_url) as session:
        assert {i: consensus_labels(session).get(i) for i in members} == {i: "toxic" for i in members}
    at.button(key=f"dup_{gid}_undo").click().run()
    with session_scope(settings.db_url) as session:
        assert not set(consensus_labels(session)) & members
    at.button(key=f"dup_{gid}_dismiss").click().run()
    assert not at.exception
    with session_scope(settings.db_url) as session:
        assert gid not in nd.active_groups(session)
    again = AppTest.from_file(str(PAGES / "11_Duplicates.py"), default_timeout=120)
    again.session_state["annotator"] = "carol"
    again.run()
    assert not again.exception and not _finder(again).proto.expanded  # groups to show: the box is closed


def _finder(at):  # noqa: ANN001, ANN202
    return next(e for e in at.expander if e.label == "Find near-duplicates")


def test_near_copies_panel_shows_count_labels_and_links(settings, clear_streamlit_cache, capsys) -> None:
    from streamlit.testing.v1 import AppTest

    memes = write_sample_memes(settings.memes_dir, n=2, seed=9, size=(128, 128))
    plant_reposts([memes[0].path, memes[0].path], kinds=("reencode", "crop_watermark"))
    names = _ingest(settings)
    _groups_by_name(settings, capsys)
    script = ("from workbench import ui\nfrom workbench.ui.review import near_copies_panel\n"
              "ctx = ui.bootstrap('Label')\nnear_copies_panel(ctx, {image_id})\n")
    at = AppTest.from_string(script.format(image_id=names[memes[0].path.name]), default_timeout=60).run()
    assert not at.exception
    assert at.expander[0].label == f"2 near-copies · labeled {memes[0].label}"
    assert len(at.get("image")) == 2
    lonely = AppTest.from_string(script.format(image_id=names[memes[1].path.name]), default_timeout=60).run()
    assert not lonely.exception and not lonely.expander
    assert load_rgb(memes[0].path).size == (128, 128)


def test_label_page_shows_near_copies_with_their_labels(settings, session, clear_streamlit_cache) -> None:
    from streamlit.testing.v1 import AppTest

    from workbench.store.schema import DuplicateMember

    write_sample_memes(settings.memes_dir, n=4, seed=11, size=(64, 64))
    scan_folder(session, settings.memes_dir)
    ids = sorted(session.scalars(select(Image.id)))
    group = DuplicateGroup(status="active", params={"threshold": 0.25})
    session.add(group)
    session.flush()
    session.add_all([DuplicateMember(group_id=group.id, image_id=i, distance=0.0) for i in ids[:2]])
    session.commit()
    copy_label = consensus_labels(session, [ids[1]]).get(ids[1]) or "unlabeled"
    session.commit()  # SQLite BEGIN IMMEDIATE: release the write lock before the page writes

    at = AppTest.from_file(str(PAGES / "1_Label.py"), default_timeout=60)
    at.query_params["image"] = str(ids[0])
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    panels = [e.label for e in at.expander if "near-cop" in e.label]
    assert panels == [f"1 near-copy · labeled {copy_label}"]

    at.query_params["image"] = str(ids[2])  # a meme without copies shows no panel
    at.run()
    assert not [e.label for e in at.expander if "near-cop" in e.label]
