"""The tools floor: what is built on the models and weights rather than inside them.

``flops`` (the papers' FLOP convention, Figure 4), ``reports`` (the tables ``pvt models / info / complexity``
print), ``export`` (ONNX, TorchScript, ExportedProgram), ``publish`` (the folder and model card ``pvt push``
uploads).
"""
