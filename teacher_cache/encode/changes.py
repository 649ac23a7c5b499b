"""What a run of `tc encode` must do to a cache for the corpus as it is now: which texts to encode, which rows
leave, how often each text occurs. Decided from keys alone (teacher_cache/versions.py), before the teacher runs.

The corpus is read twice: once here for its keys (every row), once by the encode loop for the texts to encode,
and that second read checks every key again, so a corpus edited while it is encoded is caught (`checked_rows`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from teacher_cache.base.errors import CorpusError
from teacher_cache.versions import VersionView, text_key


@dataclass
class ChangePlan:
    """The corpus rows to encode (first occurrences of keys the cache lacks) and the version they make."""

    corpus_rows: int  # non-blank rows read, duplicates included
    encode_rows: np.ndarray  # positions (in corpus order) of the texts to encode, ascending
    live_ids: np.ndarray  # ids of the cache's rows the corpus still holds (sorted), before the new ones
    live_counts: np.ndarray  # how often each of live_ids' texts occurs
    new_counts: np.ndarray  # how often each text to encode occurs (in encode_rows' order)
    duplicates: int  # corpus rows whose text an earlier corpus row also holds

    @property
    def added(self) -> int:
        """Rows this run encodes."""
        return len(self.encode_rows)

    def version_arrays(self, id_rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(deleted, dup_ids, dup_counts) of the new version once the new rows hold ids id_rows - added ...
        id_rows - 1."""
        new_ids = np.arange(id_rows - self.added, id_rows, dtype=np.int64)
        ids = np.concatenate([self.live_ids, new_ids])
        counts = np.concatenate([self.live_counts, self.new_counts])
        keep = np.zeros(id_rows, dtype=bool)
        keep[ids] = True
        dup = counts > 1
        order = np.argsort(ids[dup], kind="stable")
        return (np.flatnonzero(~keep).astype(np.int64), ids[dup][order].astype(np.int64),
                counts[dup][order].astype(np.int64))

    def removed_from(self, previous: VersionView | None) -> int:
        """Rows live in `previous` that this version no longer holds."""
        if previous is None:
            return 0
        ids = np.arange(previous.id_rows, dtype=np.int64)
        was_live = ids[previous.live(ids)]
        return int(len(was_live) - np.count_nonzero(np.isin(was_live, self.live_ids, assume_unique=True)))


def plan_changes(corpus_keys: np.ndarray, held_keys: np.ndarray) -> ChangePlan:
    """Compare the corpus's keys (in order) with the keys the cache holds (by id) and plan the run.

    A key the cache holds twice (a cache made before keys) is served by its first row; the other goes.
    """
    unique, first, counts = np.unique(corpus_keys, return_index=True, return_counts=True)
    order = np.argsort(held_keys, kind="stable")  # stable: among equal keys the smallest id comes first
    held_sorted = held_keys[order]
    at = np.searchsorted(held_sorted, unique)
    found = (at < len(held_sorted)) & (held_sorted[np.minimum(at, max(len(held_sorted) - 1, 0))] == unique) \
        if len(held_sorted) else np.zeros(len(unique), dtype=bool)
    live_ids = order[at[found]].astype(np.int64)
    by_id = np.argsort(live_ids, kind="stable")
    new_first = first[~found]
    new_order = np.argsort(new_first, kind="stable")
    return ChangePlan(corpus_rows=len(corpus_keys), encode_rows=new_first[new_order].astype(np.int64),
                      live_ids=live_ids[by_id], live_counts=counts[found][by_id].astype(np.int64),
                      new_counts=counts[~found][new_order].astype(np.int64),
                      duplicates=int(len(corpus_keys) - len(unique)))


def checked_rows(rows: Iterator[str], plan: ChangePlan, corpus_keys: np.ndarray, where: str) -> Iterator[str]:
    """The texts at plan.encode_rows, reading the whole corpus and checking every row's key against the first read:
    a row added, removed or edited in between is a one-line CorpusError (the shards written so far are kept)."""
    wanted = plan.encode_rows
    next_at, position = 0, -1
    for position, text in enumerate(rows):
        if position >= len(corpus_keys) or text_key(text) != int(corpus_keys[position]):
            raise CorpusError(f"--corpus {where}: changed while it was being encoded (row {position + 1:,} is not "
                              "what it was when the run began); the shards written so far are kept: rerun when "
                              "it is settled to encode the rest")
        if next_at < len(wanted) and position == wanted[next_at]:
            next_at += 1
            yield text
    if position + 1 != len(corpus_keys):
        raise CorpusError(f"--corpus {where}: changed while it was being encoded ({position + 1:,} rows now, "
                          f"{len(corpus_keys):,} when the run began); the shards written so far are kept: rerun "
                          "when it is settled to encode the rest")
