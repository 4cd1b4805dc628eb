"""A request's life: waiting -> running (prefill, then decode) -> finished; it may be preempted
back to waiting (its pages freed, recomputed later) or paused (pages and outputs kept, out of the
running set, resumed to decode from its cache) on the way."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from jlora.sampling_params import SamplingParams

if TYPE_CHECKING:
    from jlora.text.detokenizer import IncrementalDetokenizer


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PAUSED = "paused"
    FINISHED = "finished"


@dataclass(eq=False)  # identity: `in` and `remove` on the scheduler's queues compare no fields
class Request:
    """Host-side state of one request. Mutated only by the scheduler and the engine loop; outputs
    are added by :meth:`append_token` (which keeps ``num_tokens``)."""

    rid: int
    prompt: np.ndarray  # [P] int32
    params: SamplingParams
    lora_name: str | None
    arrival: float
    status: Status = Status.WAITING
    output: list[int] = field(default_factory=list)
    token_times: list[float] = field(default_factory=list)
    pages: list[int] = field(default_factory=list)
    num_computed: int = 0
    """Tokens whose K/V are in the cache (the prompt and outputs already fed through the model)."""
    finish_reason: str | None = None
    """``stop`` (EOS or a stop token), ``length`` (max_new_tokens or the context), ``abort``, or
    ``error``: a failure inside a step ended it (e.g. its adapter could not be read again);
    ``error`` then holds the message, and its pages and slot were freed."""
    error: str | None = None
    """The message of an ``error`` finish (else None)."""
    finish_time: float | None = None
    wait_since: float = 0.0
    """When it last began to wait (arrival, preemption or pause): starvation is measured from it."""
    num_preemptions: int = 0
    num_pauses: int = 0
    """Times a drainer paused it (pages kept, resumed later without recompute)."""
    detokenizer: IncrementalDetokenizer | None = None
    """The output's text as it grows (set by an engine with a tokenizer; None: ids only)."""
    num_tokens: int = field(init=False)
    """Prompt and outputs so far (a field, not a property: the scheduler and the engine read it
    several times per request per step)."""

    def __post_init__(self) -> None:
        self.wait_since = self.arrival
        self.num_tokens = len(self.prompt) + len(self.output)

    def append_token(self, token: int, time: float) -> None:
        """Add one output token sampled at ``time``."""
        self.output.append(token)
        self.token_times.append(time)
        self.num_tokens += 1

    @property
    def all_tokens(self) -> np.ndarray:
        """Prompt followed by the outputs so far: what must be in the cache to decode the next."""
        if not self.output:
            return self.prompt
        return np.concatenate([self.prompt, np.asarray(self.output, np.int32)])

    @property
    def in_prefill(self) -> bool:
        """Still has tokens to feed before it can decode (a new, chunked or recomputed request).

        A prefill feeds ``all_tokens[num_computed:]`` and samples the next token; a decoding request
        has every token but its last output in the cache (``num_computed == num_tokens - 1``).
        """
        return not self.output or self.num_computed < self.num_tokens - 1

    @property
    def remaining_budget(self) -> int:
        """Tokens it may still generate (SGLang's drainer reads the largest per adapter)."""
        return self.params.max_new_tokens - len(self.output)


@dataclass(frozen=True)
class RequestOutput:
    """What a finished request returns to the caller."""

    rid: int
    lora_name: str | None
    prompt_len: int
    token_ids: list[int]
    finish_reason: str | None
    error: str | None
    arrival_time: float
    first_token_time: float | None
    token_times: list[float]
    finish_time: float | None
    num_preemptions: int = 0
    num_pauses: int = 0
    text: str | None = None
    """The output's text (None: the engine has no tokenizer, or ``detokenize=False``). A stop
    string that ended it and what followed are cut off; EOS and stop tokens have no text."""

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_time is None else self.first_token_time - self.arrival_time

    @property
    def e2e(self) -> float | None:
        return None if self.finish_time is None else self.finish_time - self.arrival_time

    @classmethod
    def of(cls, req: Request) -> RequestOutput:
        return cls(
            rid=req.rid,
            lora_name=req.lora_name,
            prompt_len=len(req.prompt),
            token_ids=list(req.output),
            finish_reason=req.finish_reason,
            error=req.error,
            arrival_time=req.arrival,
            first_token_time=req.token_times[0] if req.token_times else None,
            token_times=list(req.token_times),
            finish_time=req.finish_time,
            num_preemptions=req.num_preemptions,
            num_pauses=req.num_pauses,
            text=None if req.detokenizer is None else req.detokenizer.text,
        )


@dataclass(frozen=True)
class StreamEvent:
    """One token of a streamed request (``finished`` is set on the last one, with the output)."""

    rid: int
    token_id: int | None
    index: int
    time: float
    finished: RequestOutput | None = None
    text: str = ""
    """The text this token adds (with a tokenizer): possibly empty while a character or a
    possible stop string is incomplete; the pieces of a request join to its output's text."""
