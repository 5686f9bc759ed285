"""Label Studio, both ways.

Export (`export_label_studio`) writes three files into a folder:
- `tasks.json` in Label Studio's import format: `data.image` (a URL: Label Studio's
  local-files URL `/data/local-files/?d=<memes folder name>/<path>`, served when
  LOCAL_FILES_DOCUMENT_ROOT is the memes folder's parent; or `image_url_prefix` + path),
  `data.ocr_text`, `data.meme_id`; one prediction per chosen run (`model_version` = the
  run's title, `score` = P(toxic), the class as a `choices` result); and people's current
  labels as annotations (`completed_by` = their email, `id` = the label's id, which Label
  Studio keeps as the annotation's `import_id`).
- `label_config.xml`: the image, the OCR text and Choices Toxic / Neutral.
- `README.md`: how to import them.

Import (`import_label_studio`) reads Label Studio's JSON export. The annotator is the
`completed_by` email, or `ls-user-<id>` when only an id is given; an annotation whose
`import_id` names one of our labels on the same meme is that label's person. Cancelled and
skipped annotations are skipped. A task's meme is found by `data.meme_id`, else by file
name (Label Studio's upload prefix `xxxxxxxx-` stripped), else by the sha256 of the local
file its URL names. `lead_time` becomes the label's seconds spent. Problems are reported per
task; nothing is stored when there are any, unless `all_or_nothing=False`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlparse
from xml.sax.saxutils import quoteattr

from sqlalchemy import select
from sqlalchemy.orm import Session

from workbench.config import SYSTEM_ANNOTATORS
from workbench.errors import PermissionDenied
from workbench.store import users
from workbench.store.db import in_batches
from workbench.store.files import atomic_write
from workbench.store.images import sha256_file
from workbench.store.interop.common import ImportReport, MemeIndex, RowIssue, class_of, meme_index, run_title
from workbench.store.labels import LabelContext, LabelError, add_label, current_labels
from workbench.store.ocr_texts import best_texts
from workbench.store.schema import Image, Label, ModelRun, Prediction

CHOICES = {"toxic": "Toxic", "non_toxic": "Neutral"}  # our class -> the label config's choice
FROM_NAME, TO_NAME = "toxicity", "image"
LOCAL_FILES_URL = "/data/local-files/?d="
_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")  # Label Studio prefixes uploaded files with 8 hex digits

LABEL_CONFIG = f"""<View>
  <Image name="{TO_NAME}" value="$image" maxWidth="800px"/>
  <Header value="Text on the meme"/>
  <Text name="ocr_text" value="$ocr_text"/>
  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single" showInline="true">
    <Choice value={quoteattr(CHOICES["toxic"])} hotkey="1"/>
    <Choice value={quoteattr(CHOICES["non_toxic"])} hotkey="0"/>
  </Choices>
</View>
"""

HOW_TO = """# Importing these memes into Label Studio

1. Start Label Studio so that it serves the memes folder's files:

       LOCAL_FILES_SERVING_ENABLED=true LOCAL_FILES_DOCUMENT_ROOT={root} label-studio start

2. Create a project; under *Settings → Labeling Interface → Code* paste `label_config.xml`.
3. Under *Settings → Cloud Storage* add a **Local files** source storage with the absolute path
   `{memes_dir}` (do not sync it: the tasks below already name the files).
4. *Import* `tasks.json`. Each task shows the meme, its OCR text and every chosen run's prediction
   (`model_version` = the run, `score` = P(toxic)); people's current labels come as annotations
   (by email, when that person is a member of the Label Studio organisation).
5. When done, *Export* → JSON and bring the labels back with

       python -m workbench import-annotations --format label-studio EXPORT.json

Images given with `--image-url-prefix` are loaded from that prefix instead (steps 1 and 3 are then not needed).
"""


@dataclass(frozen=True)
class LsExport:
    """What an export wrote."""

    out_dir: Path
    tasks: int
    predictions: int
    annotations: int


def _choice_result(label: str) -> list[dict[str, Any]]:
    return [{"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices", "value": {"choices": [CHOICES[label]]}}]


def image_url(rel: str, memes_dir: Path, image_url_prefix: str | None = None) -> str:
    """A meme's URL in a task: the prefix + its path, else Label Studio's local-files URL
    relative to the memes folder's parent (the document root the README names)."""
    if image_url_prefix:
        return image_url_prefix + quote(rel)
    return LOCAL_FILES_URL + quote(f"{Path(memes_dir).name}/{rel}")


