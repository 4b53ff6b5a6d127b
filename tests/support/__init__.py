"""Test support for couturier's suite, loaded as a pytest plugin by ``tests/conftest.py``.

* :mod:`support.plugin`: the fixtures (``trained_models``, ``service_hosts``, the fakes) and the hook
  that marks every test needing trained models as ``integration``;
* :mod:`support.trained`: :class:`~support.trained.TrainedModels` and how the session trains them;
* :mod:`support.hosts`: real in-process service hosts over trained models (``real_host``, ...);
* :mod:`support.fakes`: an inference backend and a vector store in memory, for fast unit tests;
* :mod:`support.onnx_models`: tiny hand-built ONNX models for the Triton / model-repository tests.

``tests/`` is on ``sys.path`` through ``pythonpath`` in pyproject's ``[tool.pytest.ini_options]``, so
test modules import these as ``from support.hosts import real_host`` in any import mode.
"""
