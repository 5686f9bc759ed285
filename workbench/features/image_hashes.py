"""Perceptual hashes of every image, as a job-runner step, stored per image and hashing config.

Per image and per inner-crop level (the whole image, then 3, 6, 9 and 12 % of each border cut
away) the 256-bit pHash of the `imagehash` library (16x16 lowest DCT frequencies of a 64x64
grey copy, each bit: above the median or not), kept twice:
- `long`: all 256 bits — the finer check of each candidate pair;
- `short`: its 64 lowest-frequency bits (the top-left 8x8) — the key of the candidate index
  (workbench.features.near_duplicates). Deriving it costs nothing; a separate 64-bit pHash would
  double the hashing time and found the same candidates (measured on the real memes).
A repost cropped by ~6 % matches its original's 6 % level, so cropping does not break the match.

Hashing is decode-bound by design:
- the one loader decodes the image only as large as hashing needs: a JPEG is decoded at 1/2,
  1/4 or 1/8 scale in the DCT (`load_rgb(min_side=WORK_SIDE)`), so its short side stays at
  least WORK_SIDE pixels; other formats decode whole;
- it is box-reduced to WORK_SIDE..2*WORK_SIDE pixels on its short side, made grey, and every
  crop is scaled from that small copy to the 64x64 grid the pHash reads;
- the pHash of the five grids is imagehash's `phash` computed for all five at once: the same
  type-II DCT (as rows of its matrix: only the 16 lowest frequencies are ever read), median and
  comparison, so the bits are imagehash's (the tests check them bit for bit) at a fraction of
  five calls' cost.
Near-uniform images (almost no detail) are marked `flat`: their hashes are noise, so they
never join a group. Image ids are content-addressed (a changed file is a new image), so a
re-run only hashes images it has not hashed yet.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image as PILImage
from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from workbench.runs.step import ItemResult, Step, WorkItem, fingerprint, prefetch_image
from workbench.store.db import in_batches
from workbench.store.schema import ImageHash

HASH_VERSION = 2  # 2: JPEGs decoded at reduced scale, work copy of WORK_SIDE
CROP_LEVELS = (0.0, 0.03, 0.06, 0.09, 0.12)  # fraction of each border cut away
SHORT_BITS, LONG_BITS = 64, 256
WORK_SIDE = 64  # the least short side of the reduced copy every crop is cut from
PHASH_SIZE = 16  # 16x16 = 256 bits
PHASH_GRID = 64  # imagehash's pHash of 256 bits reads a 64x64 grey image (hash_size 16 x highfreq_factor 4)
FLAT_STD = 2.0  # grey-level standard deviation (of the whole image's grid) below which an image is flat
HASH_BATCH = 128  # images per batch: ~0.1 s of one worker's time, so commits and round trips stay rare

# The first PHASH_SIZE rows of the unnormalised type-II DCT matrix scipy.fftpack.dct applies
# (y[k] = 2 * sum_n x[n] cos(pi k (2n + 1) / 2N)): the low frequencies pHash keeps.
_DCT_ROWS = 2.0 * np.cos(np.pi * np.arange(PHASH_SIZE)[:, None] * (2 * np.arange(PHASH_GRID)[None, :] + 1)
                         / (2 * PHASH_GRID))


def hash_fingerprint() -> str:
    """Identity of the hashing config: hashes are stored and skipped under it."""
    return "phash:" + fingerprint({"levels": CROP_LEVELS, "bits": [SHORT_BITS, LONG_BITS], "work": WORK_SIDE,
                                   "grid": [PHASH_GRID, "bilinear"], "v": HASH_VERSION})


@dataclass(frozen=True)
class ImageHashes:
    """The hashes of one image: `short` uint64 [levels], `long` uint64 [levels, 4]."""

    short: np.ndarray
    long: np.ndarray
    flat: bool

    def to_blobs(self) -> tuple[bytes, bytes]:
        return self.short.astype("<u8").tobytes(), self.long.astype("<u8").tobytes()

    @classmethod
    def from_blobs(cls, short: bytes, long: bytes, flat: bool) -> ImageHashes:
        return cls(np.frombuffer(short, "<u8").astype(np.uint64),
                   np.frombuffer(long, "<u8").astype(np.uint64).reshape(-1, LONG_BITS // 64), flat)


def work_copy(image: PILImage.Image) -> PILImage.Image:
    """The small grey copy every crop is cut from: box-reduced to WORK_SIDE..2*WORK_SIDE-1 px on
    its short side (when larger), then grey (reducing first: converting is then cheaper)."""
    factor = max(1, min(image.size) // WORK_SIDE)
    return (image.reduce(factor) if factor > 1 else image).convert("L")


def phash_grids(grey: PILImage.Image) -> tuple[np.ndarray, bool]:
    """The 64x64 grid of a work copy and of each inner crop ([levels, 64, 64] float64), and
    whether the image is flat."""
    w, h = grey.size
    grids = np.empty((len(CROP_LEVELS), PHASH_GRID, PHASH_GRID), np.float64)
    for i, level in enumerate(CROP_LEVELS):
        dx, dy = round(w * level), round(h * level)
        # Scaled here (bilinear, antialiased) to the grid pHash reads, so its own resize has nothing left to do.
        grids[i] = np.asarray(grey.resize((PHASH_GRID, PHASH_GRID), PILImage.Resampling.BILINEAR,
                                          box=(dx, dy, w - dx, h - dy)))
    return grids, float(grids[0].std()) < FLAT_STD  # the whole image's grid tells flatness as well as the image


def phash_bits(grids: np.ndarray) -> np.ndarray:
    """imagehash's `phash(grid, hash_size=16)` bits of each 64x64 grid, all at once: bool [n, 16, 16]."""
    low = _DCT_ROWS @ grids @ _DCT_ROWS.T  # [n, 16, 16]: the lowest frequencies of the 2-D DCT
    return low > np.median(low.reshape(len(grids), -1), axis=1)[:, None, None]


