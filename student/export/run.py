"""`tc export`: a student folder -> a model2vec folder (static students) or an ONNX folder (every architecture).

Each export is written into a temporary folder beside the output, checked against the torch student on sample
sentences, and renamed into place at the end: a failed or interrupted export (Ctrl-C, SIGTERM) leaves nothing half
written. --out is locked for the run (one export into a folder at a time), an --out that overlaps --model is
refused, and the temporary folder of an export that was killed outright (SIGKILL) is removed by the next one.

- model2vec: a mean-pooling static student is proj(mean_t w_t e_t) = mean_t proj(w_t e_t) (the bias included),
  so one matrix with row t = W (w_t e_t) + b reproduces it exactly under model2vec's mean over tokens. model2vec
  tokenises without [CLS]/[SEP] and drops [UNK] ids, as a static student does (config add_special_tokens false).
- onnx: the encoder graph (input_ids (batch, time) int64, lengths (batch,) int64 -> sentence_embedding), dynamic
  batch and length axes, read by student.OnnxStudent without torch.
- dtype: float16 stores the weights in half precision (ONNX: cast back to float32 when the graph loads); int8
  stores model2vec rows as int8 with one float32 scale per row (model2vec's own `weights` field, which it
  multiplies back in) and quantises an ONNX graph's weights with onnxruntime's dynamic quantisation.

--out may be a store URL (s3://bucket/prefix): the export is built exactly as above into a local staging folder
(user cache dir / staging-exports / a hash of the URL, locked for the run), then uploaded object by object,
config.json (what model2vec, sentence-transformers and OnnxStudent read first) last, so that a reader never sees a
half export. A prefix holding anything is refused without --force; --force removes only an export's own names,
and only once the local export has succeeded (teacher_cache/remote_out.py holds the pieces shared with tc
train-student --out and tc probe --report).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from student.config import CONFIG_NAME
from student.export.formats import check_model2vec_student, import_onnx, model2vec_vectors, write_model2vec, write_onnx
from student.export.onnx_student import ONNX_NAME, OnnxStudent
from student.remote import student_folder
from student.student import load_student_folder
from student.tokenizer import TOKENIZER_FILES
from teacher_cache.base.atomic import fsync_file
from teacher_cache.base.errors import NO_SPACE, UserError, reason
from teacher_cache.base.lock import LOCK_NAME
from teacher_cache.base.out_folder import OutFolder
from teacher_cache.base.progress import log
from teacher_cache.base.signals import sigterm_as_interrupt
from teacher_cache.remote_out import RemoteOut, local_folder
from teacher_cache.storage import is_url

FORMATS = ("model2vec", "onnx")
DTYPES = ("float32", "float16", "int8")
TEMP_PREFIX = ".{name}.export-tmp-"  # + the pid of the export writing it
# Sentences every export is checked on (unknown characters, an accent, a long one, a one-word one).
CHECK_SENTENCES = [
    "A man is playing a guitar.",
    "The quick brown fox jumps over the lazy dog near the riverbank on a sunny afternoon in late September.",
    "Stocks fell sharply on Tuesday after the central bank raised interest rates for the third time this year.",
    "Café owners in Zürich said the new rules were confusing 🙂 but fair.",
    "hello",
    "Two dogs run across a snowy field while a child watches from the window of a small wooden house.",
]
STAGING_KIND = "staging-exports"  # a URL's staging folder: user cache dir / this / a hash of the URL
# An export's own names in a store, which --force replaces: every name either format writes (model2vec's
# save_pretrained, write_onnx, the card and export.json), so that an ONNX export replaces an earlier model2vec one
# whole; whatever else the prefix holds is the user's and stays.
EXPORT_FILES = (CONFIG_NAME, "modules.json", "model.safetensors", ONNX_NAME, "README.md", "export.json",
                *TOKENIZER_FILES)
# uploaded last, in this order: config.json is what model2vec, sentence-transformers and OnnxStudent read first, so
# it appears only once the rest of the export is there (modules.json, sentence-transformers' entry, just before it)
PUBLISH_LAST = ("export.json", "modules.json", CONFIG_NAME)


@dataclass
class ExportResult:
    """What an export wrote: the folder (or store URL), its size, and the worst cosine to the torch student."""

    out: Path | str
    format: str
    dtype: str
    bytes: int
    min_cosine: float


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Smallest row-wise cosine between two (n, d) arrays."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    return float(((a * b).sum(axis=1) / norms).min())


def folder_bytes(folder: Path) -> int:
    """Total size of the files in a folder."""
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


# -------------------------------------------------------------------------------------------------------- export


def export_card(fmt: str, dtype: str, source: str | Path, dim: int, cosine: float) -> str:
    """README.md of an exported folder: what it is and how to load it."""
    if fmt == "model2vec":
        use = ("```python\nfrom model2vec import StaticModel\n\nmodel = StaticModel.from_pretrained(\"PATH\")\n"
               "vectors = model.encode([\"A sentence.\", \"Another one.\"])\n```\n\n"
               "sentence-transformers loads the same folder as it is, `SentenceTransformer(\"PATH\")` (its "
               "StaticEmbedding module; it keeps [UNK] tokens and does not truncate, so sentences with either "
               "differ slightly from model2vec's vectors).")
    else:
        use = ("```python\nfrom student import OnnxStudent   # needs tokenizers, numpy, onnxruntime; no torch\n\n"
               "model = OnnxStudent.from_pretrained(\"PATH\")\nvectors = model.encode([\"A sentence.\", "
               "\"Another one.\"], batch_size=32, normalize_embeddings=True)\n```\n\n"
               "The graph alone: inputs `input_ids` (batch, time) int64 and `lengths` (batch,) int64, output "
               "`sentence_embedding` (batch, dim); padding after each sentence is ignored.")
    tags = "\n".join(f"- {tag}" for tag in ("sentence-embeddings", "teacher-cache", fmt))
    return (f"---\nlibrary_name: {fmt}\ntags:\n{tags}\n---\n\n"
            f"# Student sentence encoder, exported to {fmt} ({dtype})\n\n"
            f"Written by `tc export --to {fmt} --dtype {dtype}` from the student folder `{source}`: {dim}-wide "
            f"sentence vectors, cosine to the torch student at least {cosine:.6f} on the export's check "
            f"sentences.\n\n## Use\n\n{use.replace('PATH', '.')}\n")


def export_student(model: str | Path, to: str, out: str | Path, dtype: str = "float32",
                   force: bool = False) -> ExportResult:
    """Export a student folder to `out` (model2vec or onnx), via a temporary folder renamed at the end; `out` may be
    a store URL (the export is built in its staging folder, then uploaded, config.json last).

    --out is locked for the run (a second export into it is refused in one line naming the first); temporary
    folders that killed exports left beside it are removed first; a SIGTERM is handled as Ctrl-C (the temporary
    folder is removed, nothing else changes, the CLI exits 143)."""
    if to not in FORMATS:
        raise UserError(f"--to {to}: choose one of {', '.join(FORMATS)}")
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    remote_model = is_url(str(model))
    model = str(model) if remote_model else Path(model)  # a URL is named as given (a Path would fold its '//')
    remote = RemoteOut.open(out, "--out", STAGING_KIND)
    out = str(out) if remote is not None else local_folder(out)
    # a URL's staging folder is a scratch copy, swapped whole like a local --out; no local folder overlaps a store
    folder = export_out(remote.folder if remote is not None else out, None if remote_model else model)
    folder.refuse_unsafe()  # before anything is read, written or removed
    student = load_student_folder(student_folder(model, "--model"))  # a store URL's student: downloaded first
    if to == "model2vec":
        check_model2vec_student(student.config, model)
    else:
        import_onnx()
    check_out(folder, remote, force)  # before the lock creates the folder: a refused run leaves nothing
    dest = Path(os.path.abspath(folder.path))  # ".." and the like resolved, so that siblings are named beside it
    lock = folder.hold() if remote is None else remote.hold("tc export")  # a second writer: named by its URL
    with sigterm_as_interrupt(), lock:
        check_out(folder, remote, force)  # again under the lock: an export that finished meanwhile is kept
        remove_stale_temps(dest)
        tmp = temp_folder(dest, os.getpid())
        try:
            tmp.mkdir()
        except OSError as exc:
            raise UserError(f"--out {out}: cannot create {tmp.name} beside it ({reason(exc)})") from None
        try:
            cosine = write_checked(student, model, to, dtype, tmp, out)
            try:
                place(tmp, dest)
            except OSError as exc:
                raise UserError(f"--out {out}: cannot rename the export into place ({reason(exc)}); "
                                "nothing written to it") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        size = folder_bytes(dest)
        if remote is not None:
            publish_export(remote, force)
    return ExportResult(out, to, dtype, size, cosine)


def check_out(folder: OutFolder, remote: RemoteOut | None, force: bool) -> None:
    """Refuse an --out that holds something, unless --force: the folder (OutFolder's rules), or the URL's prefix
    (one line naming it; its staging folder is only a scratch copy, replaced whatever it holds)."""
    if remote is None:
        folder.check(force)
        return
    present = remote.names()
    if present and not force:
        raise remote.not_empty(present, "an export's files")


def publish_export(remote: RemoteOut, force: bool) -> None:
    """Upload the finished export from the staging folder, config.json last; with --force, first remove the
    earlier export's own names (config.json first, so no reader sees it half replaced); then empty the staging
    folder."""
    files = remote.staged_files()
    if force:
        # own: EXPORT_FILES, and whatever this export writes; a name the new export writes again is overwritten
        # in place (atomic per object), except the marks, which go first so that no reader mixes two exports
        own = set(EXPORT_FILES) | set(files)
        marks = list(reversed(PUBLISH_LAST))
        remote.remove([n for n in remote.names() if n in own and (n not in files or n in marks)], first=marks)
    remote.publish(files, last=PUBLISH_LAST)
    remote.empty_staging()  # the export is in the store now; the scratch copy would only take disk


def export_out(out: str | Path, model: str | Path | None) -> OutFolder:
    """The --out of an export: replaced whole by the finished export, so never the current folder or above it, and
    never overlapping --model (the same folder, inside it or holding it: --force would delete the student; None:
    a student in a store, which no local folder overlaps)."""
    return OutFolder(out, "tc export", inputs={} if model is None else {"--model": Path(model)}, replaced_whole=True)


def temp_folder(dest: Path, pid: int | str) -> Path:
    """The hidden folder beside `dest` where export `pid` writes before renaming it into place."""
    return dest.with_name(f"{TEMP_PREFIX.format(name=dest.name)}{pid}")


def remove_stale_temps(dest: Path) -> list[Path]:
    """Remove the temporary folders killed exports into `dest` left beside it (called under dest's lock); return them.

    Every export into `dest` writes its temporary folder while holding dest's lock, and this one holds it now: so
    whatever temporary folder is there belongs to an export that is no longer running (killed, SIGKILL or a crash),
    whatever its pid (a pid may since have been reused by another process)."""
    prefix = TEMP_PREFIX.format(name=dest.name)
    try:
        stale = [p for p in dest.parent.iterdir()
                 if p.name.startswith(prefix) and p.is_dir() and not p.is_symlink()]  # a link is not ours
    except OSError:
        return []
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
        log(f"removed {path}, left by an export into {dest.name} that was killed")
    return stale


def write_checked(student, model: str | Path, to: str, dtype: str, tmp: Path, out: Path) -> float:
    """Write the export into `tmp` and check it against the torch student; return the worst cosine.

    A write that fails (a full disk, a permission) is one line naming --out and the file; nothing is placed."""
    reference = student.encode(CHECK_SENTENCES)
    try:
        if to == "model2vec":
            write_model2vec(student, tmp, dtype)
            got = model2vec_vectors(tmp, CHECK_SENTENCES)
        else:
            write_onnx(student, tmp, dtype)
            got = OnnxStudent.from_pretrained(tmp, threads=1).encode(CHECK_SENTENCES)
        cosine = min_cosine(reference, got)
        floor = 0.9999 if dtype == "float32" else 0.98
        if not cosine >= floor:
            raise UserError(f"--to {to} --dtype {dtype}: the exported model's vectors differ from the student's "
                             f"(cosine {cosine:.5f} < {floor}); nothing written to {out}")
        (tmp / "README.md").write_text(export_card(to, dtype, model, student.dim, cosine))
        (tmp / "export.json").write_text(json.dumps({"format": to, "dtype": dtype, "source": str(model),
                                                     "min_cosine": cosine}, indent=2) + "\n")
        for path in tmp.rglob("*"):  # on the disk before the rename makes the folder visible as --out
            if path.is_file():
                fsync_file(path)
    except UserError:
        raise
    except Exception as exc:
        why = reason(exc)
        if not isinstance(exc, OSError) and why != NO_SPACE:
            raise  # a bug, not a write that failed: the CLI reports it with its traceback file
        raise UserError(f"--out {out}: cannot write {written_name(exc, tmp)} ({why}); nothing written to "
                         f"{out}") from None
    return cosine


def written_name(exc: BaseException, tmp: Path) -> str:
    """The file a failed write was writing, relative to the export folder ('model.onnx'), or 'the export'."""
    name = getattr(exc, "filename", None)
    if not name:
        return "the export"
    try:
        return str(Path(name).resolve().relative_to(tmp.resolve()))
    except ValueError:
        return Path(name).name


def place(tmp: Path, dest: Path) -> None:
    """Make the finished `tmp` the folder `dest` (which holds this export's lock), then remove what dest held.

    The lock file is linked into `tmp` first, so that the new folder is still locked by this run until it
    releases the lock: a second export started between the rename and the release is still refused. Where
    Linux can, the two folders are exchanged in one step (nobody ever sees `dest` missing); elsewhere dest is
    renamed aside and tmp renamed onto it."""
    try:
        os.link(dest / LOCK_NAME, tmp / LOCK_NAME)
    except OSError:
        pass  # a file system without hard links: the new folder is simply unlocked a moment early
    if exchange(tmp, dest):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old contents of dest
        return
    old = temp_folder(dest, f"{os.getpid()}-old")
    dest.rename(old)
    try:
        tmp.rename(dest)
    except BaseException:
        old.rename(dest)
        raise
    shutil.rmtree(old, ignore_errors=True)


def exchange(a: Path, b: Path) -> bool:
    """Swap two folders atomically (Linux renameat2 RENAME_EXCHANGE); False where the OS or file system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a C library without renameat2 (glibc < 2.28, musl)
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):  # kernel or file system without RENAME_EXCHANGE
        return False
    raise OSError(code, os.strerror(code), str(b))
