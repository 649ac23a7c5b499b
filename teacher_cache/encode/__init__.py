"""Encoding a corpus with a teacher: the run (local and Ray), its settings, batching, the corpus reader, the
teacher, its per-token outputs and the task teacher's logits cache. Above the cache format (teacher_cache/*.py),
which sits above base/."""
