"""Build the gdiv Python package: `pip install .` compiles the Go extension.

The package is pure Python (python/gdiv) plus one extension module,
gdiv._gdivgo, which is the Go package ./pybridge (and, through it, the Go core
./gdiv) exported with gopy. `pip install .` runs, in BuildGo below:

1. a check that Go >= 1.25 is installed (a clear error otherwise);
2. gopy and goimports, built from the pinned tools module internal/tools into
   .tools/bin unless they are there already (`make py-install` builds them
   first; see internal/tools/tools.go for why a separate module);
3. `gopy gen` into _pygen/ (inside the Go module, so the generated package
   main builds against this module's go.mod; the leading underscore keeps it
   out of `go test ./...`; it is git-ignored and never committed);
4. pybindgen's generated build.py, which writes the CPython wrapper gdivgo.c;
5. one `go build -buildmode=c-shared` of the generated package, C wrapper
   included, straight to the extension's path. libpython is not linked (its
   symbols resolve in the running interpreter), which avoids static-libpython
   link failures (gopy issues #369, #277).

Environment: GO (the go command, default "go"); GDIV_TOOLS_BIN (a directory
holding gopy and goimports, default .tools/bin).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
MIN_GO = (1, 25)
GO_MODULE = "github.com/gdiv/gdiv"
BRIDGE_PKG = GO_MODULE + "/pybridge"
GEN_NAME = "gdivgo"  # gopy's -name: files gdivgo.go / gdivgo.c, extension _gdivgo
GEN_DIR = ROOT / "_pygen"


class GoBuildError(RuntimeError):
    """The Go toolchain is missing, too old, or a build step failed."""


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> None:
    print("gdiv build:", " ".join(str(c) for c in cmd), f"(in {cwd})", flush=True)
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise GoBuildError(f"gdiv build: command failed ({proc.returncode}): {' '.join(map(str, cmd))}\n{proc.stdout}")
    if proc.stdout.strip():
        print(proc.stdout.rstrip(), flush=True)


def _check_go(go: str) -> str:
    """Return the path of a Go >= MIN_GO toolchain or raise GoBuildError."""
    want = "Go >= %d.%d" % MIN_GO
    path = shutil.which(go)
    if path is None:
        raise GoBuildError(
            f"gdiv: building the Python package needs {want}, but no `{go}` command is on PATH. "
            "Install Go from https://go.dev/dl (or set GO=/path/to/go) and run `pip install .` again."
        )
    try:
        out = subprocess.run([path, "env", "GOVERSION"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as e:
        raise GoBuildError(f"gdiv: `{path} env GOVERSION` failed: {e}") from e
    m = re.match(r"go(\d+)\.(\d+)", out)
    if not m or (int(m.group(1)), int(m.group(2))) < MIN_GO:
        raise GoBuildError(
            f"gdiv: building the Python package needs {want}; `{path}` is {out or 'unknown'}. Install a newer Go from https://go.dev/dl."
        )
    return path


class BuildGo(build_ext):
    """build_ext that builds gdiv._gdivgo from Go with gopy (see the module doc)."""

    def build_extension(self, ext: Extension) -> None:
        go = _check_go(os.environ.get("GO", "go"))
        env = dict(os.environ)
        env["CGO_ENABLED"] = "1"

        tools = Path(os.environ.get("GDIV_TOOLS_BIN", ROOT / ".tools" / "bin")).resolve()
        gopy, goimports = tools / "gopy", tools / "goimports"
        if not (gopy.exists() and goimports.exists()):
            tools.mkdir(parents=True, exist_ok=True)
            _run(
                [go, "install", "github.com/go-python/gopy", "golang.org/x/tools/cmd/goimports"],
                ROOT / "internal" / "tools",
                dict(env, GOBIN=str(tools)),
            )
        # gopy runs `go` and `goimports` from PATH: put ours first.
        env["PATH"] = os.pathsep.join([str(tools), os.path.dirname(go), env.get("PATH", "")])

        if GEN_DIR.exists():
            shutil.rmtree(GEN_DIR)
        _run([str(gopy), "gen", f"-vm={sys.executable}", f"-output={GEN_DIR.name}", f"-name={GEN_NAME}", BRIDGE_PKG], ROOT, env)
        _run([sys.executable, "build.py"], GEN_DIR, env)
        self._patch_generated()
        _run([str(goimports), "-w", f"{GEN_NAME}.go"], GEN_DIR, env)

        target = Path(self.get_ext_fullpath(ext.name)).resolve()
        target.parent.mkdir(parents=True, exist_ok=True)
        _run([go, "build", "-trimpath", "-buildmode=c-shared", "-o", str(target), "."], GEN_DIR, env)
        # c-shared also writes a C header next to the library: not part of the package.
        target.with_suffix(".h").unlink(missing_ok=True)

    @staticmethod
    def _patch_generated() -> None:
        gen_go = GEN_DIR / f"{GEN_NAME}.go"
        src = gen_go.read_text()
        # Do not link libpython: the interpreter that loads the module provides it.
        src, k = re.subn(r"(?m)^#cgo LDFLAGS:.*$", "#cgo LDFLAGS: -Wl,--unresolved-symbols=ignore-all -lm", src)
        if k != 1:
            raise GoBuildError(f"gdiv build: unexpected gopy output in {gen_go} (no single #cgo LDFLAGS line)")
        gen_go.write_text(src)
        # The C wrapper is compiled by cgo inside the same package: the cgo
        # export header is _cgo_export.h there, not the c-shared header.
        gen_c = GEN_DIR / f"{GEN_NAME}.c"
        csrc = gen_c.read_text()
        if f'#include "{GEN_NAME}_go.h"' not in csrc:
            raise GoBuildError(f"gdiv build: unexpected pybindgen output in {gen_c}")
        gen_c.write_text(csrc.replace(f'#include "{GEN_NAME}_go.h"', '#include "_cgo_export.h"'))


setup(
    package_dir={"": "python"},
    packages=find_packages("python", exclude=["tests", "tests.*"]),
    package_data={"gdiv": ["py.typed"]},
    ext_modules=[Extension("gdiv._gdivgo", sources=[])],
    cmdclass={"build_ext": BuildGo},
    zip_safe=False,
)
