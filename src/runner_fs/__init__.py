"""runner-fs: per-runner loopback filesystems and the metrics harvested from them."""
