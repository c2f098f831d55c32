"""Invoke entry point: `invoke lint fly.toml` runs the same tasks as `volguard lint`."""

from volguard.tasks import ns  # noqa: F401
