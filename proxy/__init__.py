"""proxy: the registry mirror and HTTP proxy of dfdaemon (issue #5)."""
