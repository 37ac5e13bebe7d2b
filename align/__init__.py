"""diffusion-align: align diffusion and flow-matching generators (and small LMs) to rewards."""

__version__ = "0.1.0"
