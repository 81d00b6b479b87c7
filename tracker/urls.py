"""How clients name a tracker: its base URL, from either spelling an operator writes."""

from __future__ import annotations

from urllib.parse import urlsplit


def tracker_base_url(text: str) -> str:
    """``http://host:6969`` or ``http://host:6969/announce`` -> ``http://host:6969``."""
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"tracker must be an http:// URL, not {text!r}")
    path = parts.path.rstrip("/")
    if path.endswith("/announce"):
        path = path[: -len("/announce")]
    if parts.query or parts.fragment:
        raise ValueError(f"tracker URL must not carry a query: {text!r}")
    return f"{parts.scheme}://{parts.netloc}{path}"
