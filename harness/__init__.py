"""Real processes for the tests, the benchmarks and the soak run: ``python -m service``
(``service.py``), Debian's nginx on the gateway config (``gateway.py``), and the
subprocess plumbing they share (``processes.py``). Not installed with the project: it is
imported from a checkout (the tests' conftest and the bench scripts put the repository
first on ``sys.path``)."""
