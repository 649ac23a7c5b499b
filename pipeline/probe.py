"""`tc probe`: how close are the student's neighbourhoods to the teacher's, on held-out cached rows.

--report may be a store URL (s3://bucket/prefix): the report is written exactly as into a folder, into a local
staging folder (user cache dir / staging-reports / a hash of the URL, locked for the run), then uploaded file by
file, report.json last (teacher_cache/remote_out.py, shared with tc train-student --out and tc export --out).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from pipeline import plots
from pipeline.config import ProbeConfig
from pipeline.neighbours import NeighbourIndex, build_index, normalize
from student.remote import student_folder
from student.student import load_student_folder
from teacher_cache import open_cache
from teacher_cache.base.atomic import fsync_file
from teacher_cache.base.errors import NO_SPACE, CacheError, UserError, reason
from teacher_cache.base.lock import FolderLock
from teacher_cache.base.progress import format_seconds
from teacher_cache.base.signals import sigterm_as_interrupt
from teacher_cache.encode.batching import teacher_encoder
from teacher_cache.remote_out import RemoteOut, local_folder

RECALL_DEPTHS = (10, 50, 100)
STAGING_KIND = "staging-reports"  # a URL's staging folder: user cache dir / this / a hash of the URL
# write_report's files, in the order it places them: report.json, the summary a reader looks for, last
REPORT_FILES = ("agreement_hist.png", "similarity_scatter.png", "agreement_by_length.png", "report.md", "report.json")


def validate(cfg: ProbeConfig, rows: int) -> int:
    """Check flag values against the cache size; return how many rows will be probed."""
    if cfg.k < 1:
        raise UserError(f"--k {cfg.k}: must be at least 1")
    if cfg.queries is not None and cfg.queries < 1:
        raise UserError(f"--queries {cfg.queries}: must be at least 1")
    if cfg.max_rows is not None and cfg.max_rows < 2:
        raise UserError(f"--max-rows {cfg.max_rows}: must be at least 2")
    for text in cfg.query_texts:
        if not text.strip():
            raise UserError("--query: an empty sentence; give some text")
    n = min(rows, cfg.max_rows or rows)
    if cfg.queries is None:
        cfg.queries = max(1, min(1000, n // 5))
    if cfg.queries >= n:
        raise UserError(f"--queries {cfg.queries}: must be fewer than the {n:,} rows probed")
    if cfg.k > n - cfg.queries:
        raise UserError(f"--k {cfg.k}: larger than the {n - cfg.queries:,} rows the queries are searched among")
    return n


def neighbour_metrics(t_db: np.ndarray, s_db: np.ndarray, t_q: np.ndarray, s_q: np.ndarray,
                      t_ids: np.ndarray, s_ids: np.ndarray, k: int, random_rows: int = 100,
                      seed: int = 0) -> dict:
    """Per-query agreement, recall of the teacher's top-k in the student's top-k', and similarity Spearman.

    The Spearman pairs of a query are chosen without looking at the student, so that a student that disagrees
    is not penalised by construction: the teacher's whole searched list (its top-100) plus `random_rows` random
    database rows. The scatter plot draws the same pairs.
    """
    agreement = np.array([len(set(t[:k]) & set(s[:k])) / k for t, s in zip(t_ids, s_ids, strict=True)])
    recalls = {}
    for depth in RECALL_DEPTHS:
        if depth <= s_ids.shape[1]:
            recalls[depth] = float(np.mean([len(set(t[:k]) & set(s[:depth])) / k
                                            for t, s in zip(t_ids, s_ids, strict=True)]))
    rng = np.random.default_rng(seed)
    rhos, pair_t, pair_s = [], [], []
    for q in range(len(t_ids)):
        extra = rng.choice(len(t_db), min(random_rows, len(t_db)), replace=False)
        pairs = np.union1d(t_ids[q], extra)
        ts, ss = t_db[pairs] @ t_q[q], s_db[pairs] @ s_q[q]
        pair_t.append(ts)
        pair_s.append(ss)
        rho = spearmanr(ts, ss).statistic if len(pairs) > 2 else np.nan
        rhos.append(rho)
    return {"agreement": agreement, "recall": recalls, "spearman": np.array(rhos, dtype=float),
            "pair_teacher": np.concatenate(pair_t), "pair_student": np.concatenate(pair_s)}


def timed_search(index: NeighbourIndex, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Search and return (sims, ids, seconds per 1,000 queries)."""
    start = time.perf_counter()
    sims, ids = index.search(queries, k)
    return sims, ids, (time.perf_counter() - start) * 1000 / max(len(queries), 1)


