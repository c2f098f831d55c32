"""Fly.io's side: the Machines API client, its models, the fleet as Fly sees it, volume plans."""
