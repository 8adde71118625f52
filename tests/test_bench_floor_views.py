"""The benchmarks' makeCallUrl floor (bench/floor_views.py): served only when BENCH_FLOORS is true."""

import importlib

import pytest
from django.test import override_settings
from django.urls import clear_url_caches

import ctihub.urls

FLOOR = "/api/bench-floor/make-call"
QUERY = {"clientId": "c", "code": "101", "phone": "+33612345678", "userId": "7"}


@pytest.fixture
def urls_with_floors():
    def build(floors: bool):
        with override_settings(BENCH_FLOORS=floors):
            importlib.reload(ctihub.urls)
        clear_url_caches()

    yield build
    importlib.reload(ctihub.urls)  # as the settings say again
    clear_url_caches()


def test_it_never_serves_the_floor_without_bench_floors(client, urls_with_floors):
    urls_with_floors(False)
    assert client.get(FLOOR, QUERY).status_code == 404


def test_it_serves_the_floor_as_a_bare_drf_view_under_bench_floors(client, urls_with_floors):
    urls_with_floors(True)
    answer = client.get(FLOOR, QUERY)
    assert answer.status_code == 200
    assert answer.json() == {"success": True, "callerIdPresented": False}
    refused = client.get(FLOOR, {key: value for key, value in QUERY.items() if key != "phone"})
    assert refused.status_code == 400 and refused.json()["success"] is False
