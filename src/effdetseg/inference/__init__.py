"""Running a trained network: the one inference path (``segment``: preprocess → network (+TTA,
sliding window) → logits at the original size → argmax), the network prepared for it (BatchNorm
folded), the runtimes behind ``--backend`` (eager PyTorch, ONNX Runtime, OpenVINO, TorchScript,
auto) and the ``Predictor`` that ties them to a model file.

Training's validation and ``evaluate`` use this package, so it imports nothing of export,
benchmarking or sharing.

In modules: ``segment`` (the inference path) · ``prepare`` (``prepare_for_inference``, BatchNorm
folding) · ``onnx_graph`` (the network as an ONNX graph, what ONNX Runtime and OpenVINO run) ·
``backends`` (which backend runs which file) · ``runners`` (one runner per runtime) · ``auto``
(``--backend auto``) · ``timing`` (alternating timings) · ``predictor`` (``Predictor``).
"""
