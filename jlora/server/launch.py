"""Start the server: in the foreground (``jlora serve``) or on a background thread (tests, the
HTTP benchmark), listening on a socket bound before uvicorn starts (port 0: a free one)."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

import uvicorn

from jlora.config import EngineConfig
from jlora.server.app import Server, build_app
from jlora.server.config import ServerConfig


def bind(config: ServerConfig) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in config.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((config.host, config.port))
    sock.set_inheritable(True)
    return sock


def uvicorn_server(server: Server) -> uvicorn.Server:
    config = uvicorn.Config(
        build_app(server),
        log_level=server.config.log_level,
        timeout_graceful_shutdown=5,
        # The engine's own thread is the one that must not wait; h11 and no access log keep the
        # HTTP thread's work per request small.
        access_log=server.config.log_level in ("debug", "trace"),
    )
    return uvicorn.Server(config)


def serve(engine_config: EngineConfig, config: ServerConfig) -> None:
    """Serve until interrupted (``jlora serve``)."""
    server = Server(engine_config, config)
    sock = bind(config)
    host, port = sock.getsockname()[:2]
    print(
        f"jlora serve: http://{host}:{port}/v1 (model {server.model_name!r}, adapters: "
        f"{', '.join(server.adapters) or 'none'}); 503 until the engine has compiled"
    )
    uvicorn_server(server).run(sockets=[sock])


@dataclass
class BackgroundServer:
    """A server on a thread of this process (see :func:`start_background`)."""

    server: Server
    uvicorn: uvicorn.Server
    thread: threading.Thread
    base_url: str
    """``http://host:port`` (add ``/v1`` for an OpenAI client)."""

    def wait_ready(self, timeout: float = 600.0) -> None:
        """Block until the engine is built (its error raised if it failed)."""
        if not self.server.loop.ready.wait(timeout):
            raise TimeoutError(f"the engine did not start within {timeout} s")
        if self.server.loop.error is not None:
            raise RuntimeError(self.server.loop.error)

    def stop(self) -> None:
        self.uvicorn.should_exit = True
        self.thread.join(30)


def start_background(
    engine_config: EngineConfig, config: ServerConfig | None = None, *, make_engine=None
) -> BackgroundServer:
    """Start a server on a thread (port 0 by default: a free port) and return once it listens;
    the engine may still be compiling (:meth:`BackgroundServer.wait_ready`)."""
    config = config or ServerConfig(port=0, log_level="warning")
    server = Server(engine_config, config, make_engine=make_engine)
    sock = bind(config)
    host, port = sock.getsockname()[:2]
    uv = uvicorn_server(server)
    thread = threading.Thread(
        target=uv.run, kwargs={"sockets": [sock]}, name="jlora-http", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 60
    while not uv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the HTTP server did not start")
        time.sleep(0.01)
    return BackgroundServer(server, uv, thread, f"http://{host}:{port}")
