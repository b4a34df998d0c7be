"""Live updates (flow 7): one ``wallet.events`` reader per API process fanned out to SSE streams.

``hub.py`` (the reader and the per-wallet queues), ``sse.py`` (the ``text/event-stream`` framing
and the per-request stream), ``lifecycle.py`` (starting and stopping it with the app).
"""
