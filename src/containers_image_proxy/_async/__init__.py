"""The asyncio front end: proxy, blob reader and pool.

``_async`` is the source; ``_sync`` is generated from it by scripts/unasync.py, and only
``_backend.py`` is written by hand on each side.
"""

from .pool import AsyncProxyPool
from .proxy import AsyncImageProxy
from .reader import AsyncBlobReader

__all__ = ["AsyncBlobReader", "AsyncImageProxy", "AsyncProxyPool"]
