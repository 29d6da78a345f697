"""Unit-test fixtures: the frame scanner under test, reference and native."""

from __future__ import annotations

import pytest

from poold.protocol.framing import NativeFrameScanner, PyFrameScanner


@pytest.fixture(params=["python", "native"], scope="module")
def scanner(request: pytest.FixtureRequest) -> type[PyFrameScanner]:
    """Each scanner test runs against the reference scanner and the C one.

    The C one is built by ``pip install`` (setup.py); a checkout where it did
    not build fails here rather than testing only half.
    """
    if request.param == "python":
        return PyFrameScanner
    assert NativeFrameScanner is not None, "poold.protocol._framing was not built (is a C compiler installed?)"
    return NativeFrameScanner  # type: ignore[no-any-return]
