"""Webhook targets: only public addresses, however the address is spelled."""

from __future__ import annotations

import pytest

from shared.addresses import TargetRefused, resolve

REFUSED = [
    "http://127.0.0.1/hook",
    "http://localhost:8080/hook",
    "http://10.1.2.3/",
    "http://172.16.0.1/",
    "http://192.168.0.10/",
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata
    "http://100.64.0.1/",  # CGNAT
    "http://0.0.0.0/",
    "http://[::1]/",
    "http://[::]/",
    "http://[::ffff:127.0.0.1]/",  # IPv4-mapped
    "http://[::ffff:7f00:1]/",
    "http://[64:ff9b::7f00:1]/",  # NAT64 of 127.0.0.1
    "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 of the metadata address
    "http://[2002:7f00:1::]/",  # 6to4 of 127.0.0.1
    "http://[fd00:ec2::254]/",  # AWS's IPv6 metadata
    "http://[fe80::1]/",
    "http://2130706433/",  # 127.0.0.1 in decimal
    "http://0x7f000001/",  # ... in hex
    "http://0x7f.1/",
    "http://0177.0.0.1/",  # ... in octal
    "http://127.1/",
    "http://224.0.0.1/",  # multicast
    "http://240.0.0.1/",  # reserved
    "ftp://8.8.8.8/",
    "http://user:pw@8.8.8.8/",
    "file:///etc/passwd",
]


@pytest.mark.parametrize("url", REFUSED)
async def test_non_public_targets_are_refused(url: str) -> None:
    with pytest.raises(TargetRefused):
        await resolve(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://8.8.8.8/hook",
        "https://[2606:4700:4700::1111]:8443/x?y=1",
        "http://[64:ff9b::808:808]/",  # NAT64 of a public address: judged by what it carries
    ],
)
async def test_public_addresses_are_allowed_and_connected_to_as_checked(url: str) -> None:
    target = await resolve(url)
    assert target.address in url and target.path.startswith("/")


async def test_loopback_is_allowed_only_when_the_deployment_says_so() -> None:
    target = await resolve("http://127.0.0.1:9/hook", allow_private=True)
    assert (target.address, target.port, target.path) == ("127.0.0.1", 9, "/hook")
