"""The finished student folder: weights and tokenizer, training_args.json, metrics.json and a README model card."""

from __future__ import annotations

import json
from pathlib import Path

from teacher_cache.base.atomic import atomic_write


def _fmt(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def describe(args: dict) -> str:
    """'bilstm: embedding 300, hidden 512 x 2 directions, 1 layer(s), max pooling' and the like."""
    parts = [f"embedding {args['emb_dim']}"]
    if args["arch"] == "bilstm":
        parts.append(f"hidden {args['hidden']} x 2 directions, {args['layers']} layer(s)")
    elif args["arch"] == "cnn":
        parts.append(f"{args['hidden']} channels per kernel width")
    return f"{args['arch']}: {', '.join(parts)}, {args['pooling']} pooling"


def model_card(args: dict, metrics: dict, n_params: int) -> str:
    """README.md text: what the student is, what taught it, on how much data, and how close it got."""
    cache = args.get("cache", {})
    final, initial = metrics.get("final", {}), metrics.get("initial", {})
    rows = "\n".join(f"| {k} | {_fmt(initial.get(k, ''))} | {_fmt(v)} |" for k, v in final.items())
    static = args.get("arch") == "static" and args.get("pooling", "mean") == "mean"
    st_flag = "" if static else ", trust_remote_code=True"
    st_how = ("its own StaticEmbedding module, the same cosines; its evaluators, similarity functions, losses and "
              "trainer work on it" if static else "same vectors; its evaluators, similarity functions, losses and "
              "trainer work on it; the flag lets it import this package's module class, nothing is downloaded")
    return f"""# Student sentence encoder ({args['arch']})

Distilled without labels from the sentence vectors of a cached teacher (sentence representation
approximation, Wu et al. 2020): the student learns to reproduce the teacher's vector of each sentence.

| | |
|---|---|
| architecture | {describe(args)} -> {cache.get('dim')} |
| parameters | {n_params:,} |
| teacher | {cache.get('teacher')} (weights {str(cache.get('teacher_hash', ''))[:12]}) |
| target | `{args['target_column']}` ({cache.get('target_pooling')} pooling), loss {args['loss']} |
| cache | {cache.get('path')} (corpus fingerprint {str(cache.get('corpus_fingerprint', ''))[:12]}, \
{cache.get('rows', 0):,} rows) |
| training | {metrics.get('rows_seen', 0):,} sentences seen ({metrics.get('train_rows', 0):,} rows x \
{args['epochs']} epoch(s)), {metrics.get('steps', 0):,} steps, batch {args['batch_size']}, lr {args['lr']} |
| initial embeddings | {args['init_embeddings']} |

## Validation ({metrics.get('val_rows', 0):,} held-out cache rows, chosen by id)

| metric | at start | final |
|---|---|---|
{rows}

`knn@10` is the share of each sentence's 10 nearest teacher neighbours that are also its 10 nearest
student neighbours (cosine, among the validation rows).

## Use

Three ways to load it. With this package (`pip install teacher-cache`):

```python
from student import Student

model = Student.from_pretrained("{args.get('out', '.')}")
vectors = model.encode(["A sentence.", "Another one."])  # numpy, (2, {cache.get('dim')})
```

With sentence-transformers ({st_how}):

```python
from sentence_transformers import SentenceTransformer

model = SentenceTransformer("{args.get('out', '.')}"{st_flag})
vectors = model.encode(["A sentence.", "Another one."])
```

Without torch, after `tc export --model {args.get('out', '.')} --to onnx --out onnx_out/`
(`pip install 'teacher-cache[onnx]'`):

```python
from student import OnnxStudent

model = OnnxStudent.from_pretrained("onnx_out/")
vectors = model.encode(["A sentence.", "Another one."], batch_size=32)
```
{model2vec_use(args)}"""


def model2vec_use(args: dict) -> str:
    """The model2vec paragraph of the card, for static students only."""
    if args.get("arch") != "static":
        return ""
    return f"""
A static student also exports to model2vec (`tc export --model {args.get('out', '.')} --to model2vec --out m2v/`,
`--dtype int8` for about a quarter of the size): `model2vec.StaticModel.from_pretrained("m2v/")` gives the same vectors.
"""


def write_run_files(out: str | Path, args: dict, metrics: dict, n_params: int) -> None:
    """Write training_args.json, metrics.json and README.md into `out` (each atomically)."""
    out = Path(out)
    atomic_write(out / "training_args.json", json.dumps(args, indent=2) + "\n")
    atomic_write(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    atomic_write(out / "README.md", model_card(args, metrics, n_params))
