"""Orchestration around the missiwae library: Ray Data, Ray Train, Ray Tune and MLflow.

Data flows one way: pipelines call missiwae, never the reverse.
"""
