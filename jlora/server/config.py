"""The server's settings (``jlora serve`` derives its flags from this and from ``EngineConfig``)."""

from __future__ import annotations

from dataclasses import dataclass

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """Where and how the HTTP server listens. Invalid values raise ``ValueError`` naming them."""

    host: str = "127.0.0.1"
    """Address to listen on (``0.0.0.0``: every interface)."""
    port: int = 30000
    """TCP port (SGLang's default); 0 picks a free one."""
    served_model_name: str | None = None
    """The base model's name in ``/v1/models`` and in requests' ``model`` (default: the model
    path as given). Adapters are served under their own names."""
    log_level: str = "info"
    """uvicorn's log level: critical, error, warning, info, debug or trace."""

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise ValueError(f"host={self.host!r} must be an address")
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise ValueError(f"port={self.port!r} must be an integer")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port={self.port} must be in [0, 65535]")
        if self.served_model_name is not None and not self.served_model_name:
            raise ValueError("served_model_name='' must be a non-empty name")
        if self.log_level not in LOG_LEVELS:
            raise ValueError(f"log_level={self.log_level!r} is not one of {', '.join(LOG_LEVELS)}")