def run_probe(cfg: ProbeConfig) -> dict:
    """Run the probe, write report.json, report.md and PNG plots into cfg.report (a folder, or a store URL: written
    into its staging folder, then uploaded, report.json last); return the report.

    --report is locked for the run, so a second probe into it is refused in one line rather than mixing files."""
    remote = RemoteOut.open(cfg.report, "--report", STAGING_KIND)
    folder = local_folder(cfg.report) if remote is None else remote.folder
    lock = FolderLock(folder, "tc probe", "--report") if remote is None else remote.hold("tc probe")
    with sigterm_as_interrupt(), lock:  # SIGTERM: as Ctrl-C, exit 143
        if remote is not None:
            remote.empty_staging()  # what a failed upload left: this run's report is written afresh
        report = probe(cfg, folder)
        if remote is not None:
            remote.publish(REPORT_FILES, last=REPORT_FILES)  # one by one as placed locally: report.json last
            remote.empty_staging()  # the report is in the store now; the scratch copy would only take disk
        return report


def probe(cfg: ProbeConfig, folder: Path) -> dict:
    """The probe itself, its files written into `folder` (--report, or its URL's staging folder; run_probe holds
    its lock)."""
    cache = open_cache(cfg.shards, cache_dir=cfg.cache_dir, cache_limit=cfg.cache_limit, version=cfg.version)
    column = cache.vector_column(cfg.column)
    try:
        cache.read_shard(0, ["text"])
    except (KeyError, CacheError):
        raise CacheError(f"{cfg.shards}: the cache holds no texts, so the student has nothing to encode") from None
    n = validate(cfg, len(cache))
    student = load_student_folder(student_folder(cfg.student, "--student"), "--student")  # a URL: downloaded
    if student.dim != cache.dim:
        raise UserError(f"--student {cfg.student}: outputs {student.dim}-d vectors but the cache holds "
                         f"{cache.dim}-d; probe a student distilled from this cache")
    rng = np.random.default_rng(cfg.seed)
    live = np.flatnonzero(cache.live(np.arange(cache.id_rows)))  # the version's rows (all, unless it deleted some)
    ids = np.sort(live[rng.choice(len(live), n, replace=False)]) if n < len(live) else live
    texts = cache.texts(ids)
    teacher_vecs = normalize(cache.vectors(column, ids))
    start = time.perf_counter()
    student_vecs = normalize(student.encode(texts, batch_size=cfg.batch_size, show_progress_bar=not cfg.quiet))
    student_rate = n / (time.perf_counter() - start)
    n_tokens = token_counts(cache, ids)
    is_query = np.zeros(n, bool)
    is_query[rng.choice(n, cfg.queries, replace=False)] = True
    q_rows, db_rows = np.flatnonzero(is_query), np.flatnonzero(~is_query)
    depth = min(max(cfg.k, max(RECALL_DEPTHS)), len(db_rows))
    searches = len(q_rows) + len(cfg.query_texts)
    # Tuned at the depth searched: an index tuned for recall@k loses more of the top-100 and biases recall@100.
    t_index = build_index(teacher_vecs[db_rows], cfg.index, depth, seed=cfg.seed, n_queries=searches)
    s_index = build_index(student_vecs[db_rows], cfg.index, depth, seed=cfg.seed, n_queries=searches)
    _, t_ids, t_ms = timed_search(t_index, teacher_vecs[q_rows], depth)
    _, s_ids, s_ms = timed_search(s_index, student_vecs[q_rows], depth)
    m = neighbour_metrics(teacher_vecs[db_rows], student_vecs[db_rows], teacher_vecs[q_rows],
                          student_vecs[q_rows], t_ids, s_ids, cfg.k, seed=cfg.seed)
    cosine = (teacher_vecs * student_vecs).sum(1)
    report = {
        "cache": str(cfg.shards), "student": str(cfg.student), "column": column, "rows_probed": int(n),
        "queries": int(cfg.queries), "k": cfg.k,
        f"knn@{cfg.k}_agreement": float(m["agreement"].mean()),
        "recall_in_student_topk": {str(d): v for d, v in m["recall"].items()},
        "neighbour_similarity_spearman": float(np.nanmean(m["spearman"])),
        "mean_cosine_student_teacher": float(cosine.mean()),
        "student_sentences_per_s": round(student_rate, 1),
        "index": {"kind": t_index.kind, "build_s": round(t_index.build_s + s_index.build_s, 3),
                  "ms_per_1000_queries": round((t_ms + s_ms) / 2 * 1000, 1),
                  "recall_vs_exact": t_index.recall, "recall_depth": int(depth), "param": t_index.param},
        "worst_queries": worst_queries(m["agreement"], q_rows, db_rows, t_ids, s_ids, texts, ids, cfg),
    }
    if cfg.query_texts:
        report["user_queries"] = user_queries(cfg, cache, student, t_index, s_index, texts, db_rows, ids)
    write_report(cfg, report, m, n_tokens[q_rows], folder)
    return report


