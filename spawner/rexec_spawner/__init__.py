"""Rexec spawner: an HTTP service that provisions, reports and deletes per-user workers.

Modules::

    config      SpawnerSettings (from arguments or REXEC_* environment variables)
    names       the worker-name rule and safe on-disk names for user ids
    models      the JSON bodies of the HTTP API (pydantic)
    backends/   where workers run: ``base`` (the interface), ``local`` (subprocesses)
    app         create_app(settings) -> FastAPI
    cli         main(argv): ``python -m rexec_spawner`` and ``rexec spawner``
"""
