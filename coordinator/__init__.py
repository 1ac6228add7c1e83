"""PAC mesh coordinator service.

| file | what |
| --- | --- |
| ``registry.py``, ``registry_servicer.py``, ``server.py`` | agent registry, heartbeats |
| ``jobs.py`` | ``JobSpec`` + validation, ``Job``, the state machine, ``Progress`` |
| ``job_store.py`` | SQLite persistence in ``--state``; restart fails interrupted jobs |
| ``driver.py`` | the ``JobDriver`` interface and the placement -> driver table |
| ``drivers/local.py`` | ``LocalDriver``: standalone training in this process |
| ``core.py`` | ``Coordinator``: the plain object both faces call |
| ``job_messages.py``, ``job_servicer.py``, ``coordinator_grpc.py`` | the gRPC face |
| ``rest.py``, ``rest_server.py`` | the REST face (FastAPI, uvicorn in our event loop) |
| ``metrics.py`` | Prometheus metrics |
| ``cli.py`` | ``pac coordinator`` |
| ``client.py``, ``commands/`` | ``pac submit``, ``pac status``, ``pac jobs``, ``pac cancel`` |
"""
