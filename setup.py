"""Build hook for the one native part: the relay's frame scanner.

Everything else is declared in pyproject.toml. The extension is optional: where
no C compiler is available poold installs and runs on the reference Python
scanner (framing.PyFrameScanner), and logs which one it uses at startup.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "poold.protocol._framing",
            sources=["daemon/poold/protocol/_framing.c"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    ]
)
