"""The ``internimage`` command line: ``train``, ``eval``, ``predict`` and ``info``."""
