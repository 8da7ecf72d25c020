#!/usr/bin/env bash
# Issue 29's device check, in one run on a lent GPU machine: the tests that compare batches on CUDA, then the
# benchmark's GPU section. Fetch the wheels first (`bash tests/gpu_wheels.sh`), then ask the device tool to run
# `bash tests/gpu_check.sh` with `.whl` carried (timeout ~560 s). What it prints and writes comes back under $OUT.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 2
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OUT=${OUT:-/tmp/out}
nvidia-smi -L; python3 -c "import torch, fastai_shelve; print(torch.__version__, torch.cuda.get_device_name(), fastai_shelve.__version__)"
# Every test that moves batches to the default device: with CUDA visible they run there. The package is not installed,
# so the test that runs its console script is left out.
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_ahead.py tests/test_gpu_augment.py tests/test_parity.py \
  tests/test_randomness.py tests/test_item_path.py tests/test_fastai.py tests/test_fastai_names.py \
  --deselect tests/test_fastai_names.py::test_cli_build_with_fastai_names 2>&1 | tee $OUT/tests.log | tail -25
tests=${PIPESTATUS[0]}  # pytest's status, not tail's: the run's own exit status says whether the CUDA tests passed
timeout 330 python3 -c "from fastai_shelve.cli import main; main()" bench --sections gpu --out /tmp/bench 2>&1 | tail -30
bench=${PIPESTATUS[0]}
cp /tmp/bench/bench.json /tmp/bench/bench.txt /tmp/bench/bench.png $OUT/ 2>/dev/null; ls $OUT
echo "pytest exit $tests, bench exit $bench"; [ "$tests" = 0 ] && [ "$bench" = 0 ]
