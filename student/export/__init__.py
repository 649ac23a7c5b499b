"""Exporting a student: model2vec and ONNX folders (run.py, formats.py) and OnnxStudent, which needs only
onnxruntime. Kept free of imports here, so `from student import OnnxStudent` never loads torch."""
