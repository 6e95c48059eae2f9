"""Watching served models: prediction capture, drift, live quality (issue #13)."""