def export_label_studio(session: Session, memes_dir: Path, out_dir: Path, run_ids: Sequence[int] = (),
                        image_url_prefix: str | None = None, progress: Any = None) -> LsExport:
    """Write tasks.json, label_config.xml and README.md into `out_dir` (module docstring)."""
    runs = {r.id: r for r in session.scalars(select(ModelRun).where(ModelRun.id.in_(list(run_ids))))}
    missing = set(run_ids) - set(runs)
    if missing:
        raise ValueError(f"no model run with id {', '.join(map(str, sorted(missing)))}")
    ids = list(session.scalars(select(Image.id).where(Image.missing.is_(False)).order_by(Image.id)))
    out_dir = Path(out_dir)
    n_pred = n_ann = 0
    with atomic_write(out_dir / "tasks.json", "w", encoding="utf-8") as fh:
        fh.write("[")  # streamed a batch at a time: memory stays flat on many memes
        first = True
        for done, batch in enumerate(in_batches(ids, 500)):
            tasks = _tasks(session, memes_dir, batch, runs, image_url_prefix)
            for task in tasks:
                n_pred += len(task["predictions"])
                n_ann += len(task["annotations"])
                fh.write(("\n" if first else ",\n") + json.dumps(task, ensure_ascii=False))
                first = False
            if progress:
                progress(min(len(ids), (done + 1) * 500), len(ids))
        fh.write("\n]\n")
    (out_dir / "label_config.xml").write_text(LABEL_CONFIG, encoding="utf-8")
    memes_dir = Path(memes_dir).resolve()
    (out_dir / "README.md").write_text(HOW_TO.format(root=memes_dir.parent, memes_dir=memes_dir), encoding="utf-8")
    return LsExport(out_dir, len(ids), n_pred, n_ann)


def _tasks(session: Session, memes_dir: Path, ids: list[int], runs: dict[int, ModelRun],
           image_url_prefix: str | None) -> list[dict[str, Any]]:
    paths = dict(session.execute(select(Image.id, Image.path).where(Image.id.in_(ids))).all())
    texts = best_texts(session, ids)
    people: dict[int, list[Any]] = {}
    for cur in sorted(current_labels(session, ids), key=lambda c: c.label_id):
        if cur.annotator not in SYSTEM_ANNOTATORS:
            people.setdefault(cur.image_id, []).append(cur)
    preds: dict[int, list[dict[str, Any]]] = {}
    if runs:
        rows = session.execute(select(Prediction.image_id, Prediction.run_id, Prediction.label, Prediction.prob_toxic)
                               .where(Prediction.image_id.in_(ids), Prediction.run_id.in_(list(runs)),
                                      Prediction.error.is_(None), Prediction.label.in_(list(CHOICES)))
                               .order_by(Prediction.run_id, Prediction.id))
        for image_id, run_id, label, prob in rows:
            run = runs[run_id]
            pred: dict[str, Any] = {"model_version": run_title(run.id, run.kind, run.name, run.model_id),
                                    "result": _choice_result(label)}
            if prob is not None:
                pred["score"] = prob
            preds.setdefault(image_id, []).append(pred)
    tasks = []
    for image_id in ids:
        annotations = []
        for cur in people.get(image_id, []):
            ann: dict[str, Any] = {"id": cur.label_id, "result": _choice_result(cur.label)}
            if "@" in cur.annotator:
                ann["completed_by"] = {"email": cur.annotator}
            annotations.append(ann)
        tasks.append({
            "data": {"image": image_url(paths[image_id], memes_dir, image_url_prefix),
                     "ocr_text": texts.get(image_id, ""), "meme_id": image_id},
            "predictions": preds.get(image_id, []),
            "annotations": annotations,
        })
    return tasks


# ---- import ---------------------------------------------------------------------------------------------


def read_export(path: Path) -> list[dict[str, Any]]:
    """Label Studio's JSON export (a list of tasks). ValueError naming the file and the place
    (line, column) when it is not JSON or not a list of tasks."""
    try:
        tasks = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    if isinstance(tasks, dict):
        tasks = [tasks]
    if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        raise ValueError(f"{path}: expected a list of tasks (Label Studio's JSON export)")
    return tasks


def _local_file(url: str, document_root: Path | None) -> Path | None:
    """The local file a local-files URL names under `document_root`, if it stays inside it."""
    if not document_root or LOCAL_FILES_URL.split("?")[0] not in url:
        return None
    rel = unquote(parse_qs(urlparse(url).query).get("d", [""])[0])
    root = Path(document_root).resolve()
    target = (root / rel).resolve()
    return target if rel and target.is_relative_to(root) and target.is_file() else None


