"""Airflow wiring for hailo-pipeline: hooks, operators, links and callbacks over `release/`.

Modules here import only Airflow and `release` at top level, and `release` modules with heavy
dependencies (onnx, numpy, docker) only inside execute(), so DAG files parse fast.
"""
