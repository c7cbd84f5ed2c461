#!/usr/bin/env bash
# The wheel outside the checkout: build it (sdist, then the wheel from the sdist, as
# `python -m build` does) from a copy of the checkout's files, install it into a fresh virtual
# environment in a temporary folder, and run .ci/wheel_smoke.py there, from outside the checkout.
#
#   .ci/wheel_smoke.sh            (PYTHON=... picks the interpreter; it needs `build`)
#
# The wheel is installed plain (no extras), as `pip install mcobjectives` would: its
# dependencies come from the package index, and MNIST comes from the package data. Prints a PASS line with the time taken; exits non-zero on any failure.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/mcobjectives-wheel-smoke.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
start=$SECONDS

# A copy of the files git tracks or would track, so that neither an earlier build's leftovers
# (setuptools's build/lib keeps deleted modules) nor ignored files reach the wheel, and the
# build writes nothing into the checkout.
mkdir "$WORK/src"
if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  (
    cd "$ROOT"
    git ls-files -z --cached --others --exclude-standard |
      while IFS= read -r -d '' file; do
        [ -f "$file" ] && printf '%s\0' "$file"  # a tracked file deleted in the tree is skipped
      done |
      xargs -0 cp --parents -t "$WORK/src"
  )
else
  cp -R "$ROOT/." "$WORK/src"
fi

"$PYTHON" -m build --outdir "$WORK/dist" "$WORK/src" >"$WORK/build.log" 2>&1 ||
  { cat "$WORK/build.log"; exit 1; }
wheel=("$WORK"/dist/mcobjectives-*.whl)
[ -f "${wheel[0]}" ] || { echo "wheel smoke: no wheel built" >&2; exit 1; }
echo "wheel smoke: built $(basename "${wheel[0]}") in $((SECONDS - start)) s"

# The MNIST subset must be in the wheel as package data.
"$PYTHON" - "${wheel[0]}" <<'EOF'
import sys
import zipfile

names = zipfile.ZipFile(sys.argv[1]).namelist()
data = "mcobjectives/experimental/mnist/bundled/mnist_subset.npz"
assert data in names, f"{data} is not in the wheel"
packages = sorted({n.rsplit("/", 1)[0] for n in names if n.endswith("/__init__.py")})
print(f"wheel smoke: the wheel holds the MNIST subset and {len(packages)} packages: "
      + ", ".join(packages))
EOF

step=$SECONDS
"$PYTHON" -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  "${wheel[0]}" >"$WORK/pip.log" 2>&1 || { cat "$WORK/pip.log"; exit 1; }
echo "wheel smoke: installed into a fresh virtual environment in $((SECONDS - step)) s"

# Outside the checkout, with no path into it: the package can only come from the venv.
mkdir "$WORK/run"
cp "$ROOT/.ci/wheel_smoke.py" "$WORK/run/"
(
  cd "$WORK/run"
  env -u PYTHONPATH -u TFDS_DATA_DIR PYTHONNOUSERSITE=1 TF_CPP_MIN_LOG_LEVEL=2 \
    "$WORK/venv/bin/python" wheel_smoke.py --checkout "$ROOT"
)
echo "wheel smoke: PASS in $((SECONDS - start)) s"
