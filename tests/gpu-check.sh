#!/usr/bin/env bash
# Every GPU check and measurement of the project in one command, for a machine with a CUDA GPU (e.g. the
# device tool's H100/H200, whose python3 already holds torch, timm and the rest: nothing is installed here):
#
#   tests/gpu-check.sh        # pytest -m cuda, then bench speed of every method on cifar_resnet32, batch 128:
#                             # harness vs reference-style path vs harness with compute.branch_streams=on
#
# Logs and CSVs go to $OUT (the device tool's output folder) or test-artefacts/gpu. Time limits per stage:
# CHECK_S (default 300 s) and SPEED_S (default 240 s); PAPER_TABLE=1 adds the paper table's GPU-hours
# (about 40 more cells to time), PACK=1,2,4 the packed-runs columns (concurrent only under NVIDIA MPS).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-test-artefacts/gpu}"
mkdir -p "$out"
py="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  "$py" -c "import torch, timm; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'timm', timm.__version__)"
} 2>&1 | tee "$out/gpu.txt"

timeout "${CHECK_S:-300}" "$py" -m pytest tests/test_cuda.py -m cuda -q -p no:cacheprovider -rs 2>&1 \
  | tee "$out/pytest-cuda.log"
checks=${PIPESTATUS[0]}

extra=()
[ "${PAPER_TABLE:-0}" = 1 ] && extra+=(--paper-table)
timeout "${SPEED_S:-240}" "$py" -m bench.cli speed --device cuda --methods vanilla,dml,cl,one,okddip,kdcl,ffl_s,pcl \
  --backbones cifar_resnet32 --batch-size 128 --rounds 4 --steps 8 --branch-streams on --pack "${PACK:-1}" \
  --csv "$out/speed.csv" "${extra[@]}" 2>&1 | tee "$out/speed.log"
speed=${PIPESTATUS[0]}

echo "gpu-check: pytest -m cuda exit $checks, bench speed exit $speed (logs in $out)"
[ "$checks" = 0 ] && [ "$speed" = 0 ]
