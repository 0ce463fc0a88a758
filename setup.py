"""Builds sandboxer-stage, the small C program that runs inside every sandbox (sandboxer/stage.c).

Everything else is in pyproject.toml. The stage is an executable, not an extension module: it
is built by build_ext (so that `pip install`, wheels and editable installs all build it) and
installed inside the package, where sandboxer/host.py looks for it.
"""

from __future__ import annotations

import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

STAGE_EXT = "sandboxer.sandboxer_stage"
STAGE_FILE = "sandboxer-stage"
CFLAGS = ["-O2", "-Wall", "-Wextra", "-Werror=implicit-function-declaration", "-D_FORTIFY_SOURCE=2", "-fstack-protector-strong", "-fPIE"]
LDFLAGS = ["-pie", "-s", "-Wl,-z,relro,-z,now"]


class BuildStage(build_ext):
    def get_ext_filename(self, fullname: str) -> str:
        # called with the full dotted name (outputs) and with its last part (the build path)
        if fullname == STAGE_EXT:
            return os.path.join("sandboxer", STAGE_FILE)
        if fullname == STAGE_EXT.rpartition(".")[2]:
            return STAGE_FILE
        return str(super().get_ext_filename(fullname))

    def build_extension(self, ext: Extension) -> None:
        if ext.name != STAGE_EXT:
            super().build_extension(ext)
            return
        target = self.get_ext_fullpath(ext.name)
        os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
        objects = self.compiler.compile(ext.sources, output_dir=self.build_temp, extra_postargs=CFLAGS)
        self.compiler.link_executable(objects, os.path.basename(target),
                                      output_dir=os.path.dirname(target) or ".", extra_postargs=LDFLAGS)


setup(
    ext_modules=[Extension(STAGE_EXT, sources=["sandboxer/stage.c"], depends=["sandboxer/wire.h"])],
    cmdclass={"build_ext": BuildStage},
)
