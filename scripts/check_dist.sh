#!/usr/bin/env bash
# Build the sdist and the wheel, check them, and try the wheel as a user would: installed alone
# into a fresh virtual environment and run from outside the source tree (`flowpool --version`,
# `flowpool demo`, scripts/smoke.py). Everything it installs goes into a temporary directory.
#
#     bash scripts/check_dist.sh            (called by .ci/run)
set -euo pipefail

src="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python}"
work="$(mktemp -d "${TMPDIR:-/tmp}/flowpool-dist.XXXXXX")"
trap 'rm -rf "$work"' EXIT
step() { echo "+ check_dist: $*"; }

step "tools (build, twine) in $work/tools"
"$python" -m venv "$work/tools"
"$work/tools/bin/python" -m pip install --quiet build twine

step "build the sdist, then the wheel from the sdist"
# PYTHONDONTWRITEBYTECODE only makes setuptools warn that it skips byte-compiling: a setting of
# the machine, not of the project, whose own warnings are what this build must not print.
if ! env -u PYTHONDONTWRITEBYTECODE "$work/tools/bin/python" -m build --outdir "$work/dist" "$src" \
    >"$work/build.log" 2>&1; then
    cat "$work/build.log"
    echo "check_dist: the build failed" >&2
    exit 1
fi
if grep -i -E 'warn|deprecat' "$work/build.log"; then
    echo "check_dist: the build printed the warnings above" >&2
    exit 1
fi
tail -n 1 "$work/build.log"
"$work/tools/bin/twine" check --strict "$work/dist"/*

step "what each archive carries"
"$work/tools/bin/python" - "$work/dist" <<'EOF'
import sys, tarfile, zipfile
from pathlib import Path

dist = Path(sys.argv[1])
(wheel,) = dist.glob("*.whl")
(sdist,) = dist.glob("*.tar.gz")
problems = []
wheel_names = zipfile.ZipFile(wheel).namelist()
dist_info = wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info/"
for name in wheel_names:
    if not (name.startswith(("flowpool/", dist_info))):
        problems.append(f"the wheel carries {name}, outside the package")
    if "__pycache__" in name or name.endswith(".pyc"):
        problems.append(f"the wheel carries {name}")
for needed in ("flowpool/__init__.py", "flowpool/py.typed", "flowpool/cli.py", dist_info + "licenses/LICENSE"):
    if needed not in wheel_names:
        problems.append(f"the wheel lacks {needed}")
with tarfile.open(sdist) as archive:
    root = sdist.name.removesuffix(".tar.gz") + "/"
    sdist_names = {name.removeprefix(root) for name in archive.getnames()}
for needed in ("LICENSE", "README.md", "CHANGELOG.md", "pyproject.toml", "flowpool/py.typed",
               "scripts/smoke.py", "scripts/check_dist.sh", "tests/conftest.py"):
    if needed not in sdist_names:
        problems.append(f"the sdist lacks {needed}")
if not any(name.startswith("tests/test_") for name in sdist_names):
    problems.append("the sdist carries no tests/test_*.py")
if any("__pycache__" in name or name.endswith(".pyc") for name in sdist_names):
    problems.append("the sdist carries compiled files")
print(f"{wheel.name}: {len(wheel_names)} files; {sdist.name}: {len(sdist_names)} entries")
for problem in problems:
    print(f"check_dist: {problem}", file=sys.stderr)
sys.exit(1 if problems else 0)
EOF

step "install the wheel alone into a fresh virtual environment"
"$python" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet "$work/dist"/*.whl

step "run it from outside the source tree"
cp "$src/scripts/smoke.py" "$work/smoke.py"
(
    cd "$work"
    unset PYTHONPATH
    export PATH="$work/venv/bin:$PATH"
    python -c 'import sys, flowpool; assert flowpool.__file__.startswith(sys.prefix), flowpool.__file__'
    version="$(flowpool --version)"
    echo "$version"
    wheel_version="$(basename "$work"/dist/*.whl | cut -d- -f2)"
    [[ "$version" == "flowpool, version $wheel_version" ]] \
        || { echo "check_dist: --version says '$version', the wheel is $wheel_version" >&2; exit 1; }
    flowpool demo --timeline "$work/demo.html" </dev/null >"$work/demo.log" 2>&1 \
        || { cat "$work/demo.log"; echo "check_dist: flowpool demo failed" >&2; exit 1; }
    tail -n 1 "$work/demo.log"
    [[ -s "$work/demo.html" ]] || { echo "check_dist: flowpool demo wrote no timeline" >&2; exit 1; }
    python smoke.py </dev/null
)
step "ok"