def token_counts(cache, ids: np.ndarray) -> np.ndarray:
    """n_tokens of the given row ids."""
    all_counts = np.concatenate([cache.read_shard(i, ["n_tokens"]).column("n_tokens").to_numpy()
                                 for i in range(len(cache.shards))])
    return all_counts[ids]


def worst_queries(agreement, q_rows, db_rows, t_ids, s_ids, texts, ids, cfg: ProbeConfig) -> list[dict]:
    """The queries whose neighbourhoods the student keeps least, with both neighbour lists."""
    out = []
    for q in np.argsort(agreement, kind="stable")[:cfg.worst]:
        out.append({"id": int(ids[q_rows[q]]), "text": texts[q_rows[q]], "agreement": float(agreement[q]),
                    "teacher_neighbours": [texts[db_rows[j]] for j in t_ids[q, :min(cfg.k, 5)]],
                    "student_neighbours": [texts[db_rows[j]] for j in s_ids[q, :min(cfg.k, 5)]]})
    return out


def user_queries(cfg: ProbeConfig, cache, student, t_index, s_index, texts, db_rows, ids) -> list[dict]:
    """Neighbours of sentences the user typed: student side always, teacher side unless --teacher-free."""
    k = min(cfg.k, 5)
    s_vecs = normalize(student.encode(cfg.query_texts))
    _, s_ids = s_index.search(s_vecs, k)
    t_ids = None
    if not cfg.teacher_free:
        name = cfg.teacher or cache.manifest.teacher
        try:
            encode = teacher_encoder(name, pooling=cache.manifest.columns.get(cache.vector_column(cfg.column)),
                                     max_length=cache.manifest.max_length)
        except UserError as exc:
            raise UserError(f"--query needs the teacher loaded ({exc}); "
                            "pass --teacher PATH or --teacher-free") from None
        _, t_ids = t_index.search(normalize(encode(cfg.query_texts)), k)
    return [{"text": text, "student_neighbours": [texts[db_rows[j]] for j in s_ids[i]],
             "teacher_neighbours": None if t_ids is None else [texts[db_rows[j]] for j in t_ids[i]]}
            for i, text in enumerate(cfg.query_texts)]


