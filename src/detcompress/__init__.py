"""detcompress: compress MMDetection detectors with NNCF."""

__version__ = "0.1.0"
