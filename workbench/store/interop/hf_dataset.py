"""Hugging Face datasets, both ways.

Export: Parquet shards under OUT_DIR/data/ (`{split}-00000-of-00003.parquet`) that
`datasets.load_dataset(OUT_DIR)` loads, and a dataset card README.md whose YAML names the
features, splits and sizes. Columns: `image` (datasets' Image: the file's bytes and name),
`label` (ClassLabel non_toxic / toxic: the consensus, -1 when unlabeled), `ocr_text`,
`annotators` (people's current labels), `duplicate_group` (null when none) and per chosen
run `pred_<slug>` / `prob_<slug>`. Rows are read and written a batch at a time and a shard
closes at `shard_bytes` of image data, so memory stays flat on any size.

The train / test split keeps each near-duplicate group on one side and is stratified by
label: groups are shuffled with the seed and, per label, go to test until it holds
`test_size` of that label's memes.

Import: a local Parquet file, a folder of them, or a `save_to_disk` folder; images are
stored in the memes folder (uploads/) and labels under the annotator `import:<name>`.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from workbench.config import DATASET_ANNOTATOR_PREFIX, LABELS, SYSTEM_ANNOTATORS
from workbench.store import users
from workbench.store.db_locks import advisory_lock
from workbench.store.images import InvalidImage, validate_bytes
from workbench.store.interop.common import ImportReport, RowIssue, class_of
from workbench.store.labels import LabelContext, add_label, adjudicated_labels, consensus_labels, current_labels
from workbench.store.overlap import labels_per_meme
from workbench.store.paths import image_file
from workbench.store.schema import DuplicateGroup, DuplicateMember, Image, ModelRun, Prediction

CLASS_NAMES = ("non_toxic", "toxic")  # ClassLabel ids 0 and 1
SHARD_BYTES = 256 << 20  # image bytes per Parquet shard
# Rows read from the database and the disk at a time (one Parquet row group). Measured on 4,000
# memes of ~125 KB (bench/export_hf.py): peak RSS 580 MB with batches of 256 memes, 305 MB with 64.
BATCH_BYTES = 8 << 20
BATCH_ROWS = 256
Progress = Callable[[int, int], None]  # (rows written, rows in all)

CONTENT_WARNING = ("**Content warning.** These memes were collected to study toxicity: many contain obscene, "
                   "offensive or hateful language and images.")


@dataclass(frozen=True)
class HfExport:
    """What an export wrote: rows per split and the shard files."""

    out_dir: Path
    splits: dict[str, int]
    files: list[Path]


def run_slug(run_id: int, name: str) -> str:
    """A column-safe name for a run: its id and the ASCII letters of its name."""
    tail = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")[:40]
    return f"{run_id}_{tail}" if tail else str(run_id)


def duplicate_groups(session: Session) -> dict[int, int]:
    """image_id -> its active near-duplicate group (groups sharing a meme merge; the smallest id names them)."""
    parent: dict[int, int] = {}

    def root(x: int) -> int:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    first_group: dict[int, int] = {}
    rows = session.execute(select(DuplicateMember.group_id, DuplicateMember.image_id)
                           .join(DuplicateGroup, DuplicateGroup.id == DuplicateMember.group_id)
                           .where(DuplicateGroup.status == "active").order_by(DuplicateMember.group_id))
    for group_id, image_id in rows:
        if image_id in first_group:
            a, b = root(first_group[image_id]), root(group_id)
            parent[max(a, b)] = min(a, b)
        else:
            first_group[image_id] = group_id
            root(group_id)
    return {image_id: root(g) for image_id, g in first_group.items()}


def split_ids(labels: dict[int, str | None], groups: dict[int, int], test_size: float, seed: int) -> dict[int, str]:
    """image_id -> "train" | "test": whole duplicate groups, stratified by label (module docstring)."""
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test size must be between 0 and 1, not {test_size}")
    members: dict[tuple[str, int], list[int]] = {}
    for image_id in sorted(labels):
        key = ("g", groups[image_id]) if image_id in groups else ("i", image_id)
        members.setdefault(key, []).append(image_id)
    by_label: dict[str, list[list[int]]] = {}
    for key in sorted(members):
        ids = members[key]
        votes = [labels[i] or "" for i in ids]
        by_label.setdefault(max(sorted(set(votes)), key=votes.count), []).append(ids)
    rng = random.Random(seed)
    out: dict[int, str] = {}
    for label in sorted(by_label):
        group_list = by_label[label]
        rng.shuffle(group_list)
        want = round(test_size * sum(len(g) for g in group_list))
        taken = 0
        for ids in group_list:
            side = "test" if taken < want else "train"
            taken += len(ids) if side == "test" else 0
            out.update((i, side) for i in ids)
    return out


def _features(runs: Sequence[tuple[int, str]]) -> Any:
    import datasets

    columns: dict[str, Any] = {
        "image": datasets.Image(),
        "label": datasets.ClassLabel(names=list(CLASS_NAMES)),
        "ocr_text": datasets.Value("string"),
        "annotators": datasets.List({"annotator": datasets.Value("string"), "label": datasets.Value("string")}),
        "duplicate_group": datasets.Value("int64"),
        "file_name": datasets.Value("string"),
    }
    for run_id, name in runs:
        columns[f"pred_{run_slug(run_id, name)}"] = datasets.Value("string")
        columns[f"prob_{run_slug(run_id, name)}"] = datasets.Value("float64")
    return datasets.Features(columns)


def _shard_plan(rows: list[tuple[int, int]], shard_bytes: int) -> list[list[tuple[int, int]]]:
    """Consecutive (image id, bytes) per shard, each holding about `shard_bytes` of files (at least one shard)."""
    total = sum(size for _, size in rows)
    n = max(1, math.ceil(total / shard_bytes))
    per = total / n if total else 1
    shards: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    done = 0
    for image_id, size in rows:
        shards[min(n - 1, int(done / per))].append((image_id, size))
        done += size
    return [s for s in shards if s] or [[]]


def _batches(shard: list[tuple[int, int]]) -> Iterator[list[int]]:
    """Image ids of a shard in batches of at most BATCH_BYTES of files (or BATCH_ROWS memes): one
    Parquet row group each, so what is held at once does not grow with big files."""
    batch: list[int] = []
    held = 0
    for image_id, size in shard:
        if batch and (held + size > BATCH_BYTES or len(batch) >= BATCH_ROWS):
            yield batch
            batch, held = [], 0
        batch.append(image_id)
        held += size
    if batch:
        yield batch


def export_hf_dataset(session: Session, memes_dir: Path, out_dir: Path, run_ids: Sequence[int] = (),
                      test_size: float | None = 0.2, seed: int = 0, alpha: float | None = None,
                      shard_bytes: int = SHARD_BYTES, progress: Progress | None = None) -> HfExport:
    """Write every present meme as a Hugging Face dataset (module docstring); `test_size=None`
    writes one `train` split (memes only, no test). `alpha`: Krippendorff's alpha of the
    people's labels, for the card (workbench.analysis.agreement computes it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from workbench.store.files import atomic_write
    from workbench.store.ocr_texts import best_texts

    out_dir = Path(out_dir)
    runs = [(r.id, r.name or r.model_id) for r in session.scalars(select(ModelRun).where(
        ModelRun.id.in_(list(run_ids))).order_by(ModelRun.id))] if run_ids else []
    missing = set(run_ids) - {r for r, _ in runs}
    if missing:
        raise ValueError(f"no model run with id {', '.join(map(str, sorted(missing)))}")
    features = _features(runs)
    schema = features.arrow_schema
    present = session.execute(select(Image.id, Image.bytes).where(Image.missing.is_(False)).order_by(Image.id)).all()
    consensus = consensus_labels(session)
    labels = {i: consensus.get(i) for i, _ in present}
    groups = duplicate_groups(session)
    sides = split_ids(labels, groups, test_size, seed) if test_size is not None else {i: "train" for i in labels}
    plan = {side: _shard_plan([(i, b) for i, b in present if sides[i] == side], shard_bytes)
            for side in ("train", "test") if any(s == side for s in sides.values())}
    total, written, files = len(present), 0, []
    (out_dir / "data").mkdir(parents=True, exist_ok=True)
    for old in (out_dir / "data").glob("*.parquet"):  # a new export replaces an older one's shards
        old.unlink()
    for side, shards in plan.items():
        for n, shard in enumerate(shards):
            target = out_dir / "data" / f"{side}-{n:05d}-of-{len(shards):05d}.parquet"
            # no dictionaries: image bytes are unique, and a dictionary of them would be held in memory
            with atomic_write(target) as fh, \
                    pq.ParquetWriter(fh, schema, compression="zstd", use_dictionary=False) as writer:
                for batch_ids in _batches(shard):
                    rows = _rows(session, memes_dir, batch_ids, labels, groups, runs, best_texts)
                    writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                    written += len(batch_ids)
                    if progress:
                        progress(written, total)
            files.append(target)
    counts = {side: sum(len(s) for s in shards) for side, shards in plan.items()}
    (out_dir / "README.md").write_text(dataset_card(session, features, counts, files, runs, alpha), encoding="utf-8")
    return HfExport(out_dir, counts, files)