def write_report(cfg: ProbeConfig, report: dict, m: dict, query_tokens: np.ndarray, folder: Path) -> None:
    """report.json, report.md and three PNG plots (into `folder`, which run_probe's lock made), all or none of them.

    Every file is first written into a hidden folder of this run inside --report, then renamed into place,
    report.json last; a write that fails (a full disk) removes them all, so a fresh --report stays empty (and is
    removed with the lock), and is one line naming --report and the file."""
    writers = {
        "agreement_hist.png": lambda path: plots.agreement_histogram(m["agreement"], cfg.k, path),
        "similarity_scatter.png": lambda path: plots.similarity_scatter(m["pair_teacher"], m["pair_student"], path),
        "agreement_by_length.png": lambda path: plots.agreement_by_length(query_tokens, m["agreement"], path),
        "report.md": lambda path: path.write_text(render_markdown(report)),
        "report.json": lambda path: path.write_text(json.dumps(report, indent=2) + "\n"),  # last: complete
    }
    name = "a temporary folder"
    placed: list[Path] = []  # new files renamed in where none was before: removed again if a later rename fails
    for stale in folder.glob(".probe-tmp-*"):  # a killed probe's (the lock is ours: no other probe runs here)
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
    try:
        staging = Path(tempfile.mkdtemp(prefix=".probe-tmp-", dir=folder))  # ours alone: no planted link inside
        try:
            for name, write in writers.items():
                write(staging / name)
                fsync_file(staging / name)
            for name in writers:
                fresh = not (folder / name).exists()
                os.replace(staging / name, folder / name)
                if fresh:
                    placed.append(folder / name)
        except BaseException:
            for path in placed:
                path.unlink(missing_ok=True)
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except Exception as exc:
        why = reason(exc)
        if isinstance(exc, OSError) or why == NO_SPACE:
            raise UserError(f"--report {cfg.report}: cannot write {name} ({why}); no report written") from None
        raise


def render_markdown(report: dict) -> str:
    """A readable report: summary table, index facts, worst queries side by side."""
    k = report["k"]
    idx = report["index"]
    lines = [f"# Probe: {report['student']} vs the teacher cache {report['cache']}", "",
             f"{report['rows_probed']:,} rows probed ({report['queries']:,} held-out queries), vectors: "
             f"`{report['column']}`.", "", "| metric | value |", "|---|---|",
             f"| kNN@{k} agreement | {report[f'knn@{k}_agreement']:.3f} |"]
    for depth, value in report["recall_in_student_topk"].items():
        lines.append(f"| recall of teacher top-{k} in student top-{depth} | {value:.3f} |")
    spearman_rows = f"teacher top-{idx['recall_depth']} + 100 random rows"
    lines += [f"| Spearman of similarities ({spearman_rows}) | {report['neighbour_similarity_spearman']:.3f} |",
              f"| mean cosine student vs teacher | {report['mean_cosine_student_teacher']:.3f} |",
              f"| student encode, sentences/s | {report['student_sentences_per_s']:,.0f} |", "",
              f"Index: {idx['kind']}, built in {format_seconds(idx['build_s'])}, "
              f"{idx['ms_per_1000_queries']:.0f} ms per 1,000 queries"
              + (f", recall@{idx['recall_depth']} vs exact {idx['recall_vs_exact']:.3f} (the figures above use "
                 "these approximate neighbours)" if idx["recall_vs_exact"] is not None else "")
              + ".", "", "![agreement](agreement_hist.png) ![scatter](similarity_scatter.png) "
              "![length](agreement_by_length.png)", "", "## Worst queries", ""]
    for item in report["worst_queries"]:
        lines += [f"### id {item['id']} (agreement {item['agreement']:.2f}): {item['text']}", "",
                  "| teacher's neighbours | student's neighbours |", "|---|---|"]
        lines += [f"| {t.replace('|', '/')} | {s.replace('|', '/')} |"
                  for t, s in zip(item["teacher_neighbours"], item["student_neighbours"], strict=True)]
        lines.append("")
    for item in report.get("user_queries", []):
        lines += [f"## Query: {item['text']}", ""]
        teacher = item["teacher_neighbours"] or ["(teacher not loaded: --teacher-free)"] * len(
            item["student_neighbours"])
        lines += ["| teacher's neighbours | student's neighbours |", "|---|---|"]
        lines += [f"| {t} | {s} |" for t, s in zip(teacher, item["student_neighbours"], strict=True)]
        lines.append("")
    return "\n".join(lines) + "\n"


def summary_line(report: dict) -> str:
    """One line for the terminal."""
    k = report["k"]
    return (f"kNN@{k} agreement {report[f'knn@{k}_agreement']:.3f}, recall@100 "
            f"{report['recall_in_student_topk'].get('100', float('nan')):.3f}, "
            f"cosine {report['mean_cosine_student_teacher']:.3f}")

