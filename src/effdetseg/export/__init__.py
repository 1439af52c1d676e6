"""What ``effdetseg export`` writes: ONNX, TorchScript and OpenVINO IR files of the BatchNorm-folded
network with the model record (``formats``), the parity check against PyTorch (``parity``), and INT8
versions calibrated on real images (``calibration``, ``quantize_onnx``, ``quantize_openvino``).
"""
