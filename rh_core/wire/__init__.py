"""What travels between client, server and workers: how values become frames (``serialize``), large
buffers through shared memory (``shm``, ``heap``), and the sockets that carry frames (``link``
between processes of one machine, ``channel`` for ZeroMQ under asyncio).

Every layer may use this one; it uses only :mod:`rh_core.errors` and :mod:`rh_core.support`.
"""