def _rows(session: Session, memes_dir: Path, ids: list[int], labels: dict[int, str | None], groups: dict[int, int],
          runs: Sequence[tuple[int, str]], best_texts: Callable) -> list[dict[str, Any]]:
    """One batch of dataset rows, image bytes read from disk."""
    paths = dict(session.execute(select(Image.id, Image.path).where(Image.id.in_(ids))).all())
    texts = best_texts(session, ids)
    people: dict[int, list[dict[str, str]]] = {}
    for cur in sorted(current_labels(session, ids), key=lambda c: (c.annotator, c.label_id)):
        if cur.annotator not in SYSTEM_ANNOTATORS:
            people.setdefault(cur.image_id, []).append({"annotator": cur.annotator, "label": cur.label})
    preds: dict[tuple[int, int], tuple[str, float | None]] = {}
    if runs:
        for run_id, image_id, label, prob in session.execute(
                select(Prediction.run_id, Prediction.image_id, Prediction.label, Prediction.prob_toxic)
                .where(Prediction.image_id.in_(ids), Prediction.run_id.in_([r for r, _ in runs]))
                .order_by(Prediction.id)):
            preds[(run_id, image_id)] = (label, prob)
    rows = []
    for image_id in ids:
        path = image_file(memes_dir, paths[image_id])
        label = labels.get(image_id)
        row: dict[str, Any] = {
            "image": {"bytes": path.read_bytes(), "path": path.name},
            "label": CLASS_NAMES.index(label) if label in CLASS_NAMES else -1,
            "ocr_text": texts.get(image_id, ""),
            "annotators": people.get(image_id, []),
            "duplicate_group": groups.get(image_id),
            "file_name": paths[image_id],
        }
        for run_id, name in runs:
            label_prob = preds.get((run_id, image_id), (None, None))
            row[f"pred_{run_slug(run_id, name)}"], row[f"prob_{run_slug(run_id, name)}"] = label_prob
        rows.append(row)
    return rows


