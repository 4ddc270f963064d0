"""The whole system on this machine: ``stack`` starts the simulator, the API and workers
as real processes (the demo, the end-to-end tests and the benchmarks use it); ``demo`` is
``make demo`` (``python -m pgwa.local.demo``)."""
