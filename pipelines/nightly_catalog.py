"""Nightly job: run a catalog of scenes, write a report, exit with a code the scheduler reads.

Every scene of the catalog that is not up to date (new, changed input, model or
parameters, missing outputs) runs through the ``geoseg run`` pipeline; the others are
skipped in well under a second each, so the job can run as often as scenes may arrive.
A run that was killed (a node lost, a timeout) is simply started again: it completes
what is missing. Two runs on the same catalog never overlap: the second exits with 3.

Exit codes: 0 every scene done or skipped, 1 a scene failed (see the report), 2 the
catalog is invalid, 3 another run on this catalog is in progress.

Usage::

    python pipelines/nightly_catalog.py catalog.yaml                       # local threads
    python pipelines/nightly_catalog.py catalog.yaml --workers 4 --report reports/{date}.json
    python pipelines/nightly_catalog.py catalog.yaml --scheduler tcp://dask-scheduler:8786

Scheduling it:

cron (02:00 every night; ``flock``-free: the catalog lock already prevents overlaps)::

    0 2 * * *  cd /srv/geoseg && /srv/geoseg/.venv/bin/python pipelines/nightly_catalog.py \\
               catalog.yaml --workers 4 --report reports/{date}.json >> logs/nightly.log 2>&1

Airflow (a non-zero exit fails the task; 3 means the previous run is still going)::

    from airflow.operators.bash import BashOperator

    nightly = BashOperator(
        task_id="geoseg_nightly_catalog",
        bash_command=(
            "cd /srv/geoseg && python pipelines/nightly_catalog.py catalog.yaml "
            "--scheduler tcp://dask-scheduler:8786 --report reports/{{ ds }}.json --quiet"
        ),
        retries=2,  # a rerun only completes what the failed attempt left undone
    )

Kubernetes CronJob (the image has geoseg installed; catalog and outputs on a volume)::

    apiVersion: batch/v1
    kind: CronJob
    metadata: {name: geoseg-nightly}
    spec:
      schedule: "0 2 * * *"
      concurrencyPolicy: Forbid
      jobTemplate:
        spec:
          backoffLimit: 2
          template:
            spec:
              restartPolicy: Never
              containers:
                - name: geoseg
                  image: registry.example.com/geoseg:latest
                  workingDir: /data
                  command: ["python", "/app/pipelines/nightly_catalog.py", "catalog.yaml",
                            "--scheduler", "tcp://dask-scheduler:8786", "--report", "reports/{date}.json"]
                  volumeMounts: [{name: data, mountPath: /data}]
              volumes: [{name: data, persistentVolumeClaim: {claimName: geoseg-data}}]

GPU workers: start them with ``dask worker tcp://dask-scheduler:8786 --resources GPU=1``
and set ``resources: {GPU: 1}`` in the catalog's defaults; the tile tasks then run only
there, and ``device: auto`` picks each worker's GPU.
"""

from __future__ import annotations

import argparse
import sys
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("catalog", type=Path, help="the catalog YAML file")
    p.add_argument("--report", default="report.json",
                   help="where to write the JSON report; {date} becomes today's date (default: %(default)s)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler", default=None, metavar="ADDRESS", help="an existing dask.distributed scheduler")
    where.add_argument("--workers", type=int, default=None, metavar="N", help="start a local Dask cluster of N workers")
    p.add_argument("--only", nargs="+", default=None, metavar="ID", help="only these scene ids")
    p.add_argument("--force", action="store_true", help="rerun scenes that are up to date")
    p.add_argument("--quiet", action="store_true", help="no progress bars (the summary is still printed)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the catalog; return the exit code (0 ok, 1 a scene failed, 2 bad catalog, 3 locked)."""
    from geoseg.allocator import tune_cpu_allocator

    tune_cpu_allocator()  # before torch starts (see geoseg.allocator)
    from geoseg.batch.runner import EXIT_CATALOG, EXIT_FAILED, EXIT_LOCKED, format_summary, run_batch
    from geoseg.errors import CatalogError, GeosegError, LockedError

    args = parse_args(argv)
    report_path = Path(args.report.replace("{date}", date.today().isoformat()))
    try:
        report = run_batch(args.catalog, only=args.only, force=args.force, scheduler=args.scheduler,
                           workers=args.workers, report=report_path, quiet=args.quiet)
    except GeosegError as exc:
        print(f"nightly_catalog: error: {exc}", file=sys.stderr)
        return EXIT_CATALOG if isinstance(exc, CatalogError) else EXIT_LOCKED if isinstance(exc, LockedError) else EXIT_FAILED
    print(format_summary(report), file=sys.stderr)
    print(f"report: {report_path}", file=sys.stderr)
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main())
