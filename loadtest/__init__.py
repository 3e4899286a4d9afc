"""``footprints loadtest``: drive a running footprints server with real tiles and
report what its users feel (throughput, latency, time to the first mask row, errors
by status code) beside what the server says of itself (its ``/metrics``).

Modules: :mod:`.tiles` (the tiles sent), :mod:`.calls` (one tile call, timed),
:mod:`.drivers` (closed and open loop), :mod:`.scrape` (the server's metrics over
time), :mod:`.report` (summary, JSON, charts, HTML) and :mod:`.cli`.
"""
