"""The fault table: run every fault scenario of the reliability suite and print, per fault, the
trials completed / failed / lost / duplicated and the recovery time (from the fault until the
study next records a completed trial). CPU only; scenarios live in tests/reliability/.

    python benchmarks/fault_table.py [--json fault_table.json] [--only raise,driver_kill,...]

PostgreSQL restart runs when ATTNSEARCH_TEST_PG_URL is set and this process may run
``pg_ctlcluster`` (root); read-only and disk-full need ``mount`` (root with CAP_SYS_ADMIN).
Skipped scenarios are listed with the reason.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "reliability"))

import fault_scenarios as fs  # noqa: E402


def scenarios(tmp: Path, address: str):
    """name -> zero-argument callable returning a FaultRow (or raising RuntimeError to skip)."""
    def sqlite(name):
        return f"sqlite:///{tmp / (name + '.db')}"

    def pg():
        url = os.environ.get("ATTNSEARCH_TEST_PG_URL")
        if not url:
            raise RuntimeError("skipped: ATTNSEARCH_TEST_PG_URL not set")
        why = fs.can_restart_postgres()
        if why:
            raise RuntimeError(f"skipped: {why}")
        return fs.postgres_restart(url, tmp)

    return {
        "raise": lambda: fs.trial_raises(sqlite("raise"), tmp),
        "worker_kill": lambda: fs.worker_sigkill(sqlite("worker"), tmp),
        "driver_kill": lambda: fs.driver_sigkill_resume(sqlite("driver"), tmp, address),
        "postgres_restart": pg,
        "read_only": lambda: fs.database_read_only(tmp),
        "disk_full": lambda: fs.database_disk_full(tmp),
        "nan_inf": lambda: fs.nan_inf_losses(sqlite("naninf"), tmp),
        "time_limit": lambda: fs.proxy_time_limit(sqlite("timelimit"), tmp),
        "node_removed": lambda: fs.ray_node_removed(tmp),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--only", help="comma-separated scenario names (default: all)")
    args = parser.parse_args(argv)

    import ray

    t0 = time.monotonic()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    fs.make_pickle_by_value()
    address = ray.get_runtime_context().gcs_address
    rows, skipped, errors = [], {}, {}
    with tempfile.TemporaryDirectory(prefix="fault-table-") as tmp_name:
        table = scenarios(Path(tmp_name), address)
        wanted = args.only.split(",") if args.only else list(table)
        unknown = [w for w in wanted if w not in table]
        if unknown:
            parser.error(f"--only: unknown scenario(s) {unknown} (allowed: {', '.join(table)})")
        for name in wanted:
            started = time.monotonic()
            try:
                row = table[name]()
            except RuntimeError as exc:
                skipped[name] = str(exc)
                continue
            except Exception:  # noqa: BLE001 - a broken scenario is reported, the others still run
                errors[name] = traceback.format_exc(limit=4)
                continue
            row.extra["scenario_s"] = round(time.monotonic() - started, 1)
            rows.append(row)
            print(f"{name}: done in {row.extra['scenario_s']} s", file=sys.stderr, flush=True)
    ray.shutdown()
    print(fs.format_table(rows))
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    for name, tb in errors.items():
        print(f"ERROR in {name}:\n{tb}")
    print(f"host: {platform.node()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
          f"total {time.monotonic() - t0:.0f} s")
    if args.json:
        doc = {"rows": [{**r.to_dict(), "details": {k: v for k, v in r.extra.items() if k != "cli_show_output"}}
                        for r in rows], "skipped": skipped, "errors": list(errors),
               "cpus": os.cpu_count(), "load_average": os.getloadavg()[0]}
        args.json.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    bad = [r.fault for r in rows if r.lost or r.duplicated]
    return 1 if bad or errors else 0


if __name__ == "__main__":
    sys.exit(main())
