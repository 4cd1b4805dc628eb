"""Token sampling on the device, per row: greedy, temperature, top-k and top-p.

Each row carries its own parameters and a key derived from (request seed, output index), so a
request samples the same tokens whatever batch it runs in, and after a preemption.

The step itself takes only the greedy tokens (:func:`greedy`); :func:`sample`, which sorts the
vocabulary, runs as a second jitted call, dispatched by the host only when a row of the step has a
temperature. It is not a ``lax.cond`` inside the step: on the GPU a conditional reads its predicate
back to the host, so the host would wait for the whole forward at every step (measured on the
H100: ``experiments/results/engine.md``, entry "the step's sampling no longer blocks the host"),
and nothing could overlap the device's work.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jlora.sampling_params import SamplingParams


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class SamplingInputs:
    temperature: jax.Array  # [B] float32, 0 = greedy
    top_p: jax.Array  # [B] float32
    top_k: jax.Array  # [B] int32, vocab size for "all"
    seed: jax.Array  # [B] uint32
    step: jax.Array  # [B] int32, index of the token being sampled

    @classmethod
    def build(
        cls,
        rows: list[tuple[SamplingParams, int, int]],
        size: int,
        vocab: int,
        on_device: bool = True,
    ):
        """``rows``: (params, seed, output index) per live row; padded to ``size`` greedy rows.
        Numpy arrays with ``on_device=False`` (for :func:`jlora.runner.host_inputs.pack`)."""
        temperature = np.zeros(size, np.float32)
        top_p = np.ones(size, np.float32)
        top_k = np.full(size, vocab, np.int32)
        seed = np.zeros(size, np.uint32)
        step = np.zeros(size, np.int32)
        for i, (p, s, n) in enumerate(rows):
            temperature[i], top_p[i], seed[i], step[i] = p.temperature, p.top_p, s, n
            top_k[i] = vocab if p.top_k == -1 else min(p.top_k, vocab)
        put = jnp.asarray if on_device else np.asarray
        return cls(*(put(a) for a in (temperature, top_p, top_k, seed, step)))


def greedy(logits: jax.Array) -> jax.Array:  # [B, V] f32 -> [B] int32
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def sample(logits: jax.Array, s: SamplingInputs) -> jax.Array:  # [B, V] f32 -> [B] int32
    """Each row's token: greedy where its temperature is 0, else sampled (top-k, then top-p)."""
    return _sample_rows(logits, s, greedy(logits))


def _sample_rows(logits: jax.Array, s: SamplingInputs, greedy_tokens: jax.Array) -> jax.Array:
    vocab = logits.shape[-1]
    scaled = logits / jnp.maximum(s.temperature, 1e-6)[:, None]
    sorted_logits = jnp.sort(scaled, axis=-1)[:, ::-1]  # descending
    kth = jnp.take_along_axis(sorted_logits, (s.top_k - 1)[:, None], axis=-1)
    scaled = jnp.where(scaled < kth, -jnp.inf, scaled)
    # top-p over the top-k survivors: drop tokens once the mass before them reaches top_p.
    sorted_probs = jax.nn.softmax(
        jnp.where(jnp.arange(vocab) < s.top_k[:, None], sorted_logits, -jnp.inf)
    )
    mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
    cutoff_index = jnp.sum(mass_before < s.top_p[:, None], axis=-1) - 1  # last kept, sorted order
    cutoff = jnp.take_along_axis(sorted_logits, cutoff_index[:, None], axis=-1)
    scaled = jnp.where(scaled < cutoff, -jnp.inf, scaled)
    keys = jax.vmap(lambda seed, step: jax.random.fold_in(jax.random.key(seed), step))(
        s.seed, s.step
    )
    sampled = jax.vmap(jax.random.categorical)(keys, scaled).astype(jnp.int32)
    return jnp.where(s.temperature > 0, sampled, greedy_tokens)
