"""Transient vs permanent failures: storage's classification, the retry book, the breaker, deaths."""
import botocore.exceptions
import pytest

from cdcore.io import storage
from cdcore.io.images import ImageError
from jobs.stylize.retries import RETRY_FIRST_S, Breaker, Retries


@pytest.fixture
def configure():
    yield storage.configure
    storage.configure()


def client_error(code: str, status: int) -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError({"Error": {"Code": code, "Message": "x"},
                                            "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


@pytest.mark.parametrize("error,transient", [
    (client_error("SlowDown", 503), True), (client_error("InternalError", 500), True),
    (client_error("TooManyRequests", 429), True), (client_error("AccessDenied", 403), False),
    (client_error("NoSuchKey", 404), False), (client_error("InvalidRequest", 400), False),
    (botocore.exceptions.ConnectionClosedError(endpoint_url="http://127.0.0.1:1"), True),
    (botocore.exceptions.ReadTimeoutError(endpoint_url="http://127.0.0.1:1"), True),
    (botocore.exceptions.NoCredentialsError(), False),
])
def test_storage_errors_say_whether_trying_again_may_help(error, transient):
    with pytest.raises(storage.StorageError) as caught:
        with storage._errors("s3://b/k"):
            raise error
    assert caught.value.transient is transient and str(caught.value).startswith("s3://b/k: ")


def test_a_refused_connection_is_transient_through_the_errors_raised_from_it(configure, monkeypatch):
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    configure(endpoint_url="http://127.0.0.1:9", max_attempts=1)  # nothing listens on port 9
    with pytest.raises(storage.StorageError) as caught:
        storage.read_bytes("s3://bucket/image.jpg")
    assert caught.value.transient
    try:
        raise ImageError("s3://bucket/image.jpg: ...") from caught.value
    except ImageError as wrapped:
        assert storage.is_transient(wrapped)
    assert not storage.is_transient(ImageError("s3://bucket/image.jpg: not a readable image"))


def test_retries_back_off_until_the_deadline():
    retries = Retries(deadline_s=10.0)
    assert retries.failed(7, now=100.0) is None  # first failure: again in about a second
    due_at = retries.next_due()
    assert 100 + 0.5 * RETRY_FIRST_S <= due_at <= 100 + 1.5 * RETRY_FIRST_S
    assert retries.due(now=due_at - 0.01) == [] and retries.due(now=due_at) == [7]
    assert retries.failed(7, now=102.0) is None
    assert retries.next_due() - 102.0 >= RETRY_FIRST_S  # the second wait is longer
    assert retries.failed(7, now=111.0) == (pytest.approx(11.0), 2)  # past the deadline: fails for good
    assert retries.done(7) == 0
    retries.failed(8, now=0.0)
    assert retries.done(8) == 1


def test_breaker_opens_after_failures_in_a_row_and_backs_off_its_probes():
    breaker = Breaker(in_a_row=3)
    assert not breaker.failed() and not breaker.failed()
    breaker.answered()  # something got through: the count starts again
    assert [breaker.failed() for _ in range(3)] == [False, False, True] and breaker.open
    first = breaker.delay
    breaker.probe_failed()
    assert breaker.delay == 2 * first
    breaker.answered()
    assert not breaker.open
