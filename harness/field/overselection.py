"""What over-selection (``server.round.close-after``) cost and saved in a field run, from the
delay proxy's timing of each client's stream.

A round that closes after ``close-after`` updates records the clients still training as
``late``; each of them finishes its task anyway, uploads the update, and the server refuses it
(its round is closed). The server's records hold no trace of that upload beyond bytes in a
later round's window, so this module finds it in the proxy's uplink chunks: a client handles
its tasks one at a time, so its uploads (:func:`uploads`: bursts of chunks at least one
update's payload long) follow its tasks in order, one per round in which it was sampled and
trained (:data:`TRAINED`). For a late client's round that gives

- ``wasted_uplink_bytes``: the bytes of its refused upload on the link;
- ``needed_seconds``: what it would have held the round up: its task's download, plus the
  time from when it could start on the task (downloaded, and its previous task's upload done)
  to the last byte of its upload, plus the one-way delay to the server.

An upload that never came (the run ended while the client trained) leaves both None.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from lpfl.harness.field.delay_proxy import Chunk
from lpfl.records import ClientStatus

BURST_GAP_S = 0.5
"""Chunks less than this apart belong to one transfer; a client's uploads are a training round
apart."""

TRAINED = (ClientStatus.UPDATED, ClientStatus.DISCARDED, ClientStatus.LATE,
           ClientStatus.TIMED_OUT)
"""The statuses of a client that received a task and uploaded (or will upload) an update."""


@dataclass(frozen=True)
class LateUpload:
    """A late client's refused update, as the proxy saw it (None: it never came)."""

    wasted_uplink_bytes: int | None
    needed_seconds: float | None


def uploads(chunks: Sequence[Chunk], payload: int, gap_s: float = BURST_GAP_S) -> list[Chunk]:
    """The uploads in a stream, each as one chunk: runs of chunks less than ``gap_s`` apart
    that hold at least ``payload`` bytes. On a slow link a client's next upload can queue
    right behind the last one, so a run of ``n`` times ``payload`` bytes (an update's framing
    is far below a payload) is ``n`` uploads, cut where its bytes reach each ``n``-th."""
    runs: list[list[Chunk]] = []
    for chunk in chunks:
        if runs and chunk.start - runs[-1][-1].end < gap_s:
            runs[-1].append(chunk)
        else:
            runs.append([chunk])
    found = []
    for run in runs:
        total = sum(c.nbytes for c in run)
        count = total // payload if payload > 0 else 0
        start, held, cut = run[0].start, 0, 1
        for chunk in run:
            held += chunk.nbytes
            while cut <= count and held * count >= cut * total:
                found.append(Chunk(start, chunk.end, total // count))
                start, cut = chunk.end, cut + 1
    return found


def late_uploads(statuses: Sequence[tuple[int, ClientStatus]], up_chunks: Sequence[Chunk],
                 downloads: Mapping[int, Chunk], payload: int, delay_s: float
                 ) -> dict[int, LateUpload]:
    """Per round in which the client was ``late``, its refused upload.

    ``statuses``: the client's (round, status) in round order; ``up_chunks``: its uplink
    stream; ``downloads``: per round, its task's download as one span (start, end); ``payload``:
    the payload bytes of one update; ``delay_s``: its one-way delay.
    """
    trained = [(r, status) for r, status in statuses if status in TRAINED]
    sent = uploads(up_chunks, payload)
    found: dict[int, LateUpload] = {}
    previous_end = 0.0
    for i, (round_number, status) in enumerate(trained):
        upload = sent[i] if i < len(sent) else None
        download = downloads.get(round_number)
        if status is ClientStatus.LATE:
            needed = None
            if upload is not None and download is not None:
                began = max(download.end, previous_end)
                needed = (download.end - download.start + delay_s) + (upload.end - began) + delay_s
            found[round_number] = LateUpload(upload.nbytes if upload is not None else None,
                                             needed)
        if upload is not None:
            previous_end = upload.end
    return found
