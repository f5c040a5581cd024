"""TensorRT Python API conformance without a GPU or the TensorRT libraries.

The real binding modules (`tensorrt-cu12-bindings` 10.3 / 11.4 from PyPI, `tensorrt_rtx` as installed) are imported
in a subprocess against stub shared libraries (wheels.py); the project's builder and runtime code is then driven
(drive.py) with a typed recording proxy of the real module (proxy.py) whose objects behave like a tiny software
TensorRT (sim.py), so every attribute, property write and call the code makes is checked against the real bindings.
Nothing here is ever imported as `tensorrt` in the pytest process itself.
"""
