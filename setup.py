"""Build hook for the native parts: the frame scanner, the relay's hot path and the login,
and the relay's sockets.

Everything else is declared in pyproject.toml. Each extension is optional:
where no C compiler is available poold installs and runs on their Python
references (framing.PyFrameScanner; the ``...CorePy`` classes, see
relaycore.py; the event loop's transports, see sockio.py), and logs which
ones it uses at startup.
"""

import os

from setuptools import Extension, setup

#: POOLD_SANITIZE=address,undefined (make test-sanitize): compile with those sanitizers,
#: without linking their runtimes in: the test run preloads them into the interpreter
#: (which is not instrumented), and no other program (PostgreSQL, its tools) gets
#: them. Where they are not preloaded such a build does not import, and poold runs
#: on the Python references.
SANITIZE = os.environ.get("POOLD_SANITIZE", "")
FLAGS = ["-O2"] + ([f"-fsanitize={SANITIZE}", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g"]
                   if SANITIZE else [])

setup(
    ext_modules=[
        Extension(
            "poold.protocol._framing",
            sources=["daemon/poold/protocol/_framing.c"],
            depends=["daemon/poold/protocol/framing_capi.h"],
            extra_compile_args=FLAGS,
            optional=True,
        ),
        Extension(
            "poold._relaycore",
            sources=["daemon/poold/_relaycore.c", "daemon/poold/protocol/scram_core.c"],
            depends=["daemon/poold/protocol/framing_capi.h", "daemon/poold/protocol/scram_core.h"],
            extra_compile_args=FLAGS,
            optional=True,
        ),
        Extension(
            "poold._sockio",
            sources=["daemon/poold/_sockio.c", "daemon/poold/_servertls.c"],
            depends=["daemon/poold/_servertls.h"],
            extra_compile_args=FLAGS,
            optional=True,
        ),
    ]
)
