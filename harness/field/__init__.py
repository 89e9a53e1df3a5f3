"""``lpfl field``: real client processes in network namespaces on shaped links (rate by ``tc``,
delay by a userspace proxy), one run per link profile and method, and a report of bytes and
seconds on the wire."""
