"""The suite's SeaweedFS identity and bucket."""

from __future__ import annotations

S3_ACCESS_KEY = "AKIAGATEWAYTEST00001"
S3_SECRET_KEY = "gateway-test-secret-key-000000000000000"
BUCKET = "attachments"
