"""Redis URLs: printed without their passwords, read alike by redis-py and Celery."""

from __future__ import annotations

import ssl

import pytest

from shared.errors import ConfigurationError
from shared.redis import celery_ssl, celery_url, masked, normalized
from shared.settings import Settings
from worker.app import create_celery


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@db.example:6380/2", "redis://:***@db.example:6380/2"),
        ("redis://chatlane:s3cret@10.0.0.5:6379/0", "redis://chatlane:***@10.0.0.5:6379/0"),
        ("rediss://app:s3cret@[::1]:6379/0", "rediss://app:***@[::1]:6379/0"),
        ("redis://u:p%40s3cret@h:1/0", "redis://u:***@h:1/0"),
        ("redis://u:p@s3cret@h:1/0", "redis://u:***@h:1/0"),
        ("redis://h:1/0?password=s3cret&db=1", "redis://h:1/0?password=***&db=1"),
        ("unix://:s3cret@/run/redis.sock?db=0", "unix://:***@/run/redis.sock?db=0"),
        ("unix:///run/redis.sock?password=s3cret", "unix:///run/redis.sock?password=***"),
        ("rediss://h:1/0?ssl_ca_certs=/etc/me@corp/ca.pem", "rediss://h:1/0?ssl_ca_certs=/etc/me@corp/ca.pem"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ],
)  # fmt: skip
def test_a_printed_url_hides_its_password(url: str, shown: str) -> None:
    assert masked(url) == shown


@pytest.mark.parametrize(
    "url",
    [
        "redis://:s3c/ret@db.example:6379/0",
        "redis://user:s3c/ret@db.example:6379/0",
        "redis://user:123/s3cret@db.example:6379/0",
        "redis://:s3c?ret@db.example:6379/0",
        "redis://user:123?s3cret@db.example:6379/0",
        "redis://:s3c#ret@db.example:6379/0",
        "redis://user:1?a=s3cret@db.example:6379/0",
    ],
)
def test_a_password_with_unencoded_delimiters_is_hidden_whole(url: str) -> None:
    """Such a password ends the host early: no part of it may pass for host, port or path."""
    assert masked(url) == "redis://***@db.example:6379/0"


def test_a_url_whose_password_would_be_misread_is_refused_without_quoting_it() -> None:
    with pytest.raises(ConfigurationError, match="percent-encode") as refused:
        normalized("redis://app:123/s3cret@db.example:6379/0")
    assert "123" not in str(refused.value)
    assert "s3cret" not in str(refused.value)


@pytest.mark.parametrize("spelling", ["required", "CERT_REQUIRED", "cert_required"])
def test_certificate_requirements_are_read_in_either_spelling(spelling: str) -> None:
    url = f"rediss://:pw@h:6380/0?ssl_cert_reqs={spelling}&ssl_ca_certs=/etc/ca.pem"
    assert (
        normalized(url) == "rediss://:pw@h:6380/0?ssl_cert_reqs=required&ssl_ca_certs=/etc/ca.pem"
    )
    assert celery_ssl(url) == {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": "/etc/ca.pem"}


def test_certificate_requirements_that_mean_nothing_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="ssl_cert_reqs=sometimes"):
        normalized("rediss://h:6380/0?ssl_cert_reqs=sometimes")


def test_a_url_without_tls_options_is_left_as_it_is() -> None:
    for url in ("redis://:pw@h:6379/0?health_check_interval=5", "redis://h", "redis:///0"):
        assert normalized(url) == url
        assert celery_url(url) == url
        assert celery_ssl(url) is None


def test_celery_gets_the_tls_options_and_a_url_without_them() -> None:
    url = "rediss://:pw@h:6380/0?ssl_ca_certs=/etc/ca.pem&ssl_check_hostname=false&db=3"
    assert celery_url(url) == "rediss://:pw@h:6380/0?db=3"
    assert celery_ssl(url) == {
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
        "ssl_ca_certs": "/etc/ca.pem",
        "ssl_check_hostname": False,
    }


@pytest.mark.parametrize(
    ("url", "verify"),
    [
        ("rediss://:pw@h:6380/0", ssl.CERT_REQUIRED),  # kombu alone: CERT_NONE
        ("rediss://:pw@h:6380/0?ssl_cert_reqs=CERT_REQUIRED", ssl.CERT_REQUIRED),
        ("rediss://:pw@h:6380/0?ssl_cert_reqs=none", ssl.CERT_NONE),
    ],
)
def test_the_worker_verifies_a_rediss_broker_as_the_data_side_does(
    url: str, verify: ssl.VerifyMode
) -> None:
    app = create_celery(Settings(redis_url="redis://127.0.0.1:1/0", broker_url=url))
    connection = app.connection_for_write()  # no I/O until used
    try:
        assert connection.transport_cls == "rediss"
        assert connection.ssl["ssl_cert_reqs"] == verify
        assert connection.as_uri() == "rediss://:**@h:6380/0"
    finally:
        connection.release()
