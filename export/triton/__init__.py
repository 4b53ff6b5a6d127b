"""Model serving: Triton model repository writer, local tritonserver, version swaps, CLI.

Modules: ``signature`` (ONNX -> signature), ``model_config`` (config.pbtxt), ``layout`` (reading a
repository), ``repository`` (publishing versions), ``environment`` (the Triton virtualenv),
``local_server`` (LocalTriton), ``control`` (load/unload over gRPC), ``versions`` (swaps), ``cli``.
"""
