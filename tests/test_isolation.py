"""The conversion worker (``tflite_export.isolation``): recycled after its jobs and past its
memory, because TensorFlow 2.21's converter leaks about 22 MB a conversion."""

import sys

import pytest

from tflite_export import isolation


@pytest.fixture
def fresh_worker():
    isolation.shutdown()
    yield
    isolation.shutdown()


def test_a_worker_is_recycled_after_its_jobs(monkeypatch, tmp_path, fresh_worker):
    monkeypatch.setenv("TFSYNAPSE_CONVERTER_JOBS", "2")
    before = isolation.worker_stats()
    pids = []
    for _ in range(3):
        isolation.run_isolated("isolation_jobs:noop", str(tmp_path))
        pids.append(isolation.worker_stats()["pid"])
    after = isolation.worker_stats()
    # jobs 1 and 2 on the first worker, which the second ends; job 3 on a fresh one
    assert pids[0] is not None and pids[1] is None and pids[2] not in (None, pids[0])
    assert after["jobs"] == 1
    assert (after["started"] - before["started"], after["recycled"] - before["recycled"]) == (2, 1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="memory is read from /proc")
def test_a_worker_past_its_memory_is_recycled(monkeypatch, tmp_path, fresh_worker):
    isolation.run_isolated("isolation_jobs:noop", str(tmp_path))
    stats = isolation.worker_stats()
    assert stats["jobs"] == 1 and stats["rss_bytes"] > 2 ** 20  # an interpreter: over 1 MB
    monkeypatch.setenv("TFSYNAPSE_CONVERTER_MAX_MB", "1")
    isolation.run_isolated("isolation_jobs:noop", str(tmp_path))
    after = isolation.worker_stats()
    assert after["pid"] is None and after["recycled"] == stats["recycled"] + 1
    assert after["last_rss_bytes"] > 2 ** 20


@pytest.mark.parametrize("name, value", [("TFSYNAPSE_CONVERTER_JOBS", "many"),
                                         ("TFSYNAPSE_CONVERTER_MAX_MB", "0")])
def test_bad_limits_are_refused_with_the_variable(monkeypatch, tmp_path, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=name):
        isolation.run_isolated("isolation_jobs:noop", str(tmp_path))
