"""The paged KV cache: a pool of fixed-size pages on the device, handed out by a host allocator.

Device side, ``k`` and ``v`` of shape ``[L, num_pages, page_size, Hkv, D]``, all layers in one
array each. A step's attention reads the cache as it was before the step, plus the step's own new
K/V; the new K/V of every layer are written back in one scatter at the end of the step, into the
donated buffers. Page 0 is never handed out: padding tokens write there, so every step writes a
fixed-size batch with no branch. Host side, :class:`~jlora.scheduler.pages.PagePool` keeps the free
list (the scheduler's).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from jlora.scheduler.pages import TRASH_PAGE
from models.config import ModelConfig

# TRASH_PAGE is the page pool's (host) convention; the steps (device) write padding there.
__all__ = [
    "TRASH_PAGE",
    "KVCache",
    "allocate_kv_cache",
    "commit_kv_state",
    "kv_bytes_per_page",
    "kv_state",
    "write_kv",
]


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class KVCache:
    k: jax.Array  # [L, num_pages, page_size, Hkv, D]
    v: jax.Array  # [L, num_pages, page_size, Hkv, D]


def kv_bytes_per_page(cfg: ModelConfig, page_size: int, dtype) -> int:
    return 2 * cfg.num_layers * page_size * cfg.kv_size * jnp.dtype(dtype).itemsize


def allocate_kv_cache(cfg: ModelConfig, num_pages: int, page_size: int, dtype) -> KVCache:
    shape = (cfg.num_layers, num_pages, page_size, cfg.num_kv_heads, cfg.head_dim)
    return KVCache(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype))


def write_kv(
    cache: KVCache,
    slot_mapping: jax.Array,  # [T] int32 flat index page * page_size + offset
    k: jax.Array,  # [L, T, Hkv, D]
    v: jax.Array,  # [L, T, Hkv, D]
) -> KVCache:
    """Scatter one step's new K/V of every layer into their pages (in place: the cache is
    donated)."""
    nl, n, ps, h, d = cache.k.shape

    def put(buf, new):
        flat = buf.reshape(nl, n * ps, h, d).at[:, slot_mapping].set(new.astype(buf.dtype))
        return flat.reshape(nl, n, ps, h, d)

    return KVCache(k=put(cache.k, k), v=put(cache.v, v))


def kv_state(cache: KVCache):
    """The state a step threads through the layers: the cache (read) and the new K/V so far."""
    return (cache, (), ())


def commit_kv_state(state, slot_mapping: jax.Array) -> KVCache:
    cache, ks, vs = state
    return write_kv(cache, slot_mapping, jnp.stack(ks), jnp.stack(vs))
