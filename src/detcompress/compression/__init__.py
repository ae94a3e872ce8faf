"""Compression: the only package that imports nncf (and, for filter pruning, torch-pruning).

Nothing here is imported unless an nncf_config asks for compression.
"""

from __future__ import annotations

from detcompress.errors import DetcompressError


def require_nncf() -> None:
    """One clear error when the nncf_config asks for compression and nncf is missing."""
    try:
        import nncf  # noqa: F401
    except ImportError as exc:
        raise DetcompressError(
            "the nncf_config asks for compression, but nncf is not installed; run "
            "`make install` (it installs nncf==3.4.0)"
        ) from exc