def match_task(task: dict[str, Any], index: MemeIndex, document_root: Path | None = None) -> int | None:
    """The meme a task is about: data.meme_id, else its file name (upload prefix stripped),
    else the sha256 of the local file its URL names."""
    data = task.get("data") or {}
    meme_id = data.get("meme_id")
    if meme_id is not None and str(meme_id).strip().isdigit() and int(meme_id) in index.ids:
        return int(meme_id)
    url = str(data.get("image") or "")
    if not url:
        return None
    query = parse_qs(urlparse(url).query).get("d")
    name = unquote((query[0] if query else urlparse(url).path).rsplit("/", 1)[-1])
    found = index.by_file_name(name) or index.by_file_name(_UPLOAD_PREFIX.sub("", name))
    if found is not None:
        return found
    local = _local_file(url, document_root)
    return index.by_sha.get(sha256_file(local)) if local else None


def _annotator(ann: dict[str, Any]) -> str | None:
    who = ann.get("completed_by")
    if isinstance(who, dict):
        email = (who.get("email") or "").strip().lower()
        return email or (f"ls-user-{who['id']}" if who.get("id") is not None else None)
    if isinstance(who, int) or (isinstance(who, str) and who.isdigit()):
        return f"ls-user-{who}"
    if isinstance(who, str) and who.strip():
        return who.strip().lower()
    return None


def _choice(ann: dict[str, Any]) -> list[str]:
    """The choices an annotation made (of any Choices control)."""
    out: list[str] = []
    for item in ann.get("result") or []:
        if isinstance(item, dict) and item.get("type") == "choices":
            out.extend(str(c) for c in (item.get("value") or {}).get("choices") or [])
    return out


def import_label_studio(session: Session, path: Path, mapping: dict[str, str] | None = None,
                        document_root: Path | None = None, all_or_nothing: bool = True,
                        actor: str | None = None) -> ImportReport:
    """Import people's labels from Label Studio's JSON export (module docstring). Admins only
    when sign-in is on (labels are stored under many people's names); recorded in the audit log."""
    users.authorize(session, actor, users.ADMIN, "import label-studio", {"file": Path(path).name})
    session.commit()  # the attempt is recorded even when the file is refused
    choices = {v: k for k, v in CHOICES.items()} | dict(mapping or {})
    report = ImportReport(mode="all-or-nothing" if all_or_nothing else "valid rows only")
    tasks = read_export(path)
    index = meme_index(session)
    ours = {}  # label id -> (image id, annotator): our labels that Label Studio imported
    planned: dict[tuple[int, str], tuple[str, float | None, int]] = {}
    for n, task in enumerate(tasks, 1):
        task_no = task.get("id", n)
        shown = str((task.get("data") or {}).get("image") or "")[:200]
        annotations = [a for a in task.get("annotations") or [] if isinstance(a, dict)]
        if not annotations:
            continue
        image_id = match_task(task, index, document_root)
        if image_id is None:
            report.issues.append(RowIssue(task_no, shown, "no meme matches this task (by data.meme_id, file name "
                                                          "or the local file's sha256)"))
            continue
        import_ids = [a["import_id"] for a in annotations if isinstance(a.get("import_id"), int)]
        for chunk in in_batches(import_ids):
            ours.update({i: (img, who) for i, img, who in session.execute(
                select(Label.id, Label.image_id, Label.annotator).where(Label.id.in_(chunk)))})
        for ann in sorted(annotations, key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""),
                                                      a.get("id") or 0)):
            if ann.get("was_cancelled") or ann.get("skipped"):
                continue
            report.rows += 1
            picked = _choice(ann)
            labels = {class_of(c, choices) for c in picked}
            if not picked or None in labels or len(labels) != 1:
                unknown = next((c for c in picked if class_of(c, choices) is None), None)
                problem = (f"unknown choice {unknown!r}; map it with --map {unknown}=toxic (or =non_toxic)"
                           if unknown is not None else "no single Toxic / Neutral choice")
                report.issues.append(RowIssue(task_no, shown, problem))
                continue
            original = ours.get(ann.get("import_id"))
            who = original[1] if original and original[0] == image_id else _annotator(ann)
            if not who:
                report.issues.append(RowIssue(task_no, shown, "the annotation names nobody (no completed_by)"))
                continue
            lead = ann.get("lead_time")
            seconds = float(lead) if isinstance(lead, (int, float)) and lead >= 0 else None
            planned[(image_id, who)] = (labels.pop(), seconds, task_no)  # the latest per person wins
    if report.issues and all_or_nothing:
        return report
    current = {(c.image_id, c.annotator): c.label for c in current_labels(session, sorted({i for i, _ in planned}))}
    for (image_id, who), (label, seconds, task_no) in planned.items():
        if current.get((image_id, who)) == label:
            report.unchanged += 1
            continue
        try:
            add_label(session, image_id, label, who, context=LabelContext(order="import", seconds_spent=seconds))
        except (LabelError, PermissionDenied) as exc:
            report.issues.append(RowIssue(task_no, who, str(exc)))
            continue
        report.imported += 1
    if report.issues and all_or_nothing:
        session.rollback()
        report.imported = 0
        return report
    session.commit()
    report.applied = True
    return report
