"""mkdocs hook: the tutorials' kernels send TensorFlow's C++ start-up log to the build log.

TensorFlow writes its start-up messages (oneDNN, CUDA probing) to file descriptor 2 from C++
before Python can configure any logging, and ipykernel captures that descriptor into the
notebook's outputs by default, so every executed tutorial would open with them. The kernels
that mkdocs-jupyter starts read their configuration from IPYTHONDIR: this hook points it at a
temporary profile that leaves descriptor-level output uncaptured (it goes to the terminal that
runs `mkdocs build`), for the build's kernels alone.
"""

from __future__ import annotations

import os
import pathlib
import tempfile

_CONFIG = "c.IPKernelApp.capture_fd_output = False\n"


def on_startup(command, dirty):
    profile = pathlib.Path(tempfile.mkdtemp(prefix="mcobjectives-docs-ipython-"))
    (profile / "profile_default").mkdir()
    (profile / "profile_default" / "ipython_kernel_config.py").write_text(_CONFIG)
    os.environ["IPYTHONDIR"] = str(profile)
