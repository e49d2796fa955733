#!/usr/bin/env bash
# The Python packages gpu_check.py needs that the device machine's image lacks (or has in an older version),
# as wheels in .whl/ (ignored by git) for the device tool's `carry`. Run here, once, from anywhere.
# The versions are this checkout's test environment's: transformers too, so the check runs the code the tests ran.
set -euo pipefail
cd "$(dirname "$0")/.."
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
  -d .whl \
  datasets==5.2.0 evaluate==0.4.6 dill==0.4.1 multiprocess==0.70.19 fsspec==2026.9.0 \
  omegaconf==2.4.0 antlr4-python3-runtime==4.13.2 transformers==5.24.0
du -sh .whl
