#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): every GPU path of daug_core, timed, results in
# $OUT (or ./gpu-check). On a machine whose Python lacks diffusers / open_clip and reaches no
# registry, the wheels carried in benchmarks/wheels (`make gpu-wheels`) are installed into a
# private folder first. Without CUDA: the CPU dry run at the tiny preset, exit 0 when it passes.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
python="${PYTHON:-python3}"
[ -x "$root/.venv/bin/python" ] && [ -z "${PYTHON:-}" ] && python="$root/.venv/bin/python"
if ! "$python" -c "import diffusers, open_clip" 2>/dev/null; then
    if ls "$here"/wheels/*.whl >/dev/null 2>&1; then
        site="${TMPDIR:-/tmp}/daug-gpu-check-site"
        "$python" -m pip install --quiet --no-index --no-deps --target "$site" "$here"/wheels/*.whl
        export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    fi
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" "$here/gpu_check.py" --out "${OUT:-gpu-check}"
