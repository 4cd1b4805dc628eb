"""TensorBoard event files written with ``tensorboard``'s own record format (no TensorFlow).

``tensorboard`` ships the record writer and the protos (``Event``, ``Summary``) that TensorFlow's
``tf.summary`` would use, so a run directory written here opens in ``tensorboard --logdir`` like
any other. Events are written synchronously, by the caller's thread: ``tensorboard``'s
``EventFileWriter`` hands each event to a writer thread through a queue of ten, and a simulated
run, which produces thousands of steps a second, spent most of its time waiting on that queue.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import numpy as np
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboard.plugins.histogram.summary_v2 import histogram_pb
from tensorboard.plugins.hparams.summary_v2 import hparams_pb
from tensorboard.summary.writer.record_writer import RecordWriter
from tensorboard.util.tensor_util import make_tensor_proto


class ScalarWriter:
    """Appends summaries (scalars, histograms, text, hparams) to a new event file under
    ``log_dir`` (created if missing)."""

    def __init__(self, log_dir: str | Path):
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}"
        self._file = open(self.log_dir / name, "wb")  # noqa: SIM115 - closed by close()
        self._writer = RecordWriter(self._file)
        self._add(Event(wall_time=time.time(), file_version="brain.Event:2"))

    def _add(self, event: Event) -> None:
        self._writer.write(event.SerializeToString())

    def scalar(self, tag: str, value: float, step: int, wall_time: float | None = None) -> None:
        """Record ``value`` under ``tag`` at ``step`` (and ``wall_time``, default now)."""
        self.scalars({tag: value}, step, wall_time)

    def scalars(self, values: dict[str, float], step: int, wall_time: float | None = None) -> None:
        """Record several scalars at one step, as one event, at ``wall_time`` (seconds since the
        epoch; default now)."""
        summary = Summary(
            value=[Summary.Value(tag=t, simple_value=float(v)) for t, v in values.items()]
        )
        wall = time.time() if wall_time is None else wall_time
        self._add(Event(wall_time=wall, step=int(step), summary=summary))

    def histogram(
        self, tag: str, values, step: int, wall_time: float | None = None, buckets: int = 30
    ) -> None:
        """Record the distribution of ``values`` under ``tag`` (TensorBoard's HISTOGRAMS and
        DISTRIBUTIONS tabs)."""
        summary = histogram_pb(tag, np.asarray(values, np.float64), buckets=buckets)
        self._add(
            Event(
                wall_time=time.time() if wall_time is None else wall_time,
                step=step,
                summary=summary,
            )
        )

    def text(self, tag: str, markdown: str, step: int = 0) -> None:
        """Record ``markdown`` under ``tag`` (TensorBoard's TEXT tab renders it)."""
        metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="text"))
        value = Summary.Value(
            tag=tag, metadata=metadata, tensor=make_tensor_proto(np.array(markdown.encode()))
        )
        self._add(Event(wall_time=time.time(), step=step, summary=Summary(value=[value])))

    def hparams(self, values: dict[str, bool | int | float | str]) -> None:
        """Record the run's settings for TensorBoard's HPARAMS tab, which tabulates the runs of a
        log directory by them beside their scalars."""
        self._add(Event(wall_time=time.time(), summary=hparams_pb(values)))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._writer.close()

    def __enter__(self) -> ScalarWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
