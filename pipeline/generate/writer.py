"""Write an estate to disk: inventory.jsonl, flows.jsonl.gz and truth.jsonl."""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import orjson

from pipeline.core.columns import ACTION_REJECT
from pipeline.errors import InputError
from pipeline.generate.config import GenerateConfig
from pipeline.generate.estate import build_estate, iter_flow_chunks
from pipeline.generate.records import flow_records_to_jsonl_bytes

GZIP_LEVEL = 3  # fast; the files are for demos and tests, not archives


@dataclass(frozen=True)
class GenerateSummary:
    """What :func:`write_estate` wrote."""

    inventory_path: Path
    flows_path: Path
    truth_path: Path
    flows: int  # flow records written (requests and responses)
    rejected: int  # of which action == reject
    inventory_entries: int
    episodes: int
    attacks: int  # malicious episodes
    ip_reuses: int  # addresses handed to a different app during the window
    start: float
    end: float


def write_estate(cfg: GenerateConfig, out_dir: Path) -> GenerateSummary:
    """Generate the estate for ``cfg`` into ``out_dir``; same seed, same bytes."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create {out_dir}: {exc}; choose a writable directory") from exc
    estate = build_estate(cfg)
    inventory_path = out_dir / "inventory.jsonl"
    truth_path = out_dir / "truth.jsonl"
    flows_path = out_dir / "flows.jsonl.gz"
    _write_lines(inventory_path, [orjson.dumps(e) for e in estate.inventory])
    _write_lines(truth_path, [orjson.dumps(e) for e in estate.truth])
    flows = rejected = 0
    with open(flows_path, "wb") as raw, gzip.GzipFile(
        filename="", mode="wb", fileobj=raw, compresslevel=GZIP_LEVEL, mtime=0
    ) as gz:
        for table in iter_flow_chunks(estate):
            gz.write(flow_records_to_jsonl_bytes(table))
            flows += table.num_rows
            rejected += int((table.column("action").to_numpy() == ACTION_REJECT).sum())
    return GenerateSummary(
        inventory_path=inventory_path,
        flows_path=flows_path,
        truth_path=truth_path,
        flows=flows,
        rejected=rejected,
        inventory_entries=len(estate.inventory),
        episodes=len(estate.truth),
        attacks=sum(1 for e in estate.truth if e["malicious"]),
        ip_reuses=estate.population.ip_reuses,
        start=cfg.start,
        end=cfg.end,
    )


def _write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


__all__ = ["GenerateSummary", "write_estate"]
