"""teacher-cache: run a BERT teacher over a corpus once and keep its sentence vectors in sharded files."""

from teacher_cache.base.errors import CacheError, UserError
from teacher_cache.manifest import CacheManifest, ShardInfo
from teacher_cache.reader import CacheBatch, TeacherCache, open_cache
from teacher_cache.shards import ShardWriter

__all__ = ["CacheBatch", "CacheError", "CacheManifest", "ShardInfo", "ShardWriter", "TeacherCache", "UserError",
           "open_cache"]
