"""mvc.store: content-addressed, delta-compressed tensor objects (layer 2).

Never imports torch: everything works on raw bytes and numpy bit patterns.
"""

from mvc.store.chunking import DEFAULT_CHUNK_BYTES, iter_pieces, row_chunks
from mvc.store.gc import GcReport
from mvc.store.ids import object_id
from mvc.store.objects import (
    MAX_DELTA_DEPTH,
    ObjectInfo,
    ObjectStore,
    PutRequest,
)

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "MAX_DELTA_DEPTH",
    "GcReport",
    "ObjectInfo",
    "ObjectStore",
    "PutRequest",
    "iter_pieces",
    "object_id",
    "row_chunks",
]
