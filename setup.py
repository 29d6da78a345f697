"""Build hook for the native parts: the frame scanner, the relay's hot path and the login,
and the relay's sockets.

Everything else is declared in pyproject.toml. Each extension is optional:
where no C compiler is available poold installs and runs on their Python
references (framing.PyFrameScanner; the ``...CorePy`` classes, see
relaycore.py; the event loop's transports, see sockio.py), and logs which
ones it uses at startup.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "poold.protocol._framing",
            sources=["daemon/poold/protocol/_framing.c"],
            depends=["daemon/poold/protocol/framing_capi.h"],
            extra_compile_args=["-O2"],
            optional=True,
        ),
        Extension(
            "poold._relaycore",
            sources=["daemon/poold/_relaycore.c", "daemon/poold/protocol/scram_core.c"],
            depends=["daemon/poold/protocol/framing_capi.h", "daemon/poold/protocol/scram_core.h"],
            extra_compile_args=["-O2"],
            optional=True,
        ),
        Extension(
            "poold._sockio",
            sources=["daemon/poold/_sockio.c"],
            extra_compile_args=["-O2"],
            optional=True,
        ),
    ]
)
