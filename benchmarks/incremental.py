"""Incremental re-encode (issue #23 (a)): a corpus edited by a few percent, re-encoded in place, against a fresh encode.

Usage: .venv/bin/python -m benchmarks.incremental [--rows N] [--new-pct 1] [--edit-pct 1] [--remove-pct 1]
           [--seed 0] [--base-cache PATH | --from-cache CACHE --from-shards K] [--prepare-only] [--table]

Example: .venv/bin/python -m benchmarks.incremental --from-cache benchmarks/work/cache-300k --from-shards 2
Example: .venv/bin/python -m benchmarks.incremental --rows 100000 --prepare-only

The base corpus is the first --rows non-blank lines of --source (benchmarks/work/distill-new.txt; stripped, as the
corpus reader stores them). The edited corpus is the base with --edit-pct of its lines edited (a word replaced, a
word dropped, or " (edited)" appended; chosen by a seeded RNG), --remove-pct removed (disjoint from the edited ones)
and --new-pct new lines (the next lines of --source whose text the base lacks) inserted at seeded random positions.
Both go to benchmarks/work/incremental/ (rewritten only when their bytes would change).

Steps, each a whole `tc encode ... --pooling mean` process timed by wall clock (this process runs at normal
priority: pause other jobs first; the load average at the start is recorded in the row):
  (i)   base cache of the base corpus (skipped with --base-cache PATH, an existing cache of exactly those rows; or
        made without the teacher by --from-cache CACHE --from-shards K: CACHE's first K shards copied, a manifest
        listing only them, its texts checked against the base corpus before use);
  (ii)  the base cache copied (cp -r, timed apart) and `tc encode --corpus EDITED --out COPY`: the incremental run;
  (iii) `tc encode --corpus EDITED` into a fresh folder: the full re-encode.
Then the incremental time over the fresh time (goal <= 5%), and row by row: both caches opened at their newest
version (open_cache), text -> vector, the same set of texts (and the one the edited corpus holds), max |a-b| and
min cosine of the two vectors of each text, over all texts and split into rows kept from the base and rows newly
encoded (batching differs between the runs, so tiny float differences are expected and are reported as they are);
the kept rows of the incremental cache against the base cache too (the same rows: expected bit-identical). The
incremental run's "version N: +A new rows encoded, R removed, D duplicates" line is parsed, beside the expected
counts, and its log tail kept.

Every step is resumable: a step whose output cache is complete (manifest.json "complete": true) and whose timing
file (<out>.step.json) exists is skipped; an interrupted incremental run is redone from a fresh copy; an
interrupted fresh encode resumes, and its wall time is the sum of its attempts (recorded as "fresh_attempts").
One JSON line per finished setting is appended to --results (benchmarks/results/incremental.jsonl), the machine in
it, and a rerun with the same setting skips it; --table prints a markdown table of every line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import ROOT, machine

WORK = ROOT / "benchmarks" / "work" / "incremental"
RESULTS_FILE = ROOT / "benchmarks" / "results" / "incremental.jsonl"
SOURCE = ROOT / "benchmarks" / "work" / "distill-new.txt"
TC = str(Path(sys.executable).with_name("tc"))
MANIFEST = "manifest.json"
MAX_CHARS = 256 * 100  # the corpus reader cuts a line at --max-length x 100 characters (256: tc encode's default)
GOAL = 0.05  # incremental wall time / fresh wall time
VERSION_LINE = re.compile(r"version (\d+): \+([\d,]+) new rows? encoded, ([\d,]+) removed, ([\d,]+) duplicates?")
# words an edit may put in place of one of a line's words (a realistic small change of meaning or wording)
SWAP_WORDS = ("new", "old", "large", "small", "first", "second", "early", "late", "major", "minor", "several",
              "many", "few", "the", "a", "also", "often", "later", "national", "local")


# ---- corpora ------------------------------------------------------------------------------------------------------

def corpus_texts(path: Path):
    """The texts the corpus reader yields for a plain text file: lines split on \\n only, invalid UTF-8 replaced,
    stripped, blank ones skipped, cut at MAX_CHARS (teacher_cache/encode/corpus.py's iter_corpus)."""
    with open(path, "rb") as fh:
        for raw in fh:
            text = raw.decode("utf-8", errors="replace").strip()
            if text:
                yield text[:MAX_CHARS]


def edit_text(text: str, rng: random.Random, taken: set[str]) -> str:
    """A realistic edit of one line: a word replaced, a word dropped, or " (edited)" appended; never a text the
    corpus holds already (`taken`)."""
    words = text.split(" ")
    choice = rng.random()
    if len(words) >= 3 and choice < 0.4:
        i = rng.randrange(len(words))
        words[i] = rng.choice([w for w in SWAP_WORDS if w != words[i]])
        edited = " ".join(words)
    elif len(words) >= 4 and choice < 0.7:
        del words[rng.randrange(1, len(words))]  # not the first word: the line still starts as it did
        edited = " ".join(words)
    else:
        edited = text + " (edited)"
    edited = edited.strip()
    if not edited or edited == text or edited in taken or len(edited) > MAX_CHARS:
        edited = text + " (edited)"
        while edited in taken:
            edited += " (edited)"
    return edited


def build_corpora(args: argparse.Namespace) -> dict:
    """Write the base and edited corpora (deterministic from --rows, the percentages and --seed); their paths, texts
    and what was changed."""
    n = args.rows
    base: list[str] = []
    new: list[str] = []
    n_new, n_edit, n_remove = (round(n * p / 100) for p in (args.new_pct, args.edit_pct, args.remove_pct))
    texts = corpus_texts(args.source)
    for text in texts:
        base.append(text)
        if len(base) == n:
            break
    if len(base) < n:
        raise SystemExit(f"--source {args.source}: only {len(base):,} non-blank lines, --rows is {n:,}")
    base_set = set(base)
    if len(base_set) != len(base):
        print(f"note: the base corpus holds {len(base) - len(base_set):,} duplicate lines", file=sys.stderr)
    new_set: set[str] = set()
    for text in texts:  # the lines after the base's, whose text the base lacks
        if len(new) == n_new:
            break
        if text not in base_set and text not in new_set:
            new.append(text)
            new_set.add(text)
    if len(new) < n_new:
        raise SystemExit(f"--source {args.source}: only {len(new):,} new lines after the first {n:,}, "
                         f"--new-pct needs {n_new:,}")

    rng = random.Random(args.seed)
    # lines that an edit could leave unchanged after the reader's cut are never picked for an edit
    editable = [i for i, t in enumerate(base) if len(t) < MAX_CHARS - 20]
    picked = rng.sample(editable, n_edit + n_remove)
    edited_ids, removed_ids = set(picked[:n_edit]), set(picked[n_edit:])
    taken = base_set | new_set
    edits: dict[int, str] = {}
    for i in sorted(edited_ids):
        edits[i] = edit_text(base[i], rng, taken)
        taken.add(edits[i])
    lines = [edits.get(i, t) for i, t in enumerate(base) if i not in removed_ids]
    for text in new:  # each new line at a random place among the kept ones (a re-crawl, not only an append)
        lines.insert(rng.randrange(len(lines) + 1), text)

    tag = f"{n}-n{args.new_pct:g}-e{args.edit_pct:g}-r{args.remove_pct:g}-s{args.seed}"
    base_path, edited_path = WORK / f"base-{n}.txt", WORK / f"edited-{tag}.txt"
    for path, rows in ((base_path, base), (edited_path, lines)):
        write_if_changed(path, rows)
    # a base line that, by chance, equals another's edit cannot happen (edits avoid every text), so these hold:
    expected = {"added": n_new + n_edit, "removed": n_edit + n_remove, "duplicates": len(lines) - len(set(lines)),
                "live_rows": len(set(lines))}
    return {"tag": tag, "base_path": base_path, "edited_path": edited_path, "base": base, "edited": lines,
            "n_new": n_new, "n_edit": n_edit, "n_remove": n_remove, "expected": expected}


def write_if_changed(path: Path, rows: list[str]) -> None:
    """Write one line per text (temporary name, then rename), unless the file holds exactly those bytes already
    (so a rerun keeps the file, its mtime and the caches' recorded fingerprints)."""
    data = "".join(t + "\n" for t in rows).encode("utf-8", "surrogatepass")
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def rel(path: Path) -> str:
    """`path` relative to the checkout when inside it (tc runs there), else as it is."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


# ---- caches -------------------------------------------------------------------------------------------------------

def manifest_of(cache: Path) -> dict | None:
    """The manifest of a cache folder as JSON, or None when there is none (or it is unreadable)."""
    try:
        return json.loads((cache / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def is_complete(cache: Path) -> bool:
    """True when `cache` holds a manifest saying "complete": true."""
    data = manifest_of(cache)
    return bool(data and data.get("complete"))


def shard_texts(cache: Path, shards: list[dict]) -> tuple[list[str], np.ndarray]:
    """The text and id columns of the listed Arrow shards of a cache folder, read with pyarrow alone."""
    import pyarrow as pa

    texts: list[str] = []
    ids = []
    for info in shards:
        with pa.memory_map(str(cache / info["file"])) as source:
            table = pa.ipc.open_file(source).read_all()
        texts += table.column("text").to_pylist()
        ids.append(table.column("id").to_numpy())
    return texts, np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)


def check_texts(cache: Path, shards: list[dict], base: list[str]) -> None:
    """Refuse a base cache whose rows are not exactly the base corpus, in order, with ids 0..N-1."""
    texts, ids = shard_texts(cache, shards)
    if len(texts) != len(base):
        raise SystemExit(f"{cache}: {len(texts):,} rows, the base corpus has {len(base):,} lines")
    if not np.array_equal(ids, np.arange(len(base))):
        raise SystemExit(f"{cache}: ids are not 0..{len(base) - 1}")
    for i, (a, b) in enumerate(zip(texts, base, strict=True)):
        if a != b:
            raise SystemExit(f"{cache}: row {i} is {a[:80]!r}, base corpus line {i + 1} is {b[:80]!r}")


def cache_from_shards(src: Path, k: int, dest: Path, corpus: dict) -> Path:
    """A complete base cache at `dest` made of the first `k` shards of the complete cache `src` (copied), a manifest
    listing only them (rows summed; the small files it records copied, the whole-word vocabulary of `tc vocab` and
    side teachers left out, as they describe the whole of `src`); its texts checked against the base corpus."""
    from teacher_cache.fingerprint import corpus_fingerprint

    data = manifest_of(src)
    if not data or not data.get("complete"):
        raise SystemExit(f"--from-cache {src}: not a complete cache")
    if data.get("format") != "arrow":
        raise SystemExit(f"--from-cache {src}: {data.get('format')} shards; only arrow shards are copied here")
    if len(data.get("versions") or []) > 1 or any(v.get("file") for v in data.get("versions") or []):
        raise SystemExit(f"--from-cache {src}: holds several versions or deleted rows; use a single-version cache")
    if k > len(data["shards"]):
        raise SystemExit(f"--from-shards {k}: {src} has {len(data['shards'])} shards")
    shards = data["shards"][:k]
    if dest.exists() and is_complete(dest) and [(s["file"], s["sha256"]) for s in manifest_of(dest)["shards"]] == [
            (s["file"], s["sha256"]) for s in shards]:
        print(f"base cache {rel(dest)}: already made from {rel(src)}'s first {k} shards", file=sys.stderr)
        return dest
    print(f"base cache {rel(dest)}: copying {rel(src)}'s first {k} shards", file=sys.stderr, flush=True)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for info in shards:
        shutil.copy2(src / info["file"], tmp / info["file"])
    vocab = ("vocab_words.txt", "vocab_words.safetensors")
    files = {name: record for name, record in data.get("files", {}).items()
             if name not in vocab and not name.startswith(("teachers/", "versions/"))}
    for name in files:
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / name, tmp / name)
    rows = sum(s["rows"] for s in shards)
    extra = {k2: v for k2, v in data.get("extra", {}).items() if k2 not in ("vocab_words", "note")}
    extra.update({"max_rows": None, "other_files": [],
                  "note": f"the first {k} shards of {rel(src)} (benchmarks/incremental.py)"})
    out = {**data, "shards": shards, "rows": rows, "complete": True, "files": files, "extra": extra,
           "corpus_files": [rel(corpus["base_path"])], "corpus_fingerprint": corpus_fingerprint([corpus["base_path"]]),
           "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out.pop("versions", None)
    out.pop("teachers", None)
    (tmp / MANIFEST).write_text(json.dumps(out, indent=2) + "\n")
    check_texts(tmp, shards, corpus["base"])
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    print(f"base cache {rel(dest)}: {rows:,} rows, texts = the base corpus", file=sys.stderr)
    return dest


def live_rows(cache_path: Path) -> tuple[list[str], np.ndarray, int]:
    """(texts, vectors, len(cache)) of the newest version's live rows, via open_cache (deleted ids left out)."""
    from teacher_cache.reader import open_cache

    cache = open_cache(cache_path)
    version = getattr(cache, "version", None)
    shards = list(range(version.shards)) if getattr(version, "shards", None) else None
    deleted = np.asarray(getattr(cache, "deleted_ids", None) if getattr(cache, "deleted_ids", None) is not None
                         else [], dtype=np.int64)
    texts: list[str] = []
    parts = []
    for batch in cache.iter_batches(batch_size=8192, shards=shards):
        keep = ~np.isin(batch.ids, deleted) if len(deleted) else np.ones(len(batch.ids), dtype=bool)
        texts += [t for t, k in zip(batch.texts, keep, strict=True) if k]
        parts.append(np.asarray(batch.vectors, dtype=np.float32)[keep])
    n = len(cache)
    close = getattr(cache, "close", None)
    if close:
        close()
    return texts, np.concatenate(parts), n


def first_index(texts: list[str]) -> dict[str, int]:
    """text -> the row of its first occurrence."""
    out: dict[str, int] = {}
    for i, t in enumerate(texts):
        out.setdefault(t, i)
    return out


def differences(a: np.ndarray, b: np.ndarray) -> dict:
    """max |a-b|, min and mean cosine, and how many rows are not bit-identical, of two aligned (n, dim) arrays."""
    if not len(a):
        return {"rows": 0}
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)).clip(min=1e-12)
    return {"rows": int(len(a)), "max_abs_diff": float(np.abs(a - b).max()), "min_cosine": float(cos.min()),
            "mean_cosine": float(cos.mean()), "rows_not_identical": int((a != b).any(axis=1).sum())}


