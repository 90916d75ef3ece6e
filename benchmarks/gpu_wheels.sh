#!/usr/bin/env bash
# What benchmarks/gpu.py needs on the GPU machine that its image lacks, downloaded here into .whl/:
# `datasets` and the two of its requirements the image does not have (dill, multiprocess), as wheels
# for CPython 3.12 on x86-64 Linux (the image has torch, Lightning, pyarrow, pandas, xxhash, fsspec,
# huggingface-hub ... already). The versions are those of this environment, where the tests ran;
# NAME=VERSION arguments change them (bash benchmarks/gpu_wheels.sh datasets=5.2.0).
# Also copies the Tiny Shakespeare corpus there, when ../shared has it: the GPU machine gets the
# working tree alone, and .whl/ travels with it.
#
#   bash benchmarks/gpu_wheels.sh                       # here, where pip reaches PyPI
#   (there, with .whl carried) python3 benchmarks/gpu.py --json gpu.json
#
# gpu.py installs the wheels itself when `datasets` is missing:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl; export PYTHONPATH=/tmp/site
# nlpkit is not among them: gpu.py uses the working tree (the repository root and plugins/ on its path).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

# .whl/ is never committed: the exclude file of the main checkout, shared by its worktrees.
exclude="$(git rev-parse --git-common-dir)/info/exclude"
mkdir -p "$(dirname "$exclude")"
grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"

declare -A versions=()
for name in datasets dill multiprocess; do
    versions[$name]=$("$PYTHON" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")
done
for pin in "$@"; do
    versions[${pin%%=*}]=${pin#*=}
done

mkdir -p .whl
for name in "${!versions[@]}"; do
    # Keep one version of each: two wheels of one name stop the whole install there.
    find .whl -maxdepth 1 -iname "${name}-*.whl" ! -iname "${name}-${versions[$name]}-*.whl" -delete
    # All three are pure Python (multiprocess has one wheel per Python version, py312): the platform
    # flags only let pip pick wheels for another interpreter than this one.
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "${name}==${versions[$name]}"
done

corpus=../shared/data/tiny_shakespeare/input.txt
if [[ -f $corpus ]]; then
    install -m 644 "$corpus" .whl/tiny_shakespeare.txt
fi
ls -l .whl
