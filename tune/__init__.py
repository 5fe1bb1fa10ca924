"""Ray Tune sweeps of the missIWAE pipeline: search spaces (tune/spaces/*.yaml), the trial
trainable, MLflow runs per trial, and the ranking. Entry point: `python -m tune.sweep`."""
