"""volguard: keep a Django app's uploads where it left them on Fly.io.

Kept tiny on purpose: `volguard lint` is a CI gate and pays for every import.
"""

__version__ = "0.1.0"
