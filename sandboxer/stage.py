"""Entry point of sandboxer's stage, run as `python3 -I -S stage.py` (see _stage.py).

A script is compiled from source on every run (~4 ms for the stage); an imported module is
loaded from its cached bytecode. The package directory goes at the END of sys.path so that nothing of
sandboxer's can shadow a standard-library module.
"""

import sys

sys.path.append(__file__.rpartition("/")[0])
import _stage  # noqa: E402

_stage.main()
