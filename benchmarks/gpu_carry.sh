#!/usr/bin/env bash
# Prepares, on this machine, what a lent GPU machine lacks for benchmarks/gpu_session.sh, in the
# ignored folder .gpu/ of the checkout: the shared models and images (.gpu/shared, from ../shared)
# and wheels for Python 3.12 of the packages its image does not hold (.gpu/whl): boto3 and moto
# for the local S3 server, pyvips for the streamed writer. Run from the repository root:
#     bash benchmarks/gpu_carry.sh
# then pass carry [".gpu"] to the device tool's run. About 55 MB, under the 64 MiB a call carries.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
mkdir -p .gpu/whl
rm -rf .gpu/shared
mkdir -p .gpu/shared/models
cp -r ../shared/images ../shared/golden .gpu/shared/
cp -r ../shared/models/cd16x .gpu/shared/models/  # the benchmarks' models; the base set stays behind
# The versions of the project's venv (what CI installs); binary wheels for the device's Python.
packages="boto3 botocore s3transfer jmespath moto xmltodict responses flask flask-cors blinker itsdangerous
          cryptography cffi pycparser pyvips-binary"
for name in $packages; do
    version=$(.venv/bin/python -m pip show "$name" | sed -n 's/^Version: //p')
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux_2_34_x86_64 -d .gpu/whl "$name==$version"
done
# pyvips ships as source only; its wheel, built here, is pure Python (cffi's ABI mode).
.venv/bin/python -m pip wheel -q --no-deps -w .gpu/whl "pyvips==$(.venv/bin/python -m pip show pyvips | sed -n 's/^Version: //p')"
du -sh .gpu .gpu/whl .gpu/shared
