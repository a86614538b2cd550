"""Metrics (Prometheus) for the driver."""
