"""TensorBoard scalars written with ``tensorboard``'s own event-file writer (no TensorFlow).

``tensorboard`` ships the writer (``EventFileWriter``) and the protos (``Event``, ``Summary``) that
TensorFlow's ``tf.summary`` would use, so a run directory written here opens in ``tensorboard
--logdir`` like any other.
"""

from __future__ import annotations

import time
from pathlib import Path

from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter


class ScalarWriter:
    """Appends scalar summaries to an event file under ``log_dir`` (created if missing)."""

    def __init__(self, log_dir: str | Path, flush_secs: float = 10.0):
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._writer = EventFileWriter(str(self.log_dir), flush_secs=flush_secs)

    def scalar(self, tag: str, value: float, step: int) -> None:
        """Record ``value`` under ``tag`` at ``step``."""
        summary = Summary(value=[Summary.Value(tag=tag, simple_value=float(value))])
        self._writer.add_event(Event(wall_time=time.time(), step=int(step), summary=summary))

    def scalars(self, values: dict[str, float], step: int) -> None:
        """Record several scalars at one step."""
        for tag, value in values.items():
            self.scalar(tag, value, step)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> ScalarWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
