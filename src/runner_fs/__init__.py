"""runner-fs: per-runner loopback filesystems and the metrics harvested from them."""

__version__ = "0.1.0"
