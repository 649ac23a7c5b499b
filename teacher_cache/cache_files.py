"""The files of a cache folder: checksums of every file in the manifest, resume-or-refuse, re-checks, --force wipes.

Both cache writers (`tc encode`, and the task teacher's logits cache) open their --out with `previous_cache` and
`resume`: the same refusal of other settings, the same re-check of every kept file, the same --force rules.

Shards are listed in `manifest.shards` (size, sha256); every other file the cache holds (tokenizer/*,
token_embeddings.safetensors, and whatever else an encode writes before it completes the manifest) is recorded in
`manifest.files`. Files that were in the folder before the cache was begun are not the cache's: they are listed
in `manifest.extra["other_files"]`, never checksummed, never removed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from teacher_cache.base.errors import CacheIntegrityError, CacheMismatchError, UserError, first_line, reason
from teacher_cache.base.lock import LOCK_NAME
from teacher_cache.base.out_folder import OutFolder
from teacher_cache.base.progress import warn
from teacher_cache.base.safe_paths import name_problem, remove_file, remove_tree
from teacher_cache.manifest import (
    MANIFEST_NAME,
    TEACHERS_DIR,
    VERSIONS_DIR,
    VOCAB_WORDS_FILE,
    VOCAB_WORDS_OUTPUTS_FILE,
    WORD_OUTPUTS_KEY,
    CacheManifest,
    ShardInfo,
)
from teacher_cache.shards import sha256_file

# Cache files by name, removed by a --force run (with every file the old manifest recorded).
OWN_FILES = ("shard-*.arrow", "shard-*.h5", "shard-*.tmp", "manifest.json", "manifest.json.tmp",
             "token_embeddings.safetensors", "token_outputs.safetensors", "*.safetensors.tmp",
             VOCAB_WORDS_FILE, VOCAB_WORDS_OUTPUTS_FILE, VOCAB_WORDS_FILE + ".tmp")
# Partial or unlisted files a killed run leaves, removed before a resume (listed shards and the user's files kept).
STRAY_FILES = ("shard-*.tmp", "shard-*.arrow", "shard-*.h5", "manifest.json.tmp", "*.safetensors.tmp",
               VOCAB_WORDS_FILE + ".tmp")
TOKENIZER_DIR = "tokenizer"  # written whole by save_teacher_files, so dropped whole when one of its files is bad


def file_record(path: Path) -> dict:
    """{'sha256': ..., 'bytes': ...} of one file."""
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def has_cache(out: Path) -> bool:
    """True when `out` holds a cache (a manifest or shard files)."""
    return (out / MANIFEST_NAME).exists() or any(out.glob("shard-*"))


def cache_out(out: Path) -> OutFolder:
    """The --out rules (base/out_folder.py) for a cache folder: its own names are OWN_FILES and tokenizer/."""
    # the lock itself is taken by CacheWriter.acquire (FolderLock): `command` only matters to OutFolder.hold
    return OutFolder(out, "tc encode", own=OWN_FILES, own_dirs=(TOKENIZER_DIR, VERSIONS_DIR, TEACHERS_DIR))


def other_files(out: Path) -> list[str]:
    """Relative paths of the files in `out` before a cache is begun there (they stay the user's)."""
    # a link counts as the user's too (it is never the cache's); a name tc could not list again is skipped
    return cache_out(out).others()


def unrecorded_files(out: Path, manifest: CacheManifest) -> list[str]:
    """Cache files in `out` that the manifest does not record yet (shards, manifest, temporaries, lock excluded)."""
    skip = {MANIFEST_NAME, LOCK_NAME} | {s.file for s in manifest.shards}
    skip |= set(manifest.extra.get("other_files") or []) | set(manifest.files)
    found = []
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out).as_posix()
        plain = path.is_file() and not path.is_symlink() and not name_problem(rel)  # tc writes no links
        side = rel.startswith(TEACHERS_DIR + "/")  # a side teacher's files are listed by its own manifest
        if plain and rel not in skip and not side and not path.name.endswith(".tmp") and not path.name.startswith(
                "shard-"):
            found.append(rel)
    return found


