#!/usr/bin/env bash
# Everything the open issues measure on a GPU, in one call of the device tool, in order of need:
#   here:   bash benchmarks/gpu_carry.sh
#   device: run(command="bash benchmarks/gpu_session.sh", carry=[".gpu"], timeout_s=600)
# Each step has its own time limit, so that one that runs long loses only itself, and writes its
# tables to $OUT as it goes (a step cut off keeps what it printed).
# Steps, about 560 s in all:
#   1. dataset (issue 24): images/s at 224, 512, 1024 px, batch 1 against batched, fp32 and fp16,
#      the actor end to end from the local S3 server; batched nvJPEG decoding (codecs);
#   2. whole (issue 28): exactness against the CPU, 42 MP whole and tiled, the cascade's profile,
#      and the job's actor on 4 MP JPEG rows (issue 11's device busy share);
#   3. variants (issue 28): layout, cuDNN's autotuner and the reflect-pad path against today's,
#      and batched float64 eigendecompositions on the device against the host;
#   4. streamed (issue 28): a gigapixel JPEG in, JPEG out (seconds, host memory);
#   5. scale (issue 28): tiled against whole at 200 MP and 1 GP;
#   6. tests: the CUDA-only tests.
# Naming steps runs only those (a second, shorter call: `bash benchmarks/gpu_session.sh scale tests`).
# `--quick` runs each step small on the CPU, with the Python of $PYTHON and its packages:
#   PYTHON=.venv/bin/python bash benchmarks/gpu_session.sh --quick
# (tests/test_actor.py runs it so). What comes back from $OUT is 8 files at most: these are 8
# (the machine's name goes to the call's own output).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu-session}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}
quick=() device=() slack=1
if [ "${1:-}" = "--quick" ]; then
    quick=(--quick) device=(--device cpu) slack=4  # small images, but a CPU shared with other work
    shift
elif ls .gpu/whl/*.whl > /dev/null 2>&1; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .gpu/whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
started=$SECONDS
steps=" $* "  # the steps named on the command line; none: all

wanted() { [ "$steps" = "  " ] || [[ "$steps" == *" $1 "* ]]; }

step() {  # step NAME SECONDS COMMAND...: COMMAND's output into $OUT/NAME.txt, cut off after SECONDS
    local name=$1 limit=$2
    shift 2
    timeout --kill-after 10 $((limit * slack)) "$@" > "$OUT/$name.txt" 2>&1
    echo "$name: exit $? at $((SECONDS - started)) s"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
check=("$PYTHON" benchmarks/gpu_check.py "${quick[@]}" "${device[@]}")
wanted dataset && step dataset 140 "${check[@]}" --sections codecs,dataset --json "$OUT/dataset.json"
wanted whole && step whole 140 "${check[@]}" --sections exactness,speed,job,profile --formats .jpg \
    --json "$OUT/whole.json"
wanted variants && step variants 70 "${check[@]}" --sections variants
wanted streamed && step streamed 70 "${check[@]}" --sections streamed
wanted scale && step scale 110 "${check[@]}" --sections scale
wanted tests && step tests 30 "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_jpegbatch.py tests/test_tiling.py \
    tests/test_actor.py tests/test_transforms.py -k "cuda or on_a_gpu or on_the_gpu or on_the_host"
exit 0
