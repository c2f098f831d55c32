"""Reaching Machines: transports (fly, ssh, local) and the batched probe."""
