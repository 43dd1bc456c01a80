"""What a cold download computes before its response, timed alone: `python -m bench.cold_path`.

The target built from a never-seen row (Content-Disposition, content type) and its URL
signed and wrapped as the handler gets it, for a new attachment each time: the CPU a cold
download spends besides the query, aiohttp and the caches. In-process, so it resolves a
few microseconds that a run under wrk, noisy by a tenth, cannot.
"""

from __future__ import annotations

import itertools
import timeit
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from service.core.attachment import AttachmentTarget, PresignedUrl
from service.storage.signer import BucketPrefix, QuerySigner

# Nothing is sent anywhere: signing needs only some key.
CREDENTIALS = SimpleNamespace(access_key="AKIAEXAMPLE", secret_key="example", token=None)  # noqa: S106
PREFIX = BucketPrefix(
    "http://127.0.0.1:9/attachments/", "/attachments/", "127.0.0.1:9", "us-east-1/s3/aws4_request"
)
ROUNDS = 20_000


def main() -> None:
    signer = QuerySigner(None, None)
    numbers = itertools.count()

    def cold_download() -> PresignedUrl:
        n = next(numbers)
        row = {
            "bucket": "attachments",
            "object_key": f"ws/{n:08d}/Quarterly report {n}.pdf",
            "filename": f"Quarterly report {n}.pdf",
            "content_type": "application/pdf",
            "size_bytes": 1000,
            "upload_pending": False,
            "sha256": None,
        }
        target = AttachmentTarget.from_row(row)
        now = datetime.now(UTC).replace(microsecond=0)
        url = signer.sign("GET", PREFIX, target.key, target.response(False), 900, CREDENTIALS, now)
        return PresignedUrl.of(url, now + timedelta(seconds=900))

    best = min(timeit.repeat(cold_download, number=ROUNDS, repeat=5)) / ROUNDS
    print(f"cold download, target and URL: {best * 1e6:.2f} µs (best of 5 runs of {ROUNDS:,})")


if __name__ == "__main__":
    main()
