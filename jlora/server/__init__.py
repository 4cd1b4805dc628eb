"""``jlora serve``: an OpenAI-compatible HTTP server over one engine.

Two threads. The engine thread (:class:`~jlora.server.loop.EngineLoop`) owns the
:class:`~jlora.engine.Engine`: it builds it (the server answers 503 until then), takes commands
from a queue between steps (add a request, abort one, load or unload an adapter), runs
``Engine.step`` while there is work, and hands each step's tokens to the HTTP side in one batch.
The HTTP thread (:mod:`jlora.server.app`, FastAPI on uvicorn's asyncio loop) parses and checks
requests, tokenizes prompts and renders chat templates, and streams the engine's tokens out as
server-sent events. Nothing the HTTP side does takes a lock the engine thread waits on: it only
puts commands on the queue, so a slow client or a burst of requests never stalls a step. A client
that disconnects mid-stream aborts its request, freeing its KV pages and its adapter's slot.
"""