def compare(incr: Path, fresh: Path, base: Path, corpus: dict) -> dict:
    """Row-by-row comparison of the incremental and the fresh cache (and the incremental one's kept rows against
    the base cache)."""
    i_texts, i_vecs, i_len = live_rows(incr)
    f_texts, f_vecs, f_len = live_rows(fresh)
    b_texts, b_vecs, _ = live_rows(base)
    i_at, f_at, b_at = first_index(i_texts), first_index(f_texts), first_index(b_texts)
    wanted = set(corpus["edited"])
    only_incr, only_fresh = sorted(set(i_at) - set(f_at)), sorted(set(f_at) - set(i_at))
    common = [t for t in f_at if t in i_at]
    kept = [t for t in common if t in b_at]
    new = [t for t in common if t not in b_at]

    def pair(texts, left, left_at, right, right_at):
        return (left[[left_at[t] for t in texts]] if texts else left[:0],
                right[[right_at[t] for t in texts]] if texts else right[:0])

    return {
        "incr_live_rows": i_len, "fresh_live_rows": f_len, "incr_rows_read": len(i_texts),
        "fresh_rows_read": len(f_texts), "incr_distinct_texts": len(i_at), "fresh_distinct_texts": len(f_at),
        "same_texts": not only_incr and not only_fresh,
        "incr_texts_are_corpus": set(i_at) == wanted, "fresh_texts_are_corpus": set(f_at) == wanted,
        "only_incr": len(only_incr), "only_fresh": len(only_fresh),
        "only_incr_examples": [t[:100] for t in only_incr[:3]],
        "only_fresh_examples": [t[:100] for t in only_fresh[:3]],
        "all": differences(*pair(common, i_vecs, i_at, f_vecs, f_at)),
        "kept": differences(*pair(kept, i_vecs, i_at, f_vecs, f_at)),
        "new": differences(*pair(new, i_vecs, i_at, f_vecs, f_at)),
        "kept_vs_base": differences(*pair(kept, i_vecs, i_at, b_vecs, b_at)),
    }


