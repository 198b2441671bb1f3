"""`make run`: the whole flow, offline, against the bundled local Faker API on a free port."""

from __future__ import annotations

import os
import subprocess
import sys

from tasks.common.secrets import DEMO_KEY_FILE, ensure_demo_key, key_configured, without_key
from tasks.quality import validator


def start_local_api() -> tuple[subprocess.Popen[str], str]:
    """Start `python -m local_api` on a free loopback port; returns the process and base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "local_api", "--port", "0", "--quiet"],
        env=without_key(os.environ),  # the API makes no pseudonyms: it gets no key
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the server prints its base URL once it is ready
    url = next((word for word in line.split() if word.startswith("http")), None)
    if url is None:
        proc.kill()
        raise RuntimeError(f"local API did not start (printed {line!r})")
    return proc, url.rstrip("/")


def main() -> int:
    """Run the pipeline once against the local API and stop the API afterwards."""
    # GX's import, the longest part of start-up, first, on the other core, while the API and the
    # CLI start.
    validator.start()
    if not key_configured(os.environ):
        # Offline demo only: a random key kept in a git-ignored file, never a key in the repo.
        os.environ["PII_HASH_KEY_FILE"] = str(ensure_demo_key(DEMO_KEY_FILE))
    # `make run` keeps its Prefect server for the next run (flows/server.py); other CLI runs do
    # not start one that outlives them.
    os.environ.setdefault("CLI_PREFECT_SERVER", "background")
    proc, url = start_local_api()
    print(f"Local Faker API at {url}", flush=True)
    try:
        from flows.cli import main as run_flow

        return run_flow(["--api-url", url, *sys.argv[1:]])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    sys.exit(main())