def record_files(out: Path, manifest: CacheManifest) -> None:
    """Add the checksum of every cache file not recorded yet to `manifest.files` (recorded ones stay as they are)."""
    for rel in unrecorded_files(out, manifest):
        manifest.files[rel] = file_record(out / rel)


def file_problem(out: Path, rel: str, record: dict) -> str | None:
    """What is wrong with one recorded file (missing, other size, other checksum), or None."""
    path = out / rel
    if not path.is_file():
        return f"{path}: missing"
    if record.get("bytes") is not None and path.stat().st_size != record["bytes"]:
        return f"{path}: {path.stat().st_size:,} bytes, the manifest says {record['bytes']:,} (truncated or changed)"
    if sha256_file(path) != record.get("sha256"):
        return f"{path}: checksum mismatch (the file changed after it was written)"
    return None


def shard_problem(out: Path, info: ShardInfo) -> str | None:
    """What is wrong with one shard file (missing, other size, other checksum), or None."""
    return file_problem(out, info.file, {"sha256": info.sha256, "bytes": info.bytes or None})


def recheck(out: Path, manifest: CacheManifest) -> list[str]:
    """Before a resume: drop the first bad shard and every later one, and each bad recorded file; say what was dropped.

    Ids are row positions, so the shards kept are exactly the prefix an uninterrupted run would have written; what
    was dropped is written again (the teacher files by `save_teacher_files`, the shards by the encode loop). Only
    names the manifest lists are removed (CacheManifest.load checked each lies inside `out`), one file at a time;
    the one folder removed whole is tokenizer/, which tc writes whole (a link there: only the link goes).
    """
    notes = []
    for index, info in enumerate(manifest.shards):
        problem = shard_problem(out, info)
        if problem:
            dropped = len(manifest.shards) - index
            notes.append(f"{problem}; encoding again from shard {index} ({dropped} shard(s) dropped)")
            del manifest.shards[index:]
            manifest.complete = False
            break
    gone = manifest.drop_versions_beyond_shards()
    if gone:
        notes.append(f"version(s) {', '.join(map(str, gone))} lost a shard: the rerun makes the newest again")
    for rel, record in list(manifest.files.items()):
        problem = file_problem(out, rel, record) if rel in manifest.files else None
        if problem:
            notes.append(f"{problem}; writing it again")
            if rel.startswith(TOKENIZER_DIR + "/"):  # written whole by save_teacher_files: drop all of it
                remove_tree(out / TOKENIZER_DIR)
                for name in [n for n in manifest.files if n.startswith(TOKENIZER_DIR + "/")]:
                    del manifest.files[name]
            else:
                remove_file(out / rel)  # a link: the link itself, never what it points to
                del manifest.files[rel]
            manifest.complete = False
    return notes


def remove_strays(out: Path, manifest: CacheManifest) -> None:
    """Delete partial shards and shards the manifest does not list (left by a killed run or dropped by `recheck`);
    only names tc writes (STRAY_FILES), never one the manifest keeps as the user's."""
    keep = {s.file for s in manifest.shards} | set(manifest.extra.get("other_files") or [])
    for pattern in STRAY_FILES:
        for path in out.glob(pattern):
            if path.name not in keep:
                remove_file(path)


def wipe_cache(out: Path, old: CacheManifest | bool | None = None) -> None:
    """Remove the files a cache consists of (and nothing else) when a --force run replaces it.

    `old` is the replaced cache's manifest (its recorded files go too: CacheManifest.load checked that each lies
    inside `out`), or True/None when it was unreadable or refused. Files go one by one (a link: the link only);
    tokenizer/ goes whole when it is a real folder, and only the link when it is a symlink.
    """
    listed = old.files if isinstance(old, CacheManifest) else {}
    cache_out(out).clear_own(also=[rel for rel in listed if not rel.startswith(TOKENIZER_DIR + "/")])


