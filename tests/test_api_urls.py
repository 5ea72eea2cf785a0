"""Which URLs a provider hands back may receive the API key (service/providers/base.py
`is_api_url`), the one check Replicate, RunComfy and fal use for their polling URLs."""

from __future__ import annotations

import pytest

from service.providers.base import is_api_url

BASE = "http://127.0.0.1:8000/simulator/fal"
HOSTS = ("queue.fal.run",)


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8000/simulator/fal/fal-ai/flux/requests/r-1/status",
    "https://queue.fal.run/fal-ai/flux/requests/r-1/status",
])
def test_urls_below_the_base_or_on_the_providers_https_hosts_get_the_key(url: str):
    assert is_api_url(url, BASE, HOSTS)


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8000/v1/jobs",  # the base's origin, outside its path
    "http://127.0.0.1:8000/simulator/falsehood/x",  # a sibling whose name starts the same
    "http://127.0.0.1:9999/simulator/fal/x",  # another port
    "https://127.0.0.1:8000/simulator/fal/x",  # another scheme
    "http://queue.fal.run/fal-ai/flux/requests/r-1",  # an API host, not over https
    "https://queue.fal.run.attacker.example/x",
    "http://127.0.0.1:99999/simulator/fal/x",  # a malformed port
])
def test_other_urls_never_get_the_key(url: str):
    assert not is_api_url(url, BASE, HOSTS)
