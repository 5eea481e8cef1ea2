"""The API fuzzed from its own OpenAPI document by schemathesis (``scripts/fuzz_api.py``): a real
API process with ``API_TOKEN`` set and sent, on Redis database 1 (emptied before and after), for a
bounded time. No answer may be a server error, and every answer must be one the document describes
(status, content type, headers, body schema), with invalid input refused and unsupported methods
answered 405 with ``Allow``.

One seeded pass over every operation, 50 examples per operation and phase (about 2,600 requests),
rather than a time budget: the same requests on any machine and under any load. Longer explorations
are ``scripts/fuzz_api.py --max-time``'s (README)."""

import runpy

from helpers import REPO

fuzz = runpy.run_path(str(REPO / "scripts/fuzz_api.py"))["fuzz"]


def test_schemathesis_finds_no_server_error_and_no_undocumented_answer(tmp_path):
    outcome = fuzz(max_examples=50, redis_db=1, seed_value=20261207, report_dir=tmp_path)
    assert outcome.requests > 2000, outcome.output[-3000:]
    assert outcome.server_errors == [], outcome.server_errors[:10]
    assert outcome.failed_checks == [], outcome.failed_checks[:10]