# ---- steps --------------------------------------------------------------------------------------------------------

def timed(cmd: list[str], log: Path) -> tuple[float, int]:
    """Run one command (cwd: the checkout), stdout and stderr to `log`; (wall s, exit code). A child still running
    when we are stopped is killed first."""
    print("  $ " + " ".join(cmd), file=sys.stderr, flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            rc = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        return time.perf_counter() - start, rc


def tail(log: Path, chars: int = 3000) -> str:
    """The end of a log file."""
    try:
        return log.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def encode_cmd(args: argparse.Namespace, corpus: Path, out: Path, precision: str) -> list[str]:
    """The `tc encode` command of every step."""
    cmd = [TC, "encode", "--corpus", rel(corpus), "--out", rel(out), "--pooling", "mean", "--precision", precision]
    if args.teacher:
        cmd += ["--teacher", args.teacher]
    return cmd + [a for extra in args.encode_arg for a in extra.split("=", 1)]


def step_file(out: Path) -> Path:
    """Where a step's timing is kept beside its output folder."""
    return out.with_name(out.name + ".step.json")


def done_step(out: Path) -> dict | None:
    """A finished step's record (its cache complete and its timing file there), else None."""
    path = step_file(out)
    if path.is_file() and is_complete(out):
        return json.loads(path.read_text())
    return None


def run_encode_step(name: str, cmd: list[str], out: Path, resumable: bool) -> dict:
    """One timed `tc encode` step into `out`: skipped when done; an interrupted one is resumed (wall times summed
    over the attempts) when `resumable` (else the caller starts it again from scratch: the incremental step, from
    a fresh copy); its record saved in <out>.step.json."""
    record = done_step(out)
    if record:
        print(f"{name}: {rel(out)} complete, {record['wall_s']} s ({step_file(out).name}); skipped",
              file=sys.stderr)
        return record
    if is_complete(out) and resumable:  # complete, but made outside this benchmark: its time is unknown
        if name != "base":
            raise SystemExit(f"{name}: {rel(out)} is complete but has no {step_file(out).name} (its time is "
                             "unknown); delete it to measure the step")
        record = {"wall_s": None, "attempts": 0, "cmd": cmd, "log": None, "log_tail": "", "note": "made before"}
        step_file(out).write_text(json.dumps(record, indent=2) + "\n")
        return record
    attempts_file = out.with_name(out.name + ".attempts.json")
    attempts = json.loads(attempts_file.read_text()) if resumable and attempts_file.is_file() and out.exists() else []
    log = out.with_name(out.name + ".log")
    if not attempts:
        log.unlink(missing_ok=True)
    start = time.perf_counter()
    try:
        wall, rc = timed(cmd, log)
    except BaseException:
        if resumable:
            attempts.append({"wall_s": round(time.perf_counter() - start, 2), "interrupted": True})
            attempts_file.write_text(json.dumps(attempts))
        raise
    if rc != 0:
        raise SystemExit(f"{name}: command failed ({rc}): {' '.join(cmd)}\n{tail(log, 2000)}")
    if not is_complete(out):
        raise SystemExit(f"{name}: {rel(out)} is not complete after the run\n{tail(log, 2000)}")
    attempts.append({"wall_s": round(wall, 2), "interrupted": False})
    record = {"wall_s": round(sum(a["wall_s"] for a in attempts), 2), "attempts": len(attempts), "cmd": cmd,
              "log": rel(log), "log_tail": tail(log), "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    step_file(out).write_text(json.dumps(record, indent=2) + "\n")
    attempts_file.unlink(missing_ok=True)
    print(f"{name}: {record['wall_s']:.1f} s", file=sys.stderr, flush=True)
    return record


def incremental_step(args: argparse.Namespace, base: Path, corpus: dict, precision: str) -> dict:
    """(ii): copy the base cache (cp -r, timed apart), then `tc encode --corpus EDITED --out COPY`, timed; redone
    from a fresh copy when interrupted."""
    out = WORK / f"incr-{corpus['tag']}-{base.name}"
    record = done_step(out)
    if record:
        print(f"incremental: {rel(out)} complete, {record['wall_s']:.1f} s; skipped", file=sys.stderr)
        return record
    shutil.rmtree(out, ignore_errors=True)
    step_file(out).unlink(missing_ok=True)
    start = time.perf_counter()
    subprocess.run(["cp", "-r", str(base), str(out)], check=True)
    copy_s = time.perf_counter() - start
    record = run_encode_step("incremental", encode_cmd(args, corpus["edited_path"], out, precision), out,
                             resumable=False)
    record["copy_s"] = round(copy_s, 2)
    found = VERSION_LINE.findall(tail(out.with_name(out.name + ".log"), 200_000))
    match = found[-1] if found else None  # the last such line
    record["reported"] = None if match is None else {
        "version": int(match[0]), "added": int(match[1].replace(",", "")),
        "removed": int(match[2].replace(",", "")), "duplicates": int(match[3].replace(",", ""))}
    step_file(out).write_text(json.dumps(record, indent=2) + "\n")
    return record


def base_step(args: argparse.Namespace, corpus: dict) -> tuple[Path, dict | None, str]:
    """(i): the base cache (given, copied from another cache's shards, or encoded); (path, encode record or None,
    its source label)."""
    if args.base_cache:
        data = manifest_of(args.base_cache)
        if not data or not data.get("complete"):
            raise SystemExit(f"--base-cache {args.base_cache}: not a complete cache")
        check_texts(args.base_cache, data["shards"], corpus["base"])
        return args.base_cache, None, f"base-cache:{rel(args.base_cache)}"
    if args.from_cache:
        dest = WORK / f"base-{args.rows}-{args.from_cache.name}-k{args.from_shards}"
        return cache_from_shards(args.from_cache, args.from_shards, dest, corpus), None, \
            f"from-cache:{rel(args.from_cache)}:{args.from_shards}"
    out = WORK / f"base-{args.rows}-encoded"
    record = run_encode_step("base", encode_cmd(args, corpus["base_path"], out, args.precision or "auto"), out,
                             resumable=True)
    return out, record, "encoded"


# ---- results ------------------------------------------------------------------------------------------------------

def done_rows(results: Path) -> list[dict]:
    """Rows already measured."""
    if not results.exists():
        return []
    return [json.loads(line) for line in results.read_text().splitlines() if line.strip()]


def table(rows: list[dict]) -> str:
    """Markdown table of every measured row."""
    lines = ["| base rows | edit (new/edited/removed) | base from | incremental s | fresh s | ratio | goal <= 5% | "
             "reported (+new, removed, dup) | same texts | max abs diff | min cosine (kept / new) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rep = r.get("reported") or {}
        c = r["compare"]
        lines.append(
            f"| {r['rows']:,} | {r['n_new']:,} / {r['n_edit']:,} / {r['n_remove']:,} | {r['base_source']} | "
            f"{r['incremental_s']:.1f} | {r['fresh_s']:.1f}{'*' if r.get('fresh_attempts', 1) > 1 else ''} | "
            f"{r['ratio'] * 100:.2f}% | {'yes' if r['goal_met'] else 'no'} | "
            f"+{rep.get('added', '?')}, {rep.get('removed', '?')}, {rep.get('duplicates', '?')} | "
            f"{'yes' if c['same_texts'] else 'no'} | {c['all'].get('max_abs_diff', float('nan')):.2e} | "
            f"{c['kept'].get('min_cosine', float('nan')):.6f} / {c['new'].get('min_cosine', float('nan')):.6f} |")
    return "\n".join(lines)


def main() -> None:
    """Build the corpora, then run the steps not done yet and append the row (unless --prepare-only)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=SOURCE, help="text file the lines come from (default "
                        "benchmarks/work/distill-new.txt)")
    parser.add_argument("--rows", type=int, default=None, help="base corpus lines (default 100000, or the rows of "
                        "--from-cache's first --from-shards shards)")
    parser.add_argument("--new-pct", type=float, default=1.0, help="new lines, %% of --rows (default 1)")
    parser.add_argument("--edit-pct", type=float, default=1.0, help="edited lines, %% of --rows (default 1)")
    parser.add_argument("--remove-pct", type=float, default=1.0, help="removed lines, %% of --rows (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the edits' RNG (default 0)")
    parser.add_argument("--base-cache", type=Path, help="an existing complete cache of exactly the base corpus's "
                        "rows, instead of step (i)")
    parser.add_argument("--from-cache", type=Path, help="make the base cache from this complete cache's first "
                        "--from-shards shards (its rows: the first lines of --source, in order; checked)")
    parser.add_argument("--from-shards", type=int, help="with --from-cache: how many shards")
    parser.add_argument("--teacher", help="tc encode --teacher (default: tc's)")
    parser.add_argument("--precision", help="tc encode --precision of every step (default: the base cache's; auto "
                        "when encoding the base)")
    parser.add_argument("--encode-arg", action="append", default=[],
                        help="another tc encode option for every step, as --encode-arg=--max-tokens=8192")
    parser.add_argument("--prepare-only", action="store_true", help="build the corpora (and a --from-cache base "
                        "cache) and print their sizes; encode nothing")
    parser.add_argument("--results", type=Path, default=RESULTS_FILE, help="jsonl of rows (default %(default)s)")
    parser.add_argument("--table", action="store_true", help="print a markdown table of every row in --results")
    args = parser.parse_args()

    if args.table and not (args.prepare_only or args.from_cache or args.base_cache or args.rows):
        print(table(done_rows(args.results)))
        return
    if bool(args.from_cache) != bool(args.from_shards):
        parser.error("--from-cache and --from-shards go together")
    if args.from_cache and args.base_cache:
        parser.error("--base-cache or --from-cache, not both")
    if args.from_cache:
        data = manifest_of(args.from_cache)
        if not data:
            parser.error(f"--from-cache {args.from_cache}: no manifest.json there")
        k_rows = sum(s["rows"] for s in data["shards"][:args.from_shards])
        if args.rows is None:
            args.rows = k_rows
        elif args.rows != k_rows:
            parser.error(f"--rows {args.rows}: {args.from_cache}'s first {args.from_shards} shards hold {k_rows:,}")
    args.rows = args.rows or 100_000

    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.2f}", file=sys.stderr)
    corpus = build_corpora(args)
    for label, key in (("base", "base"), ("edited", "edited")):
        path = corpus[f"{key}_path"]
        print(f"{label} corpus: {rel(path)}: {len(corpus[key]):,} lines, {path.stat().st_size:,} bytes",
              file=sys.stderr)
    print(f"changes: +{corpus['n_new']:,} new, {corpus['n_edit']:,} edited, {corpus['n_remove']:,} removed; "
          f"expected from the incremental run: {corpus['expected']}", file=sys.stderr)
    if args.prepare_only:
        if args.from_cache:
            base_step(args, corpus)
        return

    base, base_record, base_source = base_step(args, corpus)
    precision = args.precision or manifest_of(base)["precision"]
    key = json.dumps({"rows": args.rows, "new_pct": args.new_pct, "edit_pct": args.edit_pct,
                      "remove_pct": args.remove_pct, "seed": args.seed, "base_source": base_source,
                      "teacher": args.teacher, "precision": precision, "encode_args": args.encode_arg},
                     sort_keys=True)
    if any(r.get("key") == key for r in done_rows(args.results)):
        print(f"already in {rel(args.results)}; skipped (delete its line to measure again)", file=sys.stderr)
    else:
        load = os.getloadavg()[0]
        incr = incremental_step(args, base, corpus, precision)
        fresh_out = WORK / f"fresh-{corpus['tag']}"
        fresh = run_encode_step("fresh", encode_cmd(args, corpus["edited_path"], fresh_out, precision), fresh_out,
                                resumable=True)
        cmp = compare(WORK / f"incr-{corpus['tag']}-{base.name}", fresh_out, base, corpus)
        ratio = incr["wall_s"] / fresh["wall_s"]
        row = {"key": key, "rows": args.rows, "rows_edited": len(corpus["edited"]), "n_new": corpus["n_new"],
               "n_edit": corpus["n_edit"], "n_remove": corpus["n_remove"], "seed": args.seed,
               "base_source": base_source, "precision": precision,
               "base_s": base_record["wall_s"] if base_record else None, "copy_s": incr["copy_s"],
               "incremental_s": incr["wall_s"], "fresh_s": fresh["wall_s"], "fresh_attempts": fresh["attempts"],
               "ratio": round(ratio, 4), "goal_met": ratio <= GOAL, "reported": incr.get("reported"),
               "expected": corpus["expected"],
               "reported_as_expected": bool(incr.get("reported")) and all(
                   incr["reported"][k] == corpus["expected"][k] for k in ("added", "removed", "duplicates")),
               "compare": cmp, "incremental_log_tail": incr["log_tail"][-1500:],
               "load_average_at_start": round(load, 2), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
               "machine": machine()}
        args.results.parent.mkdir(parents=True, exist_ok=True)
        with args.results.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(json.dumps({k: v for k, v in row.items() if k != "incremental_log_tail"}), flush=True)
    if args.table:
        print(table(done_rows(args.results)))


if __name__ == "__main__":
    main()
