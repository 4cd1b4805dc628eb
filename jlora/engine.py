"""The engine: requests in, tokens out, one scheduler decision and one jitted step at a time.

::

    engine = Engine(EngineConfig(model="tiny", lora_paths={"a0": "dummy:8"}, max_loras_per_batch=2))
    rid = engine.add_request([1, 2, 3], SamplingParams(max_new_tokens=8), lora_name="a0")
    while engine.has_unfinished():
        finished = engine.step()   # the RequestOutputs that finished in this step

Each :meth:`Engine.step` asks the scheduler for a plan (from host state only), has the runner copy
any adapter the plan needs into its device slot (and, with ``lora_prefetch``, the adapter next in
line into a free one; a load is dispatched, not waited for: the runner makes the first step that
uses the slot wait for it), runs the one prefill or decode step, and applies the sampled tokens:
timestamps, stop conditions, freeing what finished. With ``overlap_schedule`` a decode step's
tokens are applied in the next call, after the following decode step has been dispatched
(:meth:`Engine.step`). The runner and the clock are injected, so the same loop runs the real model,
a fake runner in tests, or the simulator. The scheduling policy is built from
``lora_drain_wait_threshold`` / ``lora_drain_policy`` unless one is passed (``policy=``);
``engine.last_state`` is the scheduler's state at the last decision.

Bad input is refused where it enters (``add_request``, ``SamplingParams``, ``abort``, ``score``,
adapter loads): ``ValueError``, or :class:`~jlora.sampling_params.ArgumentTypeError` (a
``TypeError`` that is a ``ValueError`` too) for a wrong type, naming the field and the value,
before any state changes. A failure inside a step (an adapter that cannot be read again, a runner
error) ends the requests it touches with finish reason ``error`` and the message, frees their pages
and slot, and the engine goes on serving; no request is ever left in no queue.
"""

from __future__ import annotations

import itertools
import math
import numbers
import zlib
from collections.abc import Iterable, Iterator, Sequence

import jax
import numpy as np

from jlora.adapters.dummy import parse_dummy_spec, random_adapter
from jlora.adapters.peft import LoraAdapter, load_peft_adapter
from jlora.adapters.pool import AdapterPool, HostAdapter
from jlora.build import (
    device_memory,
    kv_capacity_pages,
    make_buckets,
    make_model_runner,
    make_policy,
    make_scheduler,
)
from jlora.clock import Clock
from jlora.config import EngineConfig
from jlora.distributed import engine_clock
from jlora.kernels.types import NO_SLOT
from jlora.runner.base import FED_BACK, DecodeSeq, LaunchedDecode, PrefillSeq, Runner
from jlora.sampling_params import ArgumentTypeError, SamplingParams
from jlora.scheduler.pages import PagePool
from jlora.scheduler.request import Request, RequestOutput, Status, StreamEvent
from jlora.scheduler.scheduler import (
    Policy,
    SchedulerState,
    StepPlan,
)
from jlora.tensor_parallel import check_tp
from jlora.text import IncrementalDetokenizer, Tokenizer, load_tokenizer
from models.config import ModelConfig


