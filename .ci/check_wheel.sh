#!/usr/bin/env bash
# A non-editable install behaves like the checkout: builds a wheel from a clean copy of the
# source, installs it (--no-deps) into a fresh venv that takes torch and the other
# dependencies from this machine (--system-site-packages, nothing is downloaded), and fails
# unless that venv's `shoal config breakout` prints exactly what the checkout's does.
#
#   .ci/check_wheel.sh            # from anywhere; exits non-zero on any difference
set -euo pipefail
# Nothing but the venv (and, for the checkout, the current folder) may say where shoal comes from.
unset PYTHONPATH
cd "$(dirname "$0")/.."
repo=$(pwd)
work=$(mktemp -d -t shoal-wheel.XXXXXX)
trap 'rm -rf "$work"' EXIT

# What the wheel is built from, copied without the checkout's build outputs (build/, the compiled
# .so, caches), so only the source can make the wheel right.
mkdir "$work/src"
tar --exclude=__pycache__ --exclude='*.so' --exclude='*.egg-info' --exclude=build \
    -cf - shoal pyproject.toml setup.py README.md | tar -xf - -C "$work/src"
python3 -m pip wheel "$work/src" --no-deps --no-build-isolation --no-index -q -w "$work/wheel"
python3 -m venv --system-site-packages "$work/venv"
"$work/venv/bin/python" -m pip install -q --no-deps --no-index "$work"/wheel/shoal-*.whl

# From a folder outside the checkout, so nothing of it is on the path; the editable install's
# finder in the system site-packages must not be what answers either.
cd "$work"
where=$("$work/venv/bin/python" -c "import shoal.core.config as c; print(c.CONFIG_DIR)")
case "$where" in
    "$work/venv/"*) ;;
    *) echo "check_wheel: the venv imported shoal's config from $where, not from the wheel" >&2; exit 1 ;;
esac
"$work/venv/bin/shoal" config breakout > "$work/installed.toml"
(cd "$repo" && python3 -m shoal config breakout) > "$work/checkout.toml"
if ! diff -u "$work/checkout.toml" "$work/installed.toml"; then
    echo "check_wheel: the installed wheel's 'shoal config breakout' differs from the checkout's" >&2
    exit 1
fi
echo "check_wheel: the installed wheel's 'shoal config breakout' equals the checkout's"