def dataset_card(session: Session, features: Any, counts: dict[str, int], files: list[Path],
                 runs: Sequence[tuple[int, str]], alpha: float | None) -> str:
    """The dataset card: YAML metadata (features, splits and sizes, task, language, license to
    fill in) and how the labels were made, with a content warning."""
    import datasets
    from datasets.info import DatasetInfosDict
    from huggingface_hub import DatasetCardData

    splits = datasets.SplitDict()
    for side, n in counts.items():
        size = sum(f.stat().st_size for f in files if f.name.startswith(f"{side}-"))
        splits.add(datasets.SplitInfo(name=side, num_bytes=size, num_examples=n))
    card = DatasetCardData(
        language=["ru"], license="unknown", task_categories=["image-classification"], pretty_name="VLMemes",
        configs=[{"config_name": "default",
                  "data_files": [{"split": side, "path": f"data/{side}-*"} for side in counts]}])
    DatasetInfosDict({"default": datasets.DatasetInfo(features=features, splits=splits)}).to_dataset_card_data(card)
    k = labels_per_meme(session)
    n_adjudicated = len(adjudicated_labels(session))
    alpha_text = "not measured (fewer than two people per meme)" if alpha is None else f"{alpha:.3f}"
    run_lines = "\n".join(f"- `pred_{run_slug(r, n)}`, `prob_{run_slug(r, n)}`: run #{r} ({n})" for r, n in runs)
    sizes = "\n".join(f"| {side} | {n} |" for side, n in counts.items())
    return f"""---
{card.to_yaml()}
---

# VLMemes (exported from the VLMemes Workbench)

{CONTENT_WARNING}

Russian-language memes labeled **toxic** or **non_toxic**. Set `license` in the header above before sharing.

| split | memes |
|---|---|
{sizes}

## How the labels were made

- `label` is the consensus of the current labels: a reviewer's adjudicated label outranks every label;
  otherwise people outrank labels from folder names and imports, the majority wins and a tie goes to
  the most recent label. `-1` means unlabeled.
- Labels per meme (k): {k}. Adjudicated memes: {n_adjudicated}.
- Agreement between people (Krippendorff's alpha): {alpha_text}.
- `annotators` lists each person's current label.
- Near-duplicates share a `duplicate_group`; train and test never split a group, and the split is
  stratified by label.

## Columns

- `image`: the meme file; `file_name`: its path in the memes folder; `ocr_text`: its caption text.
{run_lines}

```python
from datasets import load_dataset
ds = load_dataset("path/to/this/folder")
```
"""


