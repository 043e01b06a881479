"""Declares the Cython extensions built from ext/*.pyx; everything else is in pyproject.toml.

The extensions are optional: without a C compiler the install still succeeds and the
package runs on its pure-Python twins (``wmbus-stream --version`` says ``pure``).
"""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """Builds what it can; says clearly when the pure-Python twins will be used instead."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # no compiler at all
            self._fallback(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # compiler present but failing
            self._fallback(exc)

    @staticmethod
    def _fallback(exc):
        sys.stderr.write(
            f"\nwmbus-stream: compiled extensions not built ({exc}).\n"
            "wmbus-stream: installing the pure-Python twins; the gateway works, only slower.\n\n"
        )


def extensions():
    if os.environ.get("WMBUS_STREAM_NO_EXTENSIONS", "") in {"1", "true", "yes"}:
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        sys.stderr.write("wmbus-stream: Cython not available; installing the pure-Python twins.\n")
        return []
    modules = [Extension("wmbus_stream.wire._cwire", ["ext/_cwire.pyx"]),
               Extension("wmbus_stream.wire._cstream", ["ext/_cstream.pyx"]),
               Extension("wmbus_stream.hes._creport", ["ext/_creport.pyx"])]
    return cythonize(modules, language_level=3, compiler_directives={"boundscheck": False, "wraparound": False})


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