def hashes_of_work_copy(grey: PILImage.Image) -> ImageHashes:
    """pHashes at every crop level of a `work_copy`."""
    grids, flat = phash_grids(grey)
    bits = phash_bits(grids)
    long = np.packbits(bits.reshape(len(grids), -1), axis=1).view(">u8").astype(np.uint64)  # [levels, 4]
    short = np.packbits(bits[:, :8, :8].reshape(len(grids), -1), axis=1).view(">u8").astype(np.uint64)[:, 0]
    return ImageHashes(short, long, flat)


def compute_hashes(image: PILImage.Image) -> ImageHashes:
    """pHashes of one decoded image at every crop level (see the module docstring)."""
    return hashes_of_work_copy(work_copy(image))


def hash_files(items: Sequence[WorkItem]) -> list[ItemResult]:
    """The hashes of each image file, decoded only as large as hashing needs; a corrupt or
    vanished file is that image's error.

    Two passes over the batch, first every file to its small work copy, then every copy to its
    hashes, ran ~12 % faster than both steps image by image (measured on small JPEGs: each pass
    keeps its own code and tables in the CPU's caches); only the small copies are held."""
    copies = []
    for item in items:
        started = time.perf_counter()
        copies.append((item, prefetch_image(item, work_copy, min_side=WORK_SIDE), time.perf_counter() - started))
    results = []
    for item, copy, seconds in copies:
        started = time.perf_counter()
        if isinstance(copy, ItemResult):  # unreadable file: this item fails, the batch goes on
            result = copy
        else:
            try:
                result = ItemResult(item.image_id, value=hashes_of_work_copy(copy))
            except Exception as exc:  # noqa: BLE001
                result = ItemResult(item.image_id, error=f"cannot hash image: {type(exc).__name__}: {exc}")
        result.duration_ms = round((seconds + time.perf_counter() - started) * 1000.0, 1)
        results.append(result)
    return results


