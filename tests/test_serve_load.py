"""Load test of `attnorm serve`: 20 concurrent 512 px inpainting requests on loopback (tiny random model)."""

import pytest

from _serve import make_app, running, tiny_inpainter
from attnorm.serve.app import Limits
from attnorm import cli
from attnorm.serve.loadtest import format_report, run_load


def test_twenty_concurrent_512px_requests():
    app = make_app(gan=False, limits=Limits(max_queue=32), inpainter=tiny_inpainter(width=1 / 16))
    with running(app) as s:
        rep = run_load(f"http://127.0.0.1:{s.server_port}/", n=20, concurrency=20, size=512)
    print("\n" + format_report(rep))
    assert rep["failures"] == [] and rep["ok"] == 20  # every answer checked: known pixels bit-identical
    lat = rep["latency_s"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["max"]
    # the model runs one request at a time, so the slowest waited for the others: latency spreads
    assert lat["max"] >= 5 * rep["inference_s"]["p50"]
    # bounded memory: 20 requests of 512 px add little to the server's peak (uploads stay in memory,
    # one forward pass at a time)
    srv = rep["server"]
    assert srv["peak_rss_after_mb"] - srv["peak_rss_before_mb"] < 1000


def test_more_requests_than_the_queue_get_503_not_a_crash():
    with running(make_app(gan=False, limits=Limits(max_queue=4))) as s:
        rep = run_load(f"http://127.0.0.1:{s.server_port}/", n=12, concurrency=12, size=256)
    assert rep["ok"] >= 4 and rep["ok"] + len(rep["failures"]) == 12
    assert all(f.startswith("HTTP 503") and "--max-queue" in f for f in rep["failures"])


def test_refuses_other_hosts(capsys):
    with pytest.raises(ValueError, match="loopback"):
        run_load("http://example.com:7860/")
    assert cli.main(["serve-loadtest", "--url", "http://10.1.2.3:7860/"]) == 2
    assert "attnorm serve-loadtest: error: the load test only targets this machine" in capsys.readouterr().err
    assert cli.main(["serve-loadtest", "--url", "http://127.0.0.1:1/"]) == 2
    assert "cannot reach http://127.0.0.1:1/" in capsys.readouterr().err


def test_the_command_reports_and_writes_json(tmp_path, capsys):
    with running(make_app(gan=False)) as s:
        out = tmp_path / "load.json"
        assert cli.main(["serve-loadtest", "--url", f"http://127.0.0.1:{s.server_port}/", "--n", "3",
                         "--concurrency", "3", "--size", "64", "--json", str(out)]) == 0
    assert "3/3 ok (3 concurrent, 64 px" in capsys.readouterr().out
    import json
    assert json.loads(out.read_text())["ok"] == 3
