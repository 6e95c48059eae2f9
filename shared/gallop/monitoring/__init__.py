"""Watching served models: what they were asked, how they did, and how their inputs drift."""