class HashStep(Step):
    """Hash images through the job runner (process pool: CPU-bound, one image at a time)."""

    kind = "hash"
    name = "hash:phash"
    parallel_ok = True

    def fingerprint(self) -> str:
        return hash_fingerprint()

    def recipe(self) -> dict[str, Any] | None:
        return {}  # no options: the hashing config is the code's

    @classmethod
    def from_recipe(cls, recipe: dict[str, Any], settings: Any) -> HashStep:
        return cls()

    def done_ids(self, session: Session, image_ids: Sequence[int]) -> set[int]:
        fp = self.fingerprint()
        done: set[int] = set()
        for chunk in in_batches(image_ids):
            done.update(session.scalars(select(ImageHash.image_id).where(
                ImageHash.fingerprint == fp, ImageHash.error.is_(None), ImageHash.image_id.in_(chunk))))
        return done

    def process(self, items: list[WorkItem]) -> list[ItemResult]:
        return hash_files(items)

    def save(self, session: Session, results: list[ItemResult], force: bool) -> None:
        fp = self.fingerprint()
        failed = [r.image_id for r in results if r.error]
        if failed:  # a file that vanished keeps the hashes it had (its group keeps its history)
            good = set(session.scalars(select(ImageHash.image_id).where(
                ImageHash.fingerprint == fp, ImageHash.error.is_(None), ImageHash.image_id.in_(failed))))
            results = [r for r in results if r.error is None or r.image_id not in good]
            if not results:
                return
        session.execute(delete(ImageHash).where(ImageHash.fingerprint == fp,
                                                ImageHash.image_id.in_([r.image_id for r in results])))
        rows = []
        for result in results:
            hashes: ImageHashes | None = result.value
            short, long = hashes.to_blobs() if hashes else (None, None)
            rows.append({"image_id": result.image_id, "fingerprint": fp, "short_hashes": short, "long_hashes": long,
                         "flat": bool(hashes and hashes.flat), "error": result.error, "duration_ms": result.duration_ms})
        session.execute(insert(ImageHash), rows)  # one bulk insert per batch


@dataclass(frozen=True)
class HashTable:
    """Every stored hash of one config as arrays aligned by row: what grouping reads."""

    image_ids: np.ndarray  # int64 [n]
    short: np.ndarray  # uint64 [n, levels]
    long: np.ndarray  # uint64 [n, levels, 4]
    flat: np.ndarray  # bool [n]

    def __len__(self) -> int:
        return len(self.image_ids)


def load_hash_table(session: Session, fp: str | None = None) -> HashTable:
    """The stored hashes (errors left out) of the config `fp` (default: the current one), by image id."""
    fp = fp or hash_fingerprint()
    rows = session.execute(select(ImageHash.image_id, ImageHash.short_hashes, ImageHash.long_hashes, ImageHash.flat)
                           .where(ImageHash.fingerprint == fp, ImageHash.error.is_(None))
                           .order_by(ImageHash.image_id)).all()
    return table_from_hashes([r[0] for r in rows], [ImageHashes.from_blobs(r[1], r[2], r[3]) for r in rows])


def table_from_hashes(image_ids: Sequence[int], hashes: Sequence[ImageHashes]) -> HashTable:
    """A HashTable from aligned ids and ImageHashes (the benchmark builds one without a database)."""
    levels, words = len(CROP_LEVELS), LONG_BITS // 64
    if not hashes:
        return HashTable(np.zeros(0, np.int64), np.zeros((0, levels), np.uint64), np.zeros((0, levels, words), np.uint64),
                         np.zeros(0, bool))
    return HashTable(np.asarray(image_ids, np.int64), np.stack([h.short for h in hashes]),
                     np.stack([h.long for h in hashes]), np.array([h.flat for h in hashes], bool))
