"""common.netvet: which addresses count as public, and which URL shapes are refused outright."""

from __future__ import annotations

import ipaddress

import pytest

from common.netvet import Refused, is_public, split_url, vet_address

NOT_PUBLIC = [
    "127.0.0.1", "127.255.0.9", "0.0.0.0", "10.1.2.3", "172.16.0.1", "192.168.0.1",
    "169.254.169.254", "100.64.0.1", "224.0.0.1", "239.255.255.250", "255.255.255.255",
    "240.0.0.1", "::", "::1", "fd00::1", "fe80::1", "ff02::1",
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "64:ff9b::7f00:1", "64:ff9b::a00:1",
    "64:ff9b:1::1", "64:ff9b::808:808", "2002:7f00:1::", "2002:a9fe:a9fe::",
    "2001:0:4136:e378:8000:63bf:80ff:fffe",
]  # fmt: skip
PUBLIC = ["8.8.8.8", "1.1.1.1", "2001:4860:4860::8888", "::ffff:8.8.8.8", "2002:808:808::1"]


@pytest.mark.parametrize("text", NOT_PUBLIC)
def test_non_public_addresses(text: str) -> None:
    assert not is_public(ipaddress.ip_address(text))


@pytest.mark.parametrize("text", PUBLIC)
def test_public_addresses(text: str) -> None:
    assert is_public(ipaddress.ip_address(text))


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("ftp://example.com/x", "scheme"),
        ("file:///etc/passwd", "scheme"),
        ("javascript:alert(1)", "scheme"),
        ("http://u:p@example.com/", "credentials"),
        ("http:///nohost", "no host"),
        ("http://example.com:99999/", "bad port"),
        ("http://example.com:0/", "bad port"),
        ("http://example.com/a b", "whitespace"),
        ("http://example.com/a\r\nX-Evil: 1", "whitespace"),
        ("http://exämple.com/", "ASCII"),
        ("http://[::1/", "malformed"),
    ],
)
def test_url_shapes_refused(url: str, needle: str) -> None:
    with pytest.raises(Refused, match=needle):
        split_url(url, ("http", "https"))


def test_good_url_splits() -> None:
    parts = split_url("HTTPS://Example.com:8443/p?q=1", ("http", "https"))
    assert (parts.scheme, parts.hostname, parts.port) == ("https", "example.com", 8443)


async def test_vet_address_resolves_once_and_refuses_loopback_names() -> None:
    with pytest.raises(Refused, match="non-public"):
        await vet_address("localhost", 80, allow_private=False)
    assert await vet_address("127.0.0.1", 80, allow_private=True) == "127.0.0.1"
