"""gpumon: keeps the lab's "Server and GPU usage" sheet live from every server's agent."""

__version__ = "0.1.0"
