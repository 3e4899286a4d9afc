"""Exceptions -> status codes (service/api/status.py), on their own."""

from __future__ import annotations

import time

import grpc

from service.api.bridge import Cancelled
from service.api.status import RequestError, gone, request_id, status_of
from service.errors import InputError, NotFoundError, NotReady, OverBudget, Undecodable, UploadStalled
from service.models.batcher import QueueFull


def test_each_kind_of_failure_has_its_code_and_the_rest_are_internal():
    code = grpc.StatusCode
    cases = {
        InputError("x"): code.INVALID_ARGUMENT,
        Undecodable("x"): code.INVALID_ARGUMENT,
        NotFoundError("x"): code.NOT_FOUND,
        QueueFull("x"): code.RESOURCE_EXHAUSTED,
        OverBudget("x"): code.RESOURCE_EXHAUSTED,
        Cancelled(): code.CANCELLED,
        UploadStalled("x"): code.DEADLINE_EXCEEDED,
        NotReady("x"): code.UNAVAILABLE,
        ConnectionError("x"): code.UNAVAILABLE,
        RequestError(code.PERMISSION_DENIED, "x"): code.PERMISSION_DENIED,
        RuntimeError("a bug"): code.INTERNAL,
        KeyError("a bug"): code.INTERNAL,
    }
    assert {type(e).__name__: status_of(e) for e in cases} == {type(e).__name__: c for e, c in cases.items()}


def test_a_client_that_went_away_is_told_apart_by_its_deadline():
    assert gone(None) == grpc.StatusCode.CANCELLED
    assert gone(time.monotonic() + 60) == grpc.StatusCode.CANCELLED
    assert gone(time.monotonic() - 1) == grpc.StatusCode.DEADLINE_EXCEEDED


def test_request_ids_are_taken_from_metadata_only_when_usable():
    assert request_id((("x-request-id", "req-1"), ("other", "v"))) == "req-1"
    assert request_id((("x-request-id", ""),)) is None
    assert request_id((("x-request-id", "x" * 200),)) is None
    assert request_id(None) is None
