"""Durable state: the catalog of what was asked for."""
