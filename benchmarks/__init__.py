"""Benchmarks of mvc against its peers (design.md section 9); run with `make bench`.

mvc's bytecode is compiled first, as pip compiles an installed package: this environment
sets PYTHONDONTWRITEBYTECODE, which would otherwise make every timed mvc process compile
its own sources again (about 0.1 s each), a cost no installed copy pays. The peers' code
sits in site-packages, compiled when it was installed.
"""

import compileall
from pathlib import Path

compileall.compile_dir(Path(__file__).resolve().parents[1] / "mvc", quiet=1)
