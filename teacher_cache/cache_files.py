"""The files of a cache folder: checksums of every file in the manifest, re-checks before a resume, --force wipes.

Shards are listed in `manifest.shards` (size, sha256); every other file the cache holds (tokenizer/*,
token_embeddings.safetensors, and whatever else an encode writes before it completes the manifest) is recorded in
`manifest.files`. Files that were in the folder before the cache was begun are not the cache's: they are listed
in `manifest.extra["other_files"]`, never checksummed, never removed.
"""

from __future__ import annotations

import fnmatch
import shutil
from pathlib import Path

from teacher_cache.lock import LOCK_NAME
from teacher_cache.manifest import MANIFEST_NAME, CacheManifest, ShardInfo
from teacher_cache.shards import sha256_file

# Cache files by name, removed by a --force run (with every file the old manifest recorded).
OWN_FILES = ("shard-*.arrow", "shard-*.h5", "shard-*.tmp", "manifest.json", "manifest.json.tmp",
             "token_embeddings.safetensors", "token_outputs.safetensors", "*.safetensors.tmp")


def file_record(path: Path) -> dict:
    """{'sha256': ..., 'bytes': ...} of one file."""
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def has_cache(out: Path) -> bool:
    """True when `out` holds a cache (a manifest or shard files)."""
    return (out / MANIFEST_NAME).exists() or any(out.glob("shard-*"))


def other_files(out: Path) -> list[str]:
    """Relative paths of the files in `out` before a cache is begun there (they stay the user's)."""
    found = []
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out).as_posix()
        ours = rel.startswith("tokenizer/") or any(fnmatch.fnmatch(rel, pattern) for pattern in OWN_FILES)
        if path.is_file() and path.name != LOCK_NAME and not ours:
            found.append(rel)
    return found


def unrecorded_files(out: Path, manifest: CacheManifest) -> list[str]:
    """Cache files in `out` that the manifest does not record yet (shards, manifest, temporaries, lock excluded)."""
    skip = {MANIFEST_NAME, LOCK_NAME} | {s.file for s in manifest.shards}
    skip |= set(manifest.extra.get("other_files") or []) | set(manifest.files)
    found = []
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out).as_posix()
        if path.is_file() and rel not in skip and not path.name.endswith(".tmp") and not path.name.startswith("shard-"):
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
    was dropped is written again (the teacher files by `save_teacher_files`, the shards by the encode loop).
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
    for rel, record in list(manifest.files.items()):
        problem = file_problem(out, rel, record) if rel in manifest.files else None
        if problem:
            notes.append(f"{problem}; writing it again")
            top = rel.split("/")[0]
            if top != rel:  # a folder such as tokenizer/ is written whole: drop all of it
                shutil.rmtree(out / top, ignore_errors=True)
                for name in [n for n in manifest.files if n.startswith(top + "/")]:
                    del manifest.files[name]
            else:
                (out / rel).unlink(missing_ok=True)
                del manifest.files[rel]
            manifest.complete = False
    return notes


def remove_strays(out: Path, manifest: CacheManifest) -> None:
    """Delete partial shards and shards the manifest does not list (left by a killed run or dropped by `recheck`)."""
    listed = {s.file for s in manifest.shards}
    for pattern in ("shard-*.tmp", "shard-*.arrow", "shard-*.h5", "*.tmp"):
        for path in out.glob(pattern):
            if path.name not in listed:
                path.unlink(missing_ok=True)


def wipe_cache(out: Path, old: CacheManifest | None = None) -> None:
    """Remove the files a cache consists of (and nothing else) when a --force run replaces it."""
    for pattern in OWN_FILES:
        for path in out.glob(pattern):
            path.unlink(missing_ok=True)
    for rel in (old.files if old is not None else {}):
        (out / rel).unlink(missing_ok=True)
    shutil.rmtree(out / "tokenizer", ignore_errors=True)


def load_old(out: Path) -> CacheManifest | None:
    """The manifest of the cache a --force run will replace, or None when it is missing or unreadable."""
    try:
        return CacheManifest.load(out) if (out / MANIFEST_NAME).exists() else None
    except Exception:  # a broken manifest is replaced all the same
        return None
