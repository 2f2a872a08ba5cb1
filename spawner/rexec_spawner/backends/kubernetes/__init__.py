"""The Kubernetes backend: one namespace per user, one pod per worker.

Modules: ``naming`` (object names and labels), ``spec`` (the frozen :class:`WorkerSpec`),
``objects`` (pure manifest builders), ``readiness`` (pod status and events to progress and
failures), ``client`` (API access) and ``backend`` (the :class:`WorkerBackend`). Only ``client``
and ``backend`` import the ``kubernetes`` package, so the pure modules work without it.
"""