# ---- import ---------------------------------------------------------------------------------------------


def _open_dataset(path: Path) -> Any:
    """The dataset at `path` as an iterable of rows, images not decoded: a `save_to_disk` folder
    (memory-mapped), else Parquet (a file or a folder of them, streamed). ValueError naming the
    file and what is wrong when it cannot be read."""
    import datasets
    import pyarrow.parquet as pq

    path = Path(path)
    if path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file()):
        try:
            loaded = datasets.load_from_disk(str(path))
        except Exception as exc:  # noqa: BLE001 - any reader failure is the file's problem
            raise ValueError(f"{path}: not a readable save_to_disk folder: {exc}") from exc
        if isinstance(loaded, datasets.DatasetDict):
            return datasets.concatenate_datasets([loaded[k] for k in loaded])
        return loaded
    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    if not files:
        raise ValueError(f"{path}: no Parquet files and no save_to_disk folder here")
    for f in files:
        try:
            pq.ParquetFile(f).schema_arrow  # noqa: B018 - reading the footer checks the file
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"{f}: not a readable Parquet file ({type(exc).__name__}: {exc})") from exc
    return datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train", streaming=True)


def _label_names(ds: Any, column: str) -> list[str] | None:
    feature = (ds.features or {}).get(column)
    return list(feature.names) if feature is not None and hasattr(feature, "names") else None


def _image_bytes(value: Any, root: Path) -> tuple[bytes | None, str, str | None]:
    """(bytes, file name, problem) of an image cell: {bytes, path} or a path string; a path
    must stay inside the dataset's folder `root`."""
    if isinstance(value, dict):
        data, rel = value.get("bytes"), value.get("path")
    else:
        data, rel = None, value
    name = Path(str(rel)).name if rel else ""
    if data:
        return bytes(data), name, None
    if not rel:
        return None, name, "no image (neither bytes nor a path)"
    target = (root / str(rel)).resolve()
    if not target.is_relative_to(root.resolve()):
        return None, name, f"image path {str(rel)[:200]!r} escapes the dataset's folder"
    if not target.is_file():
        return None, name, f"image path {str(rel)[:200]!r} is not a file in the dataset's folder"
    return target.read_bytes(), name, None


def _rows_of(path: Path, image_column: str, label_column: str | None) -> tuple[Any, list[str] | None]:
    import datasets

    ds = _open_dataset(path)
    columns = list(ds.features or {}) if ds.features else None
    if columns is not None and image_column not in columns:
        raise ValueError(f"{path}: no column {image_column!r} (columns: {', '.join(columns)})")
    if columns is not None and label_column and label_column not in columns:
        raise ValueError(f"{path}: no column {label_column!r} (columns: {', '.join(columns)})")
    names = _label_names(ds, label_column) if label_column else None
    if columns is not None and isinstance(ds.features[image_column], datasets.Image):
        ds = ds.cast_column(image_column, datasets.Image(decode=False))
    return ds, names


