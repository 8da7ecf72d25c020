#!/usr/bin/env bash
# Fetch, into .whl, the wheels the lent GPU machine lacks (it has torch, torchvision, timm, opencv, numpy, pandas, pytest,
# scikit-image; Python 3.12): what `tests/gpu_check.sh` installs there. Run once, here, from the repo's root (~50 MB).
set -e
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux_2_31_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
  albucore==0.0.24 albumentations==2.0.8 annotated-types==0.8.0 beartype==0.23.1 fastai==2.8.12 fastcore==2.2.41 \
  fastdownload==0.0.8 fastprogress==1.0.3 fasttransform==0.0.5 imagecodecs==2026.3.6 kornia==0.9.0 kornia_rs==0.2.0 \
  lmdb==3.0.0 lz4==4.4.5 plum-dispatch==2.9.0 pydantic==2.14.4 pydantic_core==2.50.5 pydicom==3.0.2 pylibjpeg==2.1.0 \
  pylibjpeg-libjpeg==2.5.0 pylibjpeg-openjpeg==2.6.0 simsimd==6.5.16 \
  stringzilla==5.3.2 typing-inspection==0.4.5
du -sh .whl