class Engine:
    """A base model with multi-LoRA serving. See :class:`~jlora.config.EngineConfig`."""

    def __init__(
        self,
        config: EngineConfig,
        *,
        runner: Runner | None = None,
        clock: Clock | None = None,
        policy: Policy | None = None,
        adapter_loader=None,
    ):
        self.config = config
        self.model_config: ModelConfig = config.model_config()
        self.context_length = config.resolved_context_length(self.model_config)
        self.tokenizer: Tokenizer | None = self._load_tokenizer()
        """The model's tokenizer (None: token ids only); :mod:`jlora.text`."""
        self.eos_token_ids = frozenset(self.model_config.eos_token_ids) | frozenset(
            self.tokenizer.eos_token_ids if self.tokenizer else ()
        )
        """Ids that end a request (unless ``ignore_eos``): config.json's and, with a tokenizer,
        generation_config.json's and the tokenizer's EOS."""
        self.clock: Clock = engine_clock(clock)  # synced across processes when there are several
        self.buckets = make_buckets(config, self.model_config)
        check_tp(self.model_config, config.tp_size)
        if runner is None:
            runner = make_model_runner(config, self.model_config, self.buckets)
        self.runner = runner
        # A runner holds its KV cache (the real one; one taken over from an engine that is done,
        # as the benchmark's settings that differ only in scheduling do, keeps it: the new page
        # pool starts empty, so what the cache held is never read) or holds none and the pool is
        # sized from the device's memory (the fake runner).
        num_pages = runner.num_pages
        if num_pages is None:
            num_pages = kv_capacity_pages(config, self.model_config, device_memory())
        self.pages = PagePool(num_pages, config.page_size)
        self.adapters = AdapterPool(
            adapter_loader or self._load_adapter,
            config.max_loras_per_batch,
            config.max_loaded_loras,
            config.lora_eviction_policy,
        )
        self.scheduler = make_scheduler(
            config,
            self.model_config,
            self.buckets,
            self.pages,
            self.adapters,
            policy or make_policy(config),
        )
        # Read after the runner exists: the host cache keeps each adapter in the runner's form.
        for name, path in config.lora_paths.items():
            self.adapters.register(name, path)
        self.requests: dict[int, Request] = {}
        self._rids = itertools.count()
        self._events: dict[int, list[StreamEvent]] = {}
        self._kept: list[RequestOutput] = []  # finished in steps run by generate() / stream()
        self._seeds: dict[int, int] = {}  # rid -> sampling seed
        self.num_steps = 0
        # Overlap scheduling: the dispatched decode step whose tokens the host has not read yet.
        self._overlap = (
            config.resolved_overlap_schedule(jax.default_backend()) and runner.supports_overlap
        )
        self._in_flight: tuple[list[Request], LaunchedDecode] | None = None
        self._last_resolved: float | None = None  # when the previous overlapped step's tokens came
        self.num_lookahead_steps = 0
        """Decode steps dispatched before the host had the previous step's tokens."""
        self._state: SchedulerState | None = None
        self._take_state = self.scheduler.deferred_snapshot(self.clock.now())

    @property
    def last_state(self) -> SchedulerState:
        """The scheduler's state at the last decision (slots, waits, drain marks, batch)."""
        if self._state is None:  # counted on first read: most runs read none of them
            self._state = self._take_state()
        return self._state

    def _load_tokenizer(self) -> Tokenizer | None:
        """The tokenizer of ``tokenizer_path`` or the model directory; one whose ids the model
        cannot read is refused."""
        where = self.config.resolved_tokenizer_path
        tokenizer = None if where is None else load_tokenizer(where)
        if tokenizer is None and self.config.tokenizer_path is not None:
            raise ValueError(f"tokenizer_path={where!r} holds no tokenizer.json")
        vocab = self.model_config.vocab_size
        if tokenizer is not None and tokenizer.max_token_id >= vocab:
            raise ValueError(
                f"the tokenizer at {where!r} has token id {tokenizer.max_token_id}, outside the "
                f"model's vocabulary of {vocab}"
            )
        return tokenizer

    def encode(self, text: str) -> list[int]:
        """The token ids of a text prompt (the tokenizer's special tokens, e.g. BOS, added);
        a model without a tokenizer refuses it
        (:class:`~jlora.sampling_params.ArgumentTypeError`)."""
        if self.tokenizer is None:
            raise ArgumentTypeError(
                f"prompt must be a list of token ids, not text (got {_short(text)}): the model "
                f"{self.config.model!r} has no tokenizer (no tokenizer.json in its directory; "
                "set tokenizer_path)"
            )
        return self.tokenizer.encode(text)

    def _load_adapter(self, name: str, path: str) -> HostAdapter:
        """Read an adapter (PEFT directory or ``dummy:RANK``) into the form the host cache keeps
        for the runner (:meth:`Runner.host_adapter`: the real runner's slot layout)."""
        return self.runner.host_adapter(self._read_adapter(name, path))

    def _read_adapter(self, name: str, path: str) -> LoraAdapter:
        rank = parse_dummy_spec(path)
        if rank is None:
            return load_peft_adapter(name, path, self.model_config, self.config.max_lora_rank)
        if rank > self.config.max_lora_rank:
            raise ValueError(
                f"adapter {name!r}: rank={rank} is above max_lora_rank={self.config.max_lora_rank}"
            )
        # Seeded by name, so a dummy adapter read again after eviction is the same adapter.
        return random_adapter(
            name, self.model_config, rank, seed=self.config.random_seed + zlib.crc32(name.encode())
        )

    # ------------------------------------------------------------------ adapters at run time
    def load_lora_adapter(self, name: str, path: str, pinned: bool = False) -> None:
        """Register an adapter (a PEFT directory or ``dummy:RANK``); pinned ones keep a slot."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"adapter name {name!r} must be a non-empty string")
        if not self.config.lora_enabled:
            raise ValueError(
                f"cannot load adapter {name!r}: LoRA is off (start the engine with "
                "enable_lora=True or with lora_paths)"
            )
        self.adapters.register(name, path, pinned=pinned)
        if pinned:
            taken = self.scheduler.take_slot(name)
            if taken is None:
                self.adapters.unregister(name)
                raise ValueError(f"no free slot to pin adapter {name!r}: every slot is in use")
            slot, must_load = taken
            if must_load:
                try:
                    self._load_slot(slot, name)
                except Exception:
                    self.adapters.unregister(name)
                    raise

    def unload_lora_adapter(self, name: str) -> None:
        """Forget an adapter; refused while any request (waiting or running) uses it."""
        if not self.adapters.known(name):
            raise ValueError(f"unknown adapter name {name!r}")
        users = [
            r.rid
            for r in self.scheduler.waiting + self.scheduler.running + self.scheduler.paused
            if r.lora_name == name
        ]
        if users:
            raise ValueError(
                f"adapter {name!r} is in use by {len(users)} unfinished requests (e.g. {users[:3]})"
            )
        slot = self.adapters.unregister(name)
        if slot is not None:
            self.runner.load_lora(slot, None)

    # ------------------------------------------------------------------ requests
    def add_request(
        self,
        prompt_ids: Sequence[int] | str,
        params: SamplingParams | None = None,
        lora_name: str | None = None,
        arrival_time: float | None = None,
    ) -> int:
        """Queue a request; returns its id. Bad input raises ``ValueError`` (a wrong type
        :class:`~jlora.sampling_params.ArgumentTypeError`, a ``TypeError`` and ``ValueError``)
        naming the field and the value, and changes nothing. A text prompt is tokenized when the
        model has a tokenizer."""
        return self._register(self._new_request(prompt_ids, params, lora_name, arrival_time))

    def _new_request(self, prompt_ids, params, lora_name, arrival_time) -> Request:
        """Check every argument of a request and build it, changing no state (its rid is -1)."""
        params = SamplingParams() if params is None else params
        if not isinstance(params, SamplingParams):
            raise ArgumentTypeError(
                f"params={_short(params)} must be SamplingParams, not {type(params).__name__}"
            )
        if isinstance(prompt_ids, str):
            prompt_ids = self.encode(prompt_ids)
        prompt = self._check_prompt(prompt_ids, "prompt")
        self._check_lora_name(lora_name)
        if params.stop and self.tokenizer is None:
            raise ValueError(
                f"stop={params.stop!r}: stop strings need a tokenizer, and the model "
                f"{self.config.model!r} has none (use stop_token_ids)"
            )
        if arrival_time is not None:
            if isinstance(arrival_time, bool) or not isinstance(arrival_time, numbers.Real):
                raise ArgumentTypeError(
                    f"arrival_time={_short(arrival_time)} must be a number of seconds (the "
                    f"engine clock's), not {type(arrival_time).__name__}"
                )
            if not math.isfinite(arrival_time):
                raise ValueError(f"arrival_time={arrival_time!r} must be finite")
            arrival_time = float(arrival_time)
        total = len(prompt) + params.max_new_tokens
        if total > self.context_length:
            raise ValueError(
                f"prompt of {len(prompt)} tokens plus max_new_tokens={params.max_new_tokens} is "
                f"{total}, beyond the context length {self.context_length}"
            )
        if self.pages.pages_for(total) > self.pages.capacity:
            raise ValueError(
                f"a request of {total} tokens needs {self.pages.pages_for(total)} KV pages but the "
                f"cache holds {self.pages.capacity}; raise max_total_tokens"
            )
        now = self.clock.now() if arrival_time is None else arrival_time
        req = Request(rid=-1, prompt=prompt, params=params, lora_name=lora_name, arrival=now)
        if self.tokenizer is not None and params.detokenize:
            req.detokenizer = IncrementalDetokenizer(self.tokenizer, prompt, params.stop)
        return req

    def _register(self, req: Request) -> int:
        """Give a checked request its id and queue it (nothing here can fail)."""
        req.rid = next(self._rids)
        self.requests[req.rid] = req
        self._seeds[req.rid] = self._seed(req)
        self.scheduler.add(req)
        return req.rid

    def has_unfinished(self) -> bool:
        return self.scheduler.has_work()

    def step(self) -> list[RequestOutput]:
        """Run one scheduling decision and one step; returns the outputs finished in it, each
        exactly once (a request that failed in it too, with finish reason ``error``), and before
        them those finished in steps that :meth:`generate` or :meth:`stream` ran for their own
        requests since the last call (they return only their own).

        A failure inside the step (an adapter that cannot be read again, a runner error) ends the
        requests it touches with finish reason ``error`` and the message, frees their pages and
        slots, and the engine goes on serving the others.

        With ``overlap_schedule`` a decode step is dispatched and its tokens are applied in the
        next call, which first dispatches the following decode step when it can
        (:meth:`Scheduler.lookahead`): the device then never waits for the host between the two."""
        kept, self._kept = self._kept, []
        return kept + self._step()

    def _step(self) -> list[RequestOutput]:
        if self._in_flight is None:
            return self._step_once()
        reqs, launched = self._in_flight
        lookahead = self.scheduler.lookahead(reqs, self.context_length)
        if lookahead is not None:
            self._record(lookahead, self.clock.now())
            seqs = self._decode_seqs(lookahead.decode, fed_back=True)
            try:
                self._in_flight = (lookahead.decode, self.runner.launch_decode(seqs, launched))
            except Exception as e:  # the step in flight and this one: both their requests fail
                self._in_flight = None
                return self._fail(list(dict.fromkeys(reqs + lookahead.decode)), e)
            self.num_steps += 1
            self.num_lookahead_steps += 1
            return self._resolve(reqs, launched)
        finished = self._resolve(reqs, launched)
        self._in_flight = None
        self._last_resolved = None
        if not self.scheduler.has_work():
            return finished
        return finished + self._step_once()

    def _record(self, plan: StepPlan, now: float) -> None:
        """Keep the decision made at ``now`` (``last_plan``; ``last_state``, counted on read)."""
        self.last_plan = plan
        self._state, self._take_state = None, self.scheduler.deferred_snapshot(now)

    def _resolve(self, reqs: list[Request], launched) -> list[RequestOutput]:
        """Wait for a dispatched decode step and apply its tokens; a request that finished since
        it was dispatched (a stop token in the step before, an abort) drops its token."""
        try:
            tokens = launched.tokens()
        except Exception as e:
            return self._fail(reqs, e)
        now = self.clock.now()
        if self._last_resolved is not None:  # back to back: one step's time between the two
            self.scheduler.observe_step("decode", now - self._last_resolved)
        self._last_resolved = now
        running = Status.RUNNING
        return self._append(
            [(r, t) for r, t in zip(reqs, tokens, strict=True) if r.status is running], now
        )

    def _step_once(self) -> list[RequestOutput]:
        """One scheduling decision from the current state and its step (a decode step is only
        dispatched under ``overlap_schedule``: its tokens come with the next call)."""
        failed = self._reap_failed_loads(self.runner.take_failed_loads())
        now = self.clock.now()
        plan = self.scheduler.schedule(now)
        self._record(plan, now)
        # Also for resumed requests, which decode in a later step; and the prefetched adapters
        # (lora_prefetch), whose load overlaps the steps until their turn.
        for slot, name in plan.loads + plan.prefetch:
            try:
                self._load_slot(slot, name)
            except Exception as e:  # e.g. evicted from the host cache and its files gone since
                users = [r for r in self.scheduler.running if r.lora_name == name]
                failed += self._fail(users, e)
                continue
            loaded = self.clock.now()
            self.scheduler.observe_load(loaded - now)
            now = loaded
        if failed:
            gone = {o.rid for o in failed}
            plan.prefill[:] = [i for i in plan.prefill if i.req.rid not in gone]
            plan.decode[:] = [r for r in plan.decode if r.rid not in gone]
            if not plan.prefill and not plan.decode:
                return failed
        if plan.kind == "idle":
            return failed
        self.num_steps += 1
        if plan.kind == "prefill":
            try:
                tokens = self.runner.prefill([self._prefill_seq(item) for item in plan.prefill])
            except Exception as e:
                return failed + self._step_failed([item.req for item in plan.prefill], e)
            sampled: list[tuple[Request, int]] = []
            for item, token in zip(plan.prefill, tokens, strict=True):
                item.req.num_computed = item.end
                if item.completes:
                    sampled.append((item.req, token))
            return failed + self._append(sampled, self.clock.now())
        seqs = self._decode_seqs(plan.decode)
        try:
            if self._overlap:
                self._in_flight = (plan.decode, self.runner.launch_decode(seqs, None))
                return failed
            tokens = self.runner.decode(seqs)
        except Exception as e:
            return failed + self._step_failed(plan.decode, e)
        end = self.clock.now()
        self.scheduler.observe_step("decode", end - now)
        return failed + self._append(zip(plan.decode, tokens, strict=True), end)

    def _fail(self, reqs: Iterable[Request], error: Exception) -> list[RequestOutput]:
        """End ``reqs`` (those not finished yet) with finish reason ``error`` and the message;
        their pages and places are freed. Returns their outputs."""
        now, out = self.clock.now(), []
        message = f"{type(error).__name__}: {error}"
        for req in reqs:
            if req.status is Status.FINISHED:
                continue
            req.finish_reason, req.error, req.finish_time = "error", message, now
            self.scheduler.finish(req)
            output = RequestOutput.of(req)
            out.append(output)
            if req.rid in self._events:
                piece = "" if req.detokenizer is None else req.detokenizer.take_piece(True)
                self._events[req.rid].append(
                    StreamEvent(req.rid, None, len(req.output), now, finished=output, text=piece)
                )
        return out

    def _step_failed(self, reqs: list[Request], error: Exception) -> list[RequestOutput]:
        """A step over ``reqs`` raised ``error``. If it is a load the step needed, refused before
        the step ran, only that adapter's requests end (:meth:`_reap_failed_loads`) and the
        others run in a later step; any other error ends all of ``reqs``."""
        failures = self.runner.take_failed_loads()
        out = self._reap_failed_loads(failures)
        if any(error is e for e in failures.values()):
            self.scheduler.not_run(reqs, self.clock.now())
            return out
        return out + self._fail(reqs, error)

    def _reap_failed_loads(self, failures: dict[int, Exception]) -> list[RequestOutput]:
        """Loads that failed after they were dispatched (``failures``, by slot: their transfer
        refused when it started): the pool forgets the adapter in that slot and its running
        requests end with the error (as when a load fails at once); waiting ones load it again in
        their turn."""
        out: list[RequestOutput] = []
        for slot, error in failures.items():
            name = self.adapters.occupant[slot]
            if name is None:
                continue
            self.adapters.vacate(slot)
            out += self._fail([r for r in self.scheduler.running if r.lora_name == name], error)
        return out

    def _load_slot(self, slot: int, name: str) -> None:
        """Have the runner copy ``name`` into ``slot`` (given by :meth:`Scheduler.take_slot`); if
        that fails the slot is emptied and the error raised."""
        try:
            self.runner.load_lora(slot, self.adapters.get(name))
        except Exception:
            self._empty_slot(slot, name)
            raise

    def _empty_slot(self, slot: int, name: str) -> None:
        """A load of ``name`` into ``slot`` failed: the pool forgets it there and the device slot
        is emptied (what it holds is then never read)."""
        self.adapters.vacate(slot)
        try:
            self.runner.load_lora(slot, None)
        except Exception:  # noqa: BLE001 - the slot is free in the pool; its content is unread
            pass

    def _slot(self, req: Request) -> int:
        if req.lora_name is None:
            return NO_SLOT
        slot = self.adapters.slot_of(req.lora_name)
        assert slot is not None, f"running request {req.rid} has no slot for {req.lora_name!r}"
        return slot

    def _seed(self, req: Request) -> int:
        """The request's sampling seed (kept in ``_seeds`` from its arrival)."""
        return (
            req.params.seed if req.params.seed is not None else self.config.random_seed + req.rid
        ) % (1 << 32)

    def _prefill_seq(self, item) -> PrefillSeq:
        req = item.req
        return PrefillSeq(
            rid=req.rid,
            tokens=req.all_tokens[item.start : item.end],
            start=item.start,
            pages=tuple(req.pages),
            lora_slot=self._slot(req),
            sample=item.completes,
            params=req.params,
            seed=self._seeds[req.rid],
            out_index=len(req.output),
        )

    def _decode_seqs(self, reqs: list[Request], fed_back: bool = False) -> list[DecodeSeq]:
        """The decode inputs of ``reqs``; ``fed_back``: each is one token further than the host
        knows (the one it samples in the step in flight, which the runner reads on the device)."""
        # This runs for every generated token: one comprehension, lookups bound once, and the
        # fields passed by position (a third cheaper than by keyword; their order is pinned by
        # tests/test_engine_serving.py::test_decode_seq_fields).
        slot_index = self.adapters.slot_index  # a running request's adapter has a slot (or fails)
        seeds = self._seeds
        ahead = int(fed_back)
        return [
            DecodeSeq(
                r.rid,  # rid
                FED_BACK if fed_back else r.output[-1],  # token
                r.num_tokens - 1 + ahead,  # position
                tuple(r.pages),  # pages
                NO_SLOT if r.lora_name is None else slot_index[r.lora_name],  # lora_slot
                r.params,  # params
                seeds[r.rid],  # seed
                len(r.output) + ahead,  # out_index
            )
            for r in reqs
        ]

    def _append(self, sampled: Iterable[tuple[Request, int]], now: float) -> list[RequestOutput]:
        """Give each request the token it sampled in the step that ended at ``now`` (all it had
        before is in the cache now); returns the outputs of those that finished. One loop for the
        whole step: it runs for every generated token."""
        finished: list[RequestOutput] = []
        eos, context, events = self.eos_token_ids, self.context_length, self._events
        for req, token in sampled:
            token = int(token)
            req.num_computed = req.num_tokens
            req.append_token(token, now)
            p = req.params
            reason = None
            detokenizer = req.detokenizer
            if not p.ignore_eos and (token in eos or token in p.stop_token_ids):
                reason = "stop"  # a stop token's text is not part of the output's (as in vLLM)
            elif detokenizer is not None and detokenizer.add(token) is not None:
                reason = "stop"  # a stop string
            elif len(req.output) >= p.max_new_tokens or req.num_tokens >= context:
                reason = "length"
            out = None
            if reason is not None:
                req.finish_reason, req.finish_time = reason, now
                self.scheduler.finish(req)
                out = RequestOutput.of(req)
                finished.append(out)
            if events and req.rid in events:
                piece = "" if detokenizer is None else detokenizer.take_piece(out is not None)
                events[req.rid].append(
                    StreamEvent(req.rid, token, len(req.output) - 1, now, finished=out, text=piece)
                )
        return finished

    def abort(self, rid: int) -> RequestOutput:
        """End a request now; it returns what it generated, with finish reason ``abort``."""
        if isinstance(rid, bool) or not isinstance(rid, int | np.integer):
            raise ArgumentTypeError(
                f"rid={_short(rid)} must be a request id (int), not {type(rid).__name__}"
            )
        req = self.requests.get(int(rid))
        if req is None:
            raise ValueError(f"unknown request id {rid}")
        if req.status != Status.FINISHED:
            req.finish_reason, req.finish_time = "abort", self.clock.now()
            self.scheduler.finish(req)
        return RequestOutput.of(req)

    def watch(self, rid: int) -> None:
        """Keep the :class:`StreamEvent` of each token of request ``rid`` (as :meth:`stream` does)
        until :meth:`pop_events` takes them: for a caller that runs :meth:`step` itself and
        streams many requests at once (the HTTP server)."""
        if rid not in self.requests:
            raise ValueError(f"unknown request id {rid!r}")
        self._events.setdefault(rid, [])

    def pop_events(self, rid: int) -> list[StreamEvent]:
        """The events of a watched request since the last call; once it has finished (its last
        event has ``finished`` set, unless it was aborted) it is no longer watched."""
        events = self._events.get(rid)
        if events is None:
            return []
        if self.requests[rid].status is Status.FINISHED:
            del self._events[rid]
        elif events:
            self._events[rid] = []
        return events

    def release(self, rid: int) -> None:
        """Forget a finished request whose output the caller has: a server that runs for good
        calls it so that the engine's memory stays flat (``requests`` otherwise keeps every
        request). Refused for an unfinished one."""
        req = self.requests.get(rid) if isinstance(rid, int | np.integer) else None
        if req is None:
            raise ValueError(f"unknown request id {rid!r}")
        if req.status is not Status.FINISHED:
            raise ValueError(
                f"request {rid} is {req.status.value}: only a finished one is released"
            )
        del self.requests[rid]
        self._seeds.pop(rid, None)

    # ------------------------------------------------------------------ conveniences
    def generate(
        self,
        prompts: Sequence[Sequence[int] | str] | str,
        params: SamplingParams | Sequence[SamplingParams] | None = None,
        lora_name: str | None | Sequence[str | None] = None,
    ) -> list[RequestOutput]:
        """Run prompts to completion; outputs in input order. Every prompt is checked before any is
        queued. Requests of other callers that finish meanwhile are returned by the next
        :meth:`step`. With a tokenizer a prompt may be text, and ``prompts`` one text (as in
        vLLM: one output)."""
        if isinstance(prompts, str) and self.tokenizer is not None:
            prompts = [prompts]
        if isinstance(prompts, str | bytes) or not isinstance(prompts, Sequence):
            raise ArgumentTypeError(f"prompts={_short(prompts)} must be a list of token-id lists")
        names = self._per_prompt(lora_name, len(prompts), "lora_name")
        plist = self._per_prompt(params, len(prompts), "params")
        reqs = [
            self._new_request(p, sp, n, None)
            for p, sp, n in zip(prompts, plist, names, strict=True)
        ]
        rids = [self._register(r) for r in reqs]
        mine = set(rids)
        while any(self.requests[r].status != Status.FINISHED for r in rids):
            self._kept += [o for o in self._step() if o.rid not in mine]
        return [RequestOutput.of(self.requests[r]) for r in rids]

    def stream(
        self,
        prompt_ids: Sequence[int] | str,
        params: SamplingParams | None = None,
        lora_name: str | None = None,
    ) -> Iterator[StreamEvent]:
        """Yield the request's tokens as they come (other queued requests run alongside, and those
        that finish meanwhile are returned by the next :meth:`step`). A request that fails ends
        with an event whose ``token_id`` is None and whose ``finished`` carries the error. With a
        tokenizer each event carries the ``text`` its token adds."""
        rid = self.add_request(prompt_ids, params, lora_name)
        self._events[rid] = []
        try:
            while True:
                events, self._events[rid] = self._events[rid], []
                yield from events
                if self.requests[rid].status == Status.FINISHED:
                    return
                self._kept += [o for o in self._step() if o.rid != rid]
        finally:
            self._events.pop(rid, None)

    @staticmethod
    def _per_prompt(value, n: int, what: str) -> list:
        if value is None or isinstance(value, str | SamplingParams):
            return [value] * n
        if not isinstance(value, Iterable):
            raise ArgumentTypeError(f"{what}={_short(value)} must be one value or one per prompt")
        value = list(value)
        if len(value) != n:
            raise ValueError(f"{what} has {len(value)} entries for {n} prompts")
        return value

    # ------------------------------------------------------------------ validation
    def _check_prompt(self, prompt, what: str) -> np.ndarray:
        if isinstance(prompt, str | bytes):
            raise ArgumentTypeError(
                f"{what} must be a list of token ids, not text (got {_short(prompt)})"
            )
        try:
            ids = np.asarray(prompt)
        except (TypeError, ValueError) as e:  # ragged nesting
            raise ArgumentTypeError(
                f"{what} is not a flat list of token ids (got {_short(prompt)}: {e})"
            ) from e
        if ids.ndim != 1 or ids.size == 0:
            raise ValueError(
                f"{what} is empty or not a flat list of token ids (got {_short(prompt)})"
            )
        if not np.issubdtype(ids.dtype, np.integer):
            items = ids.tolist() if isinstance(prompt, np.ndarray) else list(prompt)
            for i, x in enumerate(items):
                if isinstance(x, bool) or not isinstance(x, int | np.integer):
                    raise ArgumentTypeError(
                        f"{what} holds the non-integer value {x!r} at index {i} "
                        f"({type(x).__name__}); token ids are integers"
                    )
            # Python ints too large for any integer dtype: compare them before converting.
            vocab = self.model_config.vocab_size
            bad = next((int(x) for x in items if not 0 <= x < vocab), None)
            if bad is not None:
                raise ValueError(f"{what} has token id {bad} outside the vocabulary [0, {vocab})")
            ids = np.asarray(items, np.int64)
        vocab = self.model_config.vocab_size
        bad = ids[(ids < 0) | (ids >= vocab)]
        if bad.size:
            raise ValueError(
                f"{what} has token id {int(bad[0])} outside the vocabulary [0, {vocab})"
            )
        if ids.size > self.context_length:
            raise ValueError(
                f"{what} has {ids.size} tokens, longer than the context {self.context_length}"
            )
        return ids.astype(np.int32)

    def _check_lora_name(self, name) -> None:
        if name is not None and not isinstance(name, str):
            raise ArgumentTypeError(
                f"lora_name={_short(name)} must be an adapter name (str) or None, not "
                f"{type(name).__name__}"
            )
        if name is not None and not self.config.lora_enabled:
            raise ValueError(
                f"adapter {name!r} asked for, but LoRA is off (enable_lora=True or lora_paths "
                "turns it on)"
            )
        if name is not None and not self.adapters.known(name):
            known = ", ".join(sorted(self.adapters.paths)) or "none loaded"
            raise ValueError(f"unknown adapter name {name!r} (known: {known})")

    # ------------------------------------------------------------------ scoring
    def score(
        self,
        prompts: Sequence[Sequence[int]],
        lora_name: str | None | Sequence[str | None] = None,
    ) -> list[np.ndarray]:
        """Next-token logits (float32 ``[len(prompt), vocab]``) at every position of each prompt.

        Runs through the same runner and adapter slots as serving, between steps; the slots of
        adapters with running requests are left alone.
        """
        if isinstance(prompts, str | bytes) or not isinstance(prompts, Sequence) or not prompts:
            raise ValueError(
                f"prompts={_short(prompts)} must be a non-empty list of token-id lists"
            )
        ids = [
            self._check_prompt(self.encode(p) if isinstance(p, str) else p, f"prompt {i}")
            for i, p in enumerate(prompts)
        ]
        names = self._per_prompt(lora_name, len(ids), "lora_name")
        for name in names:
            self._check_lora_name(name)
        busy = self.scheduler.running_adapters() - {None}
        free_slots = self.adapters.num_slots - len(busy)
        results: list[np.ndarray | None] = [None] * len(ids)
        limit = self.buckets.prefill_tokens[-1]
        batch: list[int] = []
        for i in range(len(ids) + 1):
            if i < len(ids):
                if len(ids[i]) > limit:
                    raise ValueError(
                        f"prompt {i} has {len(ids[i])} tokens; score takes at most {limit} "
                        "(max_prefill_tokens) per prompt"
                    )
                grown = {names[j] for j in batch + [i]} - {None} - busy
                tokens = sum(len(ids[j]) for j in batch) + len(ids[i])
                if not batch or (tokens <= limit and len(grown) <= free_slots):
                    batch.append(i)
                    continue
            self._score_batch(batch, ids, names, results)
            batch = [i]
        return results  # type: ignore[return-value]

    def _score_batch(self, batch, ids, names, results) -> None:
        if not batch:
            return
        # In order of first use, not a set's: string hashes differ between processes, and every
        # process of a multi-process engine must load the same adapter into the same slot.
        for name in dict.fromkeys(names[i] for i in batch if names[i] is not None):
            taken = self.scheduler.take_slot(name, using={names[i] for i in batch} - {name})
            if taken is None:
                raise ValueError(
                    "no free adapter slot to score with: all are held by running requests"
                )
            slot, must_load = taken
            if must_load:
                self._load_slot(slot, name)
        seqs = [
            (ids[i], NO_SLOT if names[i] is None else self.adapters.slot_of(names[i]))
            for i in batch
        ]
        for i, out in zip(batch, self.runner.score(seqs), strict=True):
            results[i] = out


def _short(value, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters (an error message names the value)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
