"""The file source (replay): a recording's frames through the same pipeline,
in the order live fed them."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from ipvtrace.model import layout
from ipvtrace.model.evidence import KernelFacts
from ipvtrace.model.pipeline import Pipeline, Row, feed_run
from ipvtrace.output import recording


def run_replay(path: Path, sink: Callable[[Row], None] | None,
               row_filter: Callable[[Row], bool] | None = None,
               packet_sink: Callable | None = None,
               on_header: Callable[[dict], None] | None = None,
               on_warning: Callable[[str], None] | None = None) -> dict:
    """Feed a recording through the pipeline; RecordingError for a bad file.

    The file is read once: *on_header* sees its header before any packet, and
    the row filters `record` kept in it apply together with *row_filter*. A
    file cut short (its recorder died) is replayed up to its last whole
    frame; *on_warning* gets one line saying where it was cut."""
    rec = recording.read(path)   # header, trailer and layout checked (ipvtrace/output/header.py)
    return replay_recording(rec, path, sink, row_filter=row_filter, packet_sink=packet_sink,
                            on_header=on_header, on_warning=on_warning)


def replay_recording(rec: recording.Recording, path: Path | str,
                     sink: Callable[[Row], None] | None,
                     row_filter: Callable[[Row], bool] | None = None,
                     packet_sink: Callable | None = None,
                     on_header: Callable[[dict], None] | None = None,
                     on_warning: Callable[[str], None] | None = None) -> dict:
    """As run_replay, for a recording already opened and checked (a file, or
    one node's part of a merged file); *path* names it in errors."""
    from ipvtrace.model.decode import DecodeError
    from ipvtrace.model.filters import RowFilter

    h = rec.header
    lay = layout.Layout.from_json(h["layout"])
    version = max(int(h.get("format_version", 0)), lay.format_version)
    if version > layout.current().format_version:
        raise recording.RecordingError(
            f"{path}: recording format version {version} is newer than this "
            f"ipvtrace reads ({layout.current().format_version}); upgrade ipvtrace"
        )
    kept = RowFilter.from_json(h.get("row_filters"))
    if kept:
        given = row_filter
        row_filter = (lambda row: kept.matches(row) and given(row)) if given else kept.matches
    if on_header is not None:
        on_header(h)
    warning = rec.cut_warning(path)
    if warning and on_warning is not None:
        on_warning(warning)
    reasons = {int(k): v for k, v in h.get("drop_reasons", {}).items()}
    symbols = {int(k, 16): v for k, v in rec.trailer.get("symbols", {}).items()}
    pipe = Pipeline(lay, snapshots=[h.get("snapshot", {})], drop_reasons=reasons,
                    symbols=symbols, t0=int(h["start_ktime"]), sink=sink, row_filter=row_filter,
                    packet_sink=packet_sink, kernel=KernelFacts.from_plan(h.get("plan")))
    # no rows wanted (--stats): records are counted by shape where they can be
    counting = sink is None and row_filter is None and packet_sink is None
    feed = pipe.count if counting else pipe.record
    # ... and their lines written together where the rows are JSON lines alone
    alike = pipe.count_alike if counting else pipe.rows_alike
    try:
        for ftype, payload in rec.frames(runs=counting or pipe.writes_lines):
            if ftype == recording.F_EVENT:
                feed(payload)
            elif ftype == recording.F_RING:   # a whole run of records of one length
                feed_run(alike, feed, payload.blob, recording.RING_HDR.size, payload.length,
                         payload.step, payload.count, payload.ticks, pipe.tick)
            elif ftype == recording.F_TICK:
                pipe.tick(recording.TICK.unpack(payload)[0])
            elif ftype == recording.F_LOST:
                pipe.lost(recording.LOST.unpack(payload)[1])
            elif ftype == recording.F_SNAPSHOT:
                pipe.snapshot(payload)
    except DecodeError as exc:
        raise recording.RecordingError(f"{path}: corrupted event ({exc})") from None
    except recording.RecordingError as exc:
        raise recording.RecordingError(f"{path}: {exc}") from None
    if rec.cut_at is not None:
        pipe.lost(0)   # what the recorder held when it died is missing: open packets are incomplete
    pipe.finish()
    summary = pipe.summary()
    summary["header"] = {k: h.get(k) for k in ("kernel", "ipvtrace_version", "format_version",
                                                "cannot_show", "start_ktime", "start_wall")}
    summary["trailer"] = rec.trailer
    summary["cut_at"] = rec.cut_at
    return summary