def load_old(out: Path) -> CacheManifest | None:
    """The manifest of the cache a --force run will replace, or None when it is missing or unreadable."""
    try:
        return CacheManifest.load(out) if (out / MANIFEST_NAME).exists() else None
    except Exception:  # a broken (or refused) manifest is replaced all the same, but none of its names is used
        return None


def make_output_dir(out: Path) -> None:
    """Create the output folder (and parents), or raise a one-line error."""
    cache_out(out).refuse_unsafe()  # a file as --out: the one wording of base/out_folder.py
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {out}: cannot create folder ({reason(exc)})") from None


def previous_cache(out: Path, force: bool) -> tuple[CacheManifest | None, CacheManifest | bool]:
    """What --out holds before a run: the manifest to resume (None with --force or when there is none), and what a
    --force run replaces at its first shard (that cache's manifest, True when unreadable, False when no cache)."""
    existing = None
    if not force:
        make_output_dir(out)
        if (out / MANIFEST_NAME).exists():
            existing = CacheManifest.load(out)
        elif any(out.glob("shard-*")):
            raise CacheMismatchError(f"--out {out}: holds shard files but no manifest; use --force to overwrite")
    replacing = (load_old(out) or True) if force and has_cache(out) else False
    return existing, replacing


def carry_over(manifest: CacheManifest, existing: CacheManifest) -> None:
    """What a resumed run keeps of the cache it continues: shards, files, versions, side teachers, generation."""
    manifest.shards, manifest.created, manifest.files = existing.shards, existing.created, existing.files
    manifest.versions, manifest.teachers = existing.versions, existing.teachers
    manifest.generation = existing.generation


def resume(out: Path, manifest: CacheManifest, existing: CacheManifest, more_differences: list[str] = (),
           ignore: tuple[str, ...] = ()) -> bool:
    """Continue the cache `existing` in `out` as `manifest`; True when it is complete already (nothing to do).

    Refuses, in one line, a cache made with other settings; re-reads every kept shard and file (a resume trusts
    nothing on disk, and says what it dropped); carries the kept shards over and removes stray ones.
    """
    differences = manifest.differences(existing, ignore) + list(more_differences)
    if differences:
        raise CacheMismatchError(f"--out {out}: holds a cache made with other settings ({'; '.join(differences)}); "
                                 "use --force to start afresh")
    for note in recheck(out, existing):
        warn(note)
    if existing.complete:
        return True
    carry_over(manifest, existing)
    if "other_files" in existing.extra:
        manifest.extra["other_files"] = existing.extra["other_files"]
    remove_strays(out, manifest)
    return False


def read_vocab_words(folder: Path) -> tuple[list[str], np.ndarray] | None:
    """The whole words `tc vocab` added to the cache folder `folder` and the teacher's output for each (words x dim,
    float32), or None when it holds none; a torn or mismatched pair is a one-line CacheIntegrityError."""
    from safetensors.numpy import load_file

    words_path, outputs_path = folder / VOCAB_WORDS_FILE, folder / VOCAB_WORDS_OUTPUTS_FILE
    if not words_path.is_file() and not outputs_path.is_file():
        return None
    try:
        # split on "\n" only: str.splitlines also cuts at U+2028 and the like, which a word may hold
        words = words_path.read_text(encoding="utf-8").split("\n")
        outputs = load_file(str(outputs_path))[WORD_OUTPUTS_KEY]
    except Exception as exc:  # one of the two missing, truncated or foreign: one line naming the folder
        raise CacheIntegrityError(f"{folder}: unreadable whole-word vocabulary ({first_line(exc)}); rerun "
                                  "`tc vocab`") from None
    if words and words[-1] == "":
        words.pop()
    if outputs.ndim != 2 or outputs.shape[0] != len(words) or not np.isfinite(outputs).all():
        raise CacheIntegrityError(f"{folder / VOCAB_WORDS_OUTPUTS_FILE}: {outputs.shape[0] if outputs.ndim else 0} "
                                  f"rows for {len(words)} words in {VOCAB_WORDS_FILE} (or not finite); rerun "
                                  "`tc vocab`")
    return words, outputs.astype(np.float32)
