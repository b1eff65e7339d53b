"""The rules tests run on the rules bench (tests/support/rules_bench.py): both CRMs, both databases."""

from tests.support.rules_bench import bench

__all__ = ["bench"]
