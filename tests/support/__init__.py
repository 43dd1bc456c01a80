"""Plain helpers the tests import (no fixtures, no tests): see docs/testing.md."""