def _iter_rows(ds: Any, path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number from 0, row) of the dataset; a row the reader cannot decode (a damaged Parquet
    page) is a ValueError naming the file and the row, not a traceback."""
    rows = iter(ds)
    n = 0
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except Exception as exc:  # noqa: BLE001 - any reader failure is the file's problem
            raise ValueError(f"{path}: cannot read row {n + 1}: {type(exc).__name__}: {str(exc)[:300]}") from exc
        yield n, row
        n += 1


def _label_of(value: Any, names: list[str] | None, mapping: dict[str, str]) -> tuple[str | None, str | None]:
    """(toxic | non_toxic | None for unlabeled, problem) of a label cell."""
    if value is None or value == -1:
        return None, None
    if names is not None and isinstance(value, int) and 0 <= value < len(names):
        value = names[value]
    label = class_of(value, mapping)
    if label is None:
        return None, f"unknown label {str(value)[:40]!r}; map it with --map {str(value)[:40]}=toxic (or =non_toxic)"
    return label, None


def import_hf_dataset(session: Session, memes_dir: Path, path: Path, image_column: str = "image",
                      label_column: str | None = "label", mapping: dict[str, str] | None = None,
                      name: str | None = None, all_or_nothing: bool = True, actor: str | None = None,
                      progress: Progress | None = None) -> ImportReport:
    """Bring a local Hugging Face dataset into the memes folder and the database; labels go
    under `import:<name>` (default name: the folder's or file's name). Every row is checked
    first; with problems nothing is stored unless `all_or_nothing=False`. Admins only when
    sign-in is on; recorded in the audit log."""
    from workbench.store.ingest import folder_lock, store_upload

    path = Path(path)
    name = (name or path.stem or "dataset").strip()[:100]
    annotator = f"{DATASET_ANNOTATOR_PREFIX}{name}"
    mapping = mapping or {}
    users.authorize(session, actor, users.ADMIN, "import hf-dataset",
                    {"path": str(path), "name": name, "image_column": image_column, "label_column": label_column})
    session.commit()  # the attempt is recorded even when the dataset is refused
    report = ImportReport(mode="all-or-nothing" if all_or_nothing else "valid rows only")
    ds, names = _rows_of(path, image_column, label_column)
    root = path if path.is_dir() else path.parent
    good: set[int] = set()
    for n, row in _iter_rows(ds, path):
        report.rows += 1
        data, shown, problem = _image_bytes(row.get(image_column), root)
        label, label_problem = _label_of(row.get(label_column), names, mapping) if label_column else (None, None)
        if problem is None and label_problem is None:
            try:
                validate_bytes(data or b"")
            except InvalidImage as exc:
                problem = f"not a valid image: {exc}"
        if problem or label_problem:
            report.issues.append(RowIssue(n + 1, shown, problem or label_problem or ""))
        else:
            good.add(n)
    if (report.issues and all_or_nothing) or not good:
        return report
    current = {(c.image_id, c.annotator): c.label for c in current_labels(session)}
    with folder_lock(memes_dir), advisory_lock(session.get_bind(), "workbench:ingest"):
        for n, row in _iter_rows(ds, path):
            if n not in good:
                continue
            data, shown, _ = _image_bytes(row.get(image_column), root)
            label = _label_of(row.get(label_column), names, mapping)[0] if label_column else None
            stored = store_upload(session, memes_dir, shown or f"{name}-{n + 1}.png", data or b"", source="import")
            if stored.image_id is None:
                report.issues.append(RowIssue(n + 1, shown, stored.reason))
                continue
            report.ingested += stored.status == "added"
            if label in LABELS and current.get((stored.image_id, annotator)) != label:
                add_label(session, stored.image_id, label, annotator, context=LabelContext(order="import"))
                report.imported += 1
            else:
                report.unchanged += 1
            session.commit()  # each meme on its own, as uploads are: its file is on disk now
            if progress:
                progress(n + 1, report.rows)
    report.applied = True
    return report
