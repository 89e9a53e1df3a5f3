"""Harnesses that start a server plus clients and measure them: ``lpfl launch`` (processes on
loopback) and ``lpfl field`` (shaped links between network namespaces)."""
